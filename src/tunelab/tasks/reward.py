"""Reward model: a scalar head on the decoder's last non-pad token, trained with the
Bradley-Terry loss (`tunelab.losses.bradley_terry_loss`) on preference pairs.

Batches come from the preference data (`data=embedded_preferences` / `preferences_file`,
without packing): 2B rows, chosen then rejected, each `ids[:-1]` as input and `ids[1:]` as
targets with the prompt masked. The full sequence's last token is the last counted target, so
the task puts it back at the end of its row and reads the hidden state there (padding sits after
it, so causal attention never sees padding). Metrics as TRL names them: accuracy (chosen scored
above rejected) and margin (mean chosen - rejected), plus the mean rewards.

Margins (optional): when the records carry a numeric `margin` field (TRL's column), every pair
must have one and the loss uses it. The head is saved in the checkpoint as `head.weight`;
`load_reward_model` reads it back.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tunelab.losses import IGNORE_INDEX, bradley_terry_loss
from tunelab.models.decoder import Decoder
from tunelab.tasks.base import LMTask

log = logging.getLogger(__name__)


def last_token_inputs(
    batch: dict[str, torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(full rows (N, T+1), index of each row's last real token) from shifted preference rows."""
    if "seq_ids" in batch:
        raise ValueError("task=reward: packed rows are not supported; set data.packing=false")
    targets = batch["targets"]
    counted = targets != IGNORE_INDEX
    if not bool(counted.any(-1).all()):
        raise ValueError(
            "task=reward: a sequence has no completion token left after truncation; raise "
            "data.max_length or lower data.max_prompt_length"
        )
    n, t = targets.shape
    positions = torch.arange(t, device=targets.device).expand(n, t)
    last_target = torch.where(counted, positions, -1).max(-1).values
    full = torch.nn.functional.pad(batch["input_ids"], (0, 1), value=pad_id)
    rows = torch.arange(n, device=targets.device)
    full[rows, last_target + 1] = targets[rows, last_target]
    return full, last_target + 1


def sequence_rewards(
    model: Decoder, head: nn.Linear, input_ids: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """(N,) scalar rewards: the head on the final hidden state at each row's `last` position."""
    hidden = model.hidden_states(input_ids)
    rows = torch.arange(len(last), device=hidden.device)
    return head(hidden[rows, last]).squeeze(-1).float()


def make_head(n_embd: int) -> nn.Linear:
    head = nn.Linear(n_embd, 1, bias=False)
    nn.init.normal_(head.weight, std=0.02)  # transformers' score head (initializer_range)
    return head


class RewardTask(LMTask):
    def __init__(
        self,
        *args: Any,
        center_rewards_coefficient: float | None = None,
        margin_key: str | None = "margin",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if center_rewards_coefficient is not None and center_rewards_coefficient < 0:
            raise ValueError(
                f"task.center_rewards_coefficient must be >= 0 or null, got "
                f"{center_rewards_coefficient}"
            )
        self.center_rewards_coefficient = center_rewards_coefficient
        self.margin_key = margin_key
        self.head = make_head(self.model.cfg.n_embd)
        self.margins: dict[str, torch.Tensor] = {}

    def setup(self, stage: str) -> None:
        dm = self._trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "set_reference_logps"):
            raise TypeError(
                "task=reward needs preference data (data=embedded_preferences or "
                f"data=preferences_file); got {type(dm).__name__}"
            )
        if getattr(dm, "packing", False):
            raise ValueError("task=reward: packed rows are not supported; set data.packing=false")
        if not dm.datasets:
            dm.setup("fit")
        self.margins = {
            s: m for s, ds in dm.datasets.items() if (m := self._margins(ds)) is not None
        }

    def _margins(self, dataset: Any) -> torch.Tensor | None:
        if not self.margin_key or not getattr(dataset, "examples", None):
            return None
        raws = [getattr(ex.record, "raw", None) or {} for ex in dataset.examples]
        have = [self.margin_key in r for r in raws]
        if not any(have):
            return None
        if not all(have):
            missing = have.index(False)
            raise ValueError(
                f"preference data: record {missing} of a split has no {self.margin_key!r} while "
                "others do; give every pair a margin or none"
            )
        values = []
        for i, r in enumerate(raws):
            v = r[self.margin_key]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(
                    f"preference data: record {i}: {self.margin_key!r} must be a number"
                )
            values.append(float(v))
        return torch.tensor(values)

    def compute_loss(
        self, batch: dict[str, torch.Tensor], split: str = "train"
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        full, last = last_token_inputs(batch, self.tokenizer.pad_id)
        rewards = sequence_rewards(self.model, self.head, full, last)
        chosen, rejected = rewards.chunk(2)
        margin = None
        if split in self.margins:
            margin = self.margins[split][batch["index"].cpu()].to(rewards.device)
        losses = bradley_terry_loss(chosen, rejected, margin, self.center_rewards_coefficient)
        with torch.no_grad():
            metrics = {
                "accuracy": (chosen > rejected).float().mean(),
                "margin": (chosen - rejected).mean(),
                "rewards/chosen": chosen.mean(),
                "rewards/rejected": rejected.mean(),
            }
        self._n_tokens = int((last + 1).sum())
        return losses.mean(), metrics

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch, split)
        n_pairs = len(batch["index"])
        on_step = split == "train"
        self.log(
            f"{split}/loss", loss, prog_bar=True, batch_size=n_pairs, on_step=on_step, on_epoch=True
        )
        self.log_dict(
            {f"{split}/{k}": v for k, v in metrics.items()},
            batch_size=n_pairs,
            on_step=on_step,
            on_epoch=True,
            prog_bar=False,
        )
        if split == "train":
            self.add_tokens_seen(self._n_tokens, n_pairs)
        return loss

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        # LMTask groups only the decoder's parameters: the head trains too (with weight decay).
        optimizer.add_param_group({"params": list(self.head.parameters())})
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tunelab"]["reward_head"] = True


class RewardModel(nn.Module):
    """A decoder and its scalar head, for scoring (mode=reward, judge=reward)."""

    def __init__(self, model: Decoder, head: nn.Linear) -> None:
        super().__init__()
        self.model, self.head = model, head

    @torch.inference_mode()
    def score(self, sequences: list[list[int]], pad_id: int, batch_size: int = 8) -> list[float]:
        """Rewards of token sequences (each read at its last token)."""
        device = next(self.parameters()).device
        self.eval()
        out: list[float] = []
        for b in range(0, len(sequences), batch_size):
            part = sequences[b : b + batch_size]
            width = max(len(s) for s in part)
            ids = torch.full((len(part), width), pad_id, dtype=torch.long)
            for r, s in enumerate(part):
                ids[r, : len(s)] = torch.tensor(s)
            last = torch.tensor([len(s) - 1 for s in part])
            out += sequence_rewards(self.model, self.head, ids.to(device), last.to(device)).tolist()
        return out


def load_reward_model(path: str):
    """(RewardModel, tokenizer, prompt style) from a task=reward checkpoint or run folder."""
    from tunelab.models.loaders.checkpoint import load_tunelab_checkpoint, read_checkpoint

    ckpt = read_checkpoint(path)
    weight = ckpt["state_dict"].get("head.weight")
    if weight is None or not ckpt["tunelab"].get("reward_head"):
        raise ValueError(f"{path}: not a reward model checkpoint (trained with task=reward)")
    model, tokenizer, style = load_tunelab_checkpoint(path)
    head = nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    return RewardModel(model, head).eval(), tokenizer, style

"""Direct preference optimisation: the policy against a reference that costs no second model.

One forward per batch over chosen‖rejected (2B rows; or packed rows), log-probs summed over the
completion tokens, then `tunelab.losses.dpo_loss`. The reference log-probs come from either

- `reference: precomputed` (default): the starting model is run once over the train and val
  pairs before training (eval mode, no grad, under the trainer's precision), the numbers are
  stored with the examples and cached in the run folder (`ref_logps.pt`, keyed by a hash of the
  model weights and the token ids, so a stale cache is recomputed, never used). No reference
  model is held during training: peak memory is one model's.
- `reference: frozen`: a frozen copy of the starting model (no grad, eval mode) run beside the
  policy on every batch. It is kept outside the module's children so it is neither trained, nor
  switched to train mode, nor saved in checkpoints.
- `reference: adapters_off` (LoRA runs, `model.lora`): the same model with its adapters switched
  off (no grad, eval mode) on every batch: the frozen base is the starting model, so no second
  copy and no precomputation.

Both are taken in `setup()`, which Lightning calls before it restores a checkpoint, so the
reference is the model the run started from even when resuming.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tunelab.losses import dpo_loss, sum_by_segment
from tunelab.losses.dpo import check_dpo_args
from tunelab.losses.lm import IGNORE_INDEX
from tunelab.models.decoder import Decoder
from tunelab.models.lora import adapters_disabled, has_lora
from tunelab.tasks.base import LMTask, batch_target_logprobs

log = logging.getLogger(__name__)
REFERENCE_MODES = ("precomputed", "frozen", "adapters_off")


def concatenated_logps(
    model: Decoder, batch: dict[str, torch.Tensor], chunked: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs and token counts of the batch's 2B sequences, in one forward.

    Sequences are ordered chosen (B) then rejected (B), whether the rows are padded or packed.
    chunked: score only the completion positions, chunk by chunk, never building full logits.
    """
    logp = batch_target_logprobs(model, batch, chunked)
    counted = batch["targets"] != IGNORE_INDEX
    if "seq_ids" in batch:
        return sum_by_segment(logp, counted, batch["seq_ids"], 2 * len(batch["index"]))
    return logp.sum(-1), counted.sum(-1)


@torch.no_grad()
def compute_reference_logps(
    model: Decoder,
    loader: Iterable[dict[str, torch.Tensor]],
    n_examples: int,
    device: torch.device | str = "cpu",
    forward_context: Any = None,
    chunked: bool = True,
) -> torch.Tensor:
    """(N, 2) summed reference log-probs (chosen, rejected), row = example index; eval mode."""
    out = torch.full((n_examples, 2), float("nan"))
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with forward_context() if forward_context else nullcontext():
                logps, _ = concatenated_logps(model, batch, chunked)
            chosen, rejected = logps.float().cpu().chunk(2)
            index = batch["index"].cpu()
            out[index, 0], out[index, 1] = chosen, rejected
    finally:
        model.train(was_training)
    if torch.isnan(out).any():
        raise RuntimeError("reference log-probs: some examples were not computed")
    return out


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameter and buffer names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def examples_digest(examples: list[Any]) -> str:
    """sha256 of the token ids of a split (prompt, chosen, rejected per example, in order)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr((ex.index, ex.prompt, ex.chosen, ex.rejected)).encode())
    return h.hexdigest()


class DPOTask(LMTask):
    """DPO and its robust / IPO / hinge variants; see the module docstring for the reference."""

    def __init__(
        self,
        *args: Any,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        reference: str = "precomputed",
        average_logps: bool | None = None,
        ref_cache: str | None = None,
        ref_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_dpo_args(beta, loss_type, label_smoothing)
        if reference not in REFERENCE_MODES:
            raise ValueError(
                f"task.reference: expected one of {', '.join(REFERENCE_MODES)}, got {reference!r}"
            )
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        if reference == "adapters_off" and not has_lora(self.model):
            raise ValueError(
                "task.reference=adapters_off needs a LoRA model (model.lora, e.g. lora=default)"
            )
        self.reference = reference
        # IPO is defined on per-token average log-probs (as TRL does); the others on sums.
        self.average_logps = loss_type == "ipo" if average_logps is None else bool(average_logps)
        self.ref_cache = Path(ref_cache) if ref_cache else None
        self.ref_batch_size = ref_batch_size
        # Not a child module (object.__setattr__): never trained, never put in train mode, not
        # in the state dict, and moved to the device by hand.
        object.__setattr__(self, "_ref_model", None)
        self._completion_tokens = 0

    @property
    def ref_model(self) -> Decoder | None:
        return self._ref_model

    # -- reference --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.reference == "adapters_off":
            return
        if self.reference == "frozen":
            if self._ref_model is None:
                ref = copy.deepcopy(self.model).requires_grad_(False).eval()
                object.__setattr__(self, "_ref_model", ref)
            return
        dm = self._trainer.datamodule if self._trainer is not None else None
        splits = ("val",) if stage == "validate" else ("train", "val")
        self.precompute_reference(dm, splits)

    def precompute_reference(
        self, datamodule: Any, splits: Iterable[str] = ("train", "val")
    ) -> None:
        """Run the current (starting) model once over the splits; store and cache the results."""
        if datamodule is None or not hasattr(datamodule, "set_reference_logps"):
            raise TypeError(
                "task=dpo needs preference data (data=embedded_preferences or "
                f"data=preferences_file); got {type(datamodule).__name__}"
            )
        if not datamodule.datasets:
            datamodule.setup("fit")
        todo = [
            s
            for s in splits
            if s in datamodule.datasets
            and datamodule.datasets[s].examples
            and any(ex.ref_logps is None for ex in datamodule.datasets[s].examples)
        ]
        if not todo:
            return
        model_hash = model_digest(self.model)
        keys = {
            s: hashlib.sha256(
                f"{model_hash}:{examples_digest(datamodule.datasets[s].examples)}".encode()
            ).hexdigest()
            for s in todo
        }
        cached = self._read_cache()
        device, context = self._device_and_context()
        computed = False
        for split in todo:
            entry = cached.get(split)
            if entry is not None and entry.get("hash") == keys[split]:
                log.info("reference log-probs for %s: loaded from %s", split, self.ref_cache)
                logps = entry["logps"]
            else:
                if entry is not None:
                    log.warning(
                        "reference log-probs for %s in %s are stale (other model or data): "
                        "recomputing",
                        split,
                        self.ref_cache,
                    )
                dataset = datamodule.datasets[split]
                loader = DataLoader(
                    dataset,
                    batch_size=self.ref_batch_size or datamodule.batch_size,
                    shuffle=False,
                    collate_fn=datamodule.collate_fn(),
                )
                self.model.to(device)
                logps = compute_reference_logps(
                    self.model, loader, len(dataset), device, context, self.use_chunked_lm_loss
                )
                log.info("reference log-probs for %s: computed for %d pairs", split, len(dataset))
                cached[split] = {"hash": keys[split], "logps": logps}
                computed = True
            datamodule.set_reference_logps(split, logps)
        if computed and self.ref_cache is not None and self._is_global_zero():
            self.ref_cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cached, self.ref_cache)

    def _read_cache(self) -> dict[str, dict[str, Any]]:
        if self.ref_cache is None or not self.ref_cache.exists():
            return {}
        try:
            data = torch.load(self.ref_cache, weights_only=True)
        except Exception as e:  # an unreadable cache is recomputed, not fatal
            log.warning("reference cache %s is unreadable (%s): recomputing", self.ref_cache, e)
            return {}
        return data if isinstance(data, dict) else {}

    def _device_and_context(self):
        if self._trainer is None:
            return next(self.model.parameters()).device, None
        return self._trainer.strategy.root_device, self._trainer.precision_plugin.forward_context

    def _is_global_zero(self) -> bool:
        return self._trainer is None or self._trainer.is_global_zero

    def on_fit_start(self) -> None:
        # Loaders may hand over a model in eval mode (the GGUF loader does), and Lightning keeps
        # a module's mode: the policy trains in train mode.
        self.model.train()
        if self._ref_model is not None:
            self._ref_model.to(self.device)

    # -- loss -------------------------------------------------------------------------------
    def compute_loss(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean DPO loss of a batch and the metrics to log (TRL's names)."""
        logps, counts = concatenated_logps(self.model, batch, self.use_chunked_lm_loss)
        if "ref_chosen_logps" in batch:
            ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).to(logps)
        elif self.reference == "adapters_off":
            ref = self.adapters_off_logps(batch)
        elif self._ref_model is not None:
            if next(self._ref_model.parameters()).device != logps.device:
                self._ref_model.to(logps.device)
            with torch.no_grad():
                ref, _ = concatenated_logps(self._ref_model, batch, self.use_chunked_lm_loss)
        else:
            raise RuntimeError(
                "DPO batch without reference log-probs: with reference=precomputed they are "
                "computed in setup() (call task.precompute_reference(datamodule) outside a Trainer)"
            )
        policy, ref_used = logps, ref
        if self.average_logps:
            policy, ref_used = logps / counts.clamp(min=1), ref / counts.clamp(min=1)
        pc, pr = policy.chunk(2)
        rc, rr = ref_used.chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            pc, pr, rc, rr, self.beta, self.loss_type, self.label_smoothing
        )
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": chosen_logps.mean(),
            "logps/rejected": rejected_logps.mean(),
        }
        self._completion_tokens = self.counted_targets(batch, counts.sum())
        return losses.mean(), metrics

    @torch.no_grad()
    def adapters_off_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference's summed log-probs: this model, adapters off, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            with adapters_disabled(self.model):
                ref, _ = concatenated_logps(self.model, batch, self.use_chunked_lm_loss)
        finally:
            self.model.train(was_training)
        return ref

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
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
        )
        if split == "train":
            self.add_tokens_seen(self._completion_tokens, n_pairs)
        return loss

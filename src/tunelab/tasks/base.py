"""Shared LightningModule plumbing: optimizer, checkpoint metadata, token counting."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tunelab.losses import (
    IGNORE_INDEX,
    linear_cross_entropy,
    linear_target_logprobs,
    masked_cross_entropy,
    target_logprobs,
)
from tunelab.models.compile import compile_blocks
from tunelab.models.decoder import Decoder, PackedSpans
from tunelab.models.loaders.checkpoint import checkpoint_metadata
from tunelab.models.lora import (
    check_chunked_head,
    has_lora,
    is_lora_key,
    lm_head_weight,
)
from tunelab.models.lora_io import save_peft_adapter
from tunelab.models.tokenizer import Tokenizer
from tunelab.utils.scalars import cpu_scalar, log_step_value

log = logging.getLogger(__name__)

# LMTask counts targets in `on_before_batch_transfer`, and Lightning warns whenever a module's hook
# of that name meets a DataModule, although using the module's hook is exactly what is wanted here.
warnings.filterwarnings(
    "ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`"
)

# Strategies that shard or gather parameters inside the module's own forward: the LM head's weight
# is only whole there, so the chunked loss (which reads it directly) is not used under them.
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def _forward_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """The decoder's packing inputs; spans computed by the collate on the host (no GPU sync)."""
    spans = None
    if batch.get("cu_seqlens") is not None:
        spans = PackedSpans(batch["cu_seqlens"], batch["max_seqlen"])
    return {"positions": batch.get("positions"), "doc_ids": batch.get("doc_ids"), "spans": spans}


def next_token_loss(
    model: Decoder, batch: dict[str, torch.Tensor], chunked: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL over the batch's counted targets, their number); chunked: no full logits."""
    if chunked and model.cfg.final_logit_softcapping is None:  # softcap: full logits
        hidden = model.hidden_states(
            batch["input_ids"], **_forward_kwargs(batch), head_follows=True
        )
        return linear_cross_entropy(hidden, lm_head_weight(model), batch["targets"])
    return masked_cross_entropy(
        model(batch["input_ids"], **_forward_kwargs(batch)), batch["targets"]
    )


def batch_target_logprobs(
    model: Decoder, batch: dict[str, torch.Tensor], chunked: bool = True
) -> torch.Tensor:
    """(B, T) log p(target) of the batch's rows, 0 at ignored targets; chunked: no full logits."""
    if chunked and model.cfg.final_logit_softcapping is None:  # softcap: full logits
        hidden = model.hidden_states(
            batch["input_ids"], **_forward_kwargs(batch), head_follows=True
        )
        return linear_target_logprobs(hidden, lm_head_weight(model), batch["targets"])
    return target_logprobs(model(batch["input_ids"], **_forward_kwargs(batch)), batch["targets"])


class LMTask(L.LightningModule):
    """Base for SFT, CPT and DPO. Subclasses implement `step(batch, split) -> loss`."""

    def __init__(
        self,
        model: Decoder,
        tokenizer: Tokenizer,
        prompt_style: str,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        weight_decay_exclude_norms: bool = True,
        on_nonfinite: str = "stop",
        chunked_lm_loss: bool = True,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.optimizer_factory = optimizer
        self.weight_decay_exclude_norms = weight_decay_exclude_norms
        self.tokens_seen = 0
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"task.on_nonfinite: expected 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.skipped_batches = 0
        self.chunked_lm_loss = chunked_lm_loss
        check_chunked_head(model, chunked_lm_loss)
        model.activation_checkpointing = activation_checkpointing
        if compile:  # regional: each decoder block (see tunelab.models.compile)
            compile_blocks(model)

    @property
    def use_chunked_lm_loss(self) -> bool:
        """Training losses project hidden states chunk by chunk (see `tunelab.losses.chunked`)."""
        if not self.chunked_lm_loss:
            return False
        strategy = type(self._trainer.strategy).__name__ if self._trainer is not None else ""
        return strategy not in SHARDED_STRATEGIES

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(input_ids, **kwargs)

    def step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        raise NotImplementedError

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count the batch's targets while it is still on the host: reading a count back from a
        # GPU would make the host wait for the forward pass before it can queue the backward.
        if isinstance(batch, dict) and isinstance(batch.get("targets"), torch.Tensor):
            targets = batch["targets"]
            self._host_targets = (tuple(targets.shape), int((targets != IGNORE_INDEX).sum()))
        return batch

    def counted_targets(self, batch: dict[str, torch.Tensor], n_targets: torch.Tensor) -> int:
        """The batch's target count as an int: the host's count when one process trains in a
        Trainer (taken from this batch: same shape), else read from `n_targets`."""
        host = getattr(self, "_host_targets", None)
        if self._trainer is not None and self.trainer.world_size <= 1 and host is not None:
            shape, count = host
            if shape == tuple(batch["targets"].shape):
                return count
        return int(n_targets)

    def add_tokens_seen(self, n: int, batch_size: int) -> None:
        """Count a training batch's tokens and log the running total (a CPU value: no sync)."""
        self.tokens_seen += n
        self.log(
            "train/tokens_seen",
            cpu_scalar(self.tokens_seen),
            on_step=True,
            on_epoch=False,
            batch_size=batch_size,
        )

    def global_token_mean(
        self, loss: torch.Tensor, n_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rescale a local per-token mean so DDP's gradient average is the global per-token mean.

        Each rank averages over its own tokens; DDP then averages ranks equally. With unequal
        token counts that is not the per-token mean of the global batch, so the local loss is
        weighted by n_local * world / n_global. One process: unchanged.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        if world <= 1 or not torch.distributed.is_initialized():
            return loss, n_tokens
        n_global = n_tokens.detach().clone().float()
        torch.distributed.all_reduce(n_global)
        return loss * n_tokens.float() * world / n_global.clamp(min=1), n_global

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        loss = self.step(batch, "train")
        if not torch.isfinite(loss):
            return self.nonfinite(f"loss {float(loss)}", batch_idx)
        return loss

    def nonfinite(self, what: str, batch_idx: int) -> None:
        """Stop with a clear message (the last good checkpoint stays), or skip the batch."""
        step = self.trainer.global_step if self._trainer is not None else 0
        if self.on_nonfinite == "skip":
            self.skipped_batches += 1
            log.warning(
                "non-finite %s at step %d (batch %d): batch skipped (%d so far)",
                what,
                step,
                batch_idx,
                self.skipped_batches,
            )
            log_step_value(self, "train/skipped_batches", self.skipped_batches)
            return None
        raise FloatingPointError(
            f"non-finite {what} at step {step} (batch {batch_idx}); training stopped, the last "
            "good checkpoint is kept. Lower the LR, or set task.on_nonfinite=skip to skip such batches"
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "val")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("task has no optimizer: set `optimizer` in the config")
        decay, no_decay = [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            (no_decay if self.weight_decay_exclude_norms and p.dim() < 2 else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return self.optimizer_factory(params=[g for g in groups if g["params"]])

    def on_train_start(self) -> None:
        # Loaders return models in eval mode (ready for inference); training wants train mode.
        self.model.train()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tunelab"] = checkpoint_metadata(self.model, self.tokenizer, self.prompt_style)
        checkpoint["tunelab"]["tokens_seen"] = self.tokens_seen
        checkpoint["tunelab"]["skipped_batches"] = self.skipped_batches
        if has_lora(self.model):  # adapters only: the frozen base is loaded from its source
            checkpoint["tunelab"]["lora"] = self.model.lora_meta
            checkpoint["state_dict"] = {
                k: v
                for k, v in checkpoint["state_dict"].items()
                if not k.startswith("model.") or is_lora_key(k)
            }

    def on_train_end(self) -> None:
        # A LoRA run also leaves its final adapters in PEFT's format, for transformers + peft
        # (not when the run writes no checkpoints: a trainer with checkpointing off).
        trainer = self.trainer
        if has_lora(self.model) and trainer.is_global_zero and trainer.checkpoint_callbacks:
            folder = Path(trainer.default_root_dir) / "checkpoints" / "peft_adapter"
            try:
                save_peft_adapter(self.model, folder)
                log.info("final LoRA adapters in PEFT format: %s", folder)
            except ValueError as e:  # a family without a Hugging Face name map
                log.warning("no PEFT copy of the adapters: %s", e)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restore_lora_base(checkpoint)
        self.tokens_seen = int(checkpoint.get("tunelab", {}).get("tokens_seen", 0))
        self.skipped_batches = int(checkpoint.get("tunelab", {}).get("skipped_batches", 0))

    def _restore_lora_base(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a LoRA run: check the checkpoint's adapters belong to this model and base,
        then complete its state dict with the (frozen, unchanged) base weights."""
        lora = checkpoint.get("tunelab", {}).get("lora")
        if not lora and not has_lora(self.model):
            return
        if not lora or not has_lora(self.model):
            have, need = ("LoRA", "full-model") if has_lora(self.model) else ("full", "LoRA")
            raise ValueError(
                f"cannot resume: the checkpoint is a {need} checkpoint but this run trains a "
                f"{have} model (set model.lora as in the checkpoint's run)"
            )
        meta = self.model.lora_meta
        if lora["config"] != meta["config"]:
            raise ValueError(
                f"cannot resume: checkpoint LoRA config {lora['config']} differs from this run's "
                f"model.lora {meta['config']}"
            )
        if lora["base"].get("sha256") != meta["base"].get("sha256"):
            raise ValueError(
                "cannot resume: the checkpoint's LoRA adapters were trained on another base model "
                f"than {meta['base'].get('source')!r} (sha256 mismatch)"
            )
        state = checkpoint["state_dict"]
        for k, v in self.state_dict().items():
            if k.startswith("model.") and not is_lora_key(k):
                state.setdefault(k, v)

"""The contenders: tunelab and each peer doing the same work, one measured segment at a time.

A contender lives in its own worker process (benchmarks/worker.py) so that its peak RSS is its
own. `segment(i)` runs segment i and returns the wall times it measured; the driver
(benchmarks/run.py) alternates segments between contenders so that each ratio compares
measurements taken side by side.

Training segments are `warmup + steps` optimizer steps over the same batches for everyone; the
clock runs from the end of the warmup step to the end of the last step, so data loading,
framework hooks and the optimizer step are all inside it.
"""

from __future__ import annotations

import gc
import json
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.common import EOT, bench_tokenizer, build_hf_model, build_seed_model, hf_tokenizer
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder


class Contender:
    """Base: loads the shared spec (weights paths, batches, segment sizes)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        torch.manual_seed(spec.get("seed", 123))
        self.cfg = Config.from_dict(json.loads(Path(spec["config"]).read_text()))
        self.eot = spec.get("eot", EOT)  # end-of-text target and pad id of the batches
        # the `*_lora*` contenders: adapters of spec["lora"] on the frozen base
        lora = spec.get("lora") if "_lora" in spec.get("contender", "") else None
        self.lora: dict[str, Any] | None = lora

    def load_state(self) -> dict[str, torch.Tensor]:
        """The shared weights; not kept, so they never count in a contender's memory."""
        return torch.load(self.spec["weights"], weights_only=True)

    def tunelab_model(self) -> Decoder:
        """The shared weights as tunelab's loader holds them: storage allocated once (no random
        init to overwrite) and filled from the memory-mapped file, so the process keeps no
        freed second copy (transformers' loader maps its safetensors file the same way)."""
        from tunelab.models.loaders.hf_weights import empty_model

        model = empty_model(self.cfg, torch.float32)
        state = torch.load(self.spec["weights"], weights_only=True, mmap=True)
        model.load_state_dict(state)
        del state
        if self.lora:  # frozen base + adapters, as `model.lora` does in a run
            from tunelab.models.lora import apply_lora

            apply_lora(model, self.lora)
        return model

    def peft_config(self):
        """PEFT's LoraConfig of the same rank, scale and targets (None without LoRA)."""
        if not self.lora:
            return None
        from peft import LoraConfig

        targets = self.lora["targets"]
        if targets != ["all-linear"]:
            raise ValueError(f"benchmarks map only targets [all-linear] to PEFT, got {targets}")
        return LoraConfig(
            r=self.lora["rank"],
            lora_alpha=self.lora["alpha"],
            lora_dropout=self.lora.get("dropout", 0.0),
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    def segment(self, index: int, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


# ----------------------------------------------------------------------------- SFT


class SFTContender(Contender):
    """Segment i trains on batches [i * (warmup + steps), (i + 1) * (warmup + steps))."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        data = json.loads(Path(spec["batches"]).read_text())
        self.batches: list[list[list[int]]] = data["batches"]  # batch -> example -> token ids
        self.per_segment = spec["warmup"] + spec["steps"]
        self.warmup = spec["warmup"]
        # this process runs segments first .. first + segments - 1 (one, when each segment
        # gets a fresh process)
        self.first = spec.get("first_segment", 0)
        self.n_segments = spec["segments"]

    def own_batches(self) -> list[list[list[int]]]:
        start = self.first * self.per_segment
        return self.batches[start : start + self.n_segments * self.per_segment]

    def segment_batches(self, index: int) -> list[list[list[int]]]:
        start = index * self.per_segment
        out = self.batches[start : start + self.per_segment]
        if len(out) < self.per_segment:
            raise ValueError(f"segment {index}: only {len(out)} batches left")
        return out

    def timed(self, step_ends: list[float]) -> float:
        """Seconds from the end of the warmup steps to the end of the last step."""
        return step_ends[-1] - step_ends[self.warmup - 1]


def _examples(batch: list[list[int]]):
    from tunelab.data.records import Record
    from tunelab.data.sft import Example

    return [Example(ids=ids, prompt_len=0, record=Record("")) for ids in batch]


def tunelab_optimizer_factory():
    """The project's own optimizer config (conf/optimizer/adamw.yaml), as training uses it."""
    import hydra
    from omegaconf import OmegaConf

    from tunelab.utils.config import conf_dir

    return hydra.utils.instantiate(OmegaConf.load(Path(conf_dir()) / "optimizer" / "adamw.yaml"))


def apply_malloc_policy(spec: dict[str, Any]) -> str:
    """tunelab's CPU malloc policy for this worker process (spec `malloc`, default `keep`)."""
    from tunelab.callbacks.cpu_allocator import set_malloc_policy

    policy = spec.get("malloc", "keep")
    set_malloc_policy(policy)
    return policy


def fit_timed(task: Any, max_steps: int, malloc_policy: str, **fit_kwargs: Any) -> list[float]:
    """`max_steps` of tunelab's Lightning path on the CPU (GradClip and the allocator policy, as
    in the default callbacks); returns the end time of every step."""
    import lightning as L

    from tunelab.callbacks.cpu_allocator import CPUAllocator
    from tunelab.callbacks.grad_clip import GradClip

    ends: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[GradClip(max_norm=1.0), CPUAllocator(malloc_policy), Timer()],
    )
    trainer.fit(task, **fit_kwargs)
    task.trainer = None  # let the trainer (and its optimizer state) go: Lightning's objects
    del trainer  # hold reference cycles, so only a collection frees them before the next
    gc.collect()  # segment's peak is measured
    return ends


class TunelabSFT(SFTContender):
    """tunelab's training path: SFTTask in a Lightning Trainer, packed batches, GradClip callback.

    `mode="plain"` runs the same module, loss, packed batches, optimizer and clipping in a plain
    PyTorch loop: the difference is the framework's overhead.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from tunelab.tasks.sft import SFTTask

        self.model = self.tunelab_model()
        self.task = SFTTask(
            model=self.model,
            tokenizer=bench_tokenizer(self.cfg),
            prompt_style="alpaca",
            optimizer=tunelab_optimizer_factory(),
            # `*_recompute`: task.activation_checkpointing=true, the work TRL's defaults do
            activation_checkpointing=spec.get("contender", "").endswith("_recompute"),
        )
        # what conf/callbacks/cpu_allocator.yaml does at fit start, here before either loop runs
        self.malloc_policy = apply_malloc_policy(spec)
        self.packing = spec.get("packing", True)
        self.max_length = spec["max_length"]

    def loader(self, index: int) -> DataLoader:
        from tunelab.data.packing import collate_packed
        from tunelab.data.sft import collate_sft

        examples = [ex for b in self.segment_batches(index) for ex in _examples(b)]
        collate = (
            partial(collate_packed, pad_id=self.eot, max_length=self.max_length)
            if self.packing
            else partial(collate_sft, pad_id=self.eot)
        )
        return DataLoader(
            examples, batch_size=self.spec["batch_size"], shuffle=False, collate_fn=collate
        )

    def segment(self, index: int, mode: str = "lightning", **_: Any) -> dict[str, Any]:
        ends = self._lightning(index) if mode == "lightning" else self._plain(index)
        return {"seconds": self.timed(ends), "step_ends": ends}

    def _lightning(self, index: int) -> list[float]:
        return fit_timed(
            self.task, self.per_segment, self.malloc_policy, train_dataloaders=self.loader(index)
        )

    def _plain(self, index: int) -> list[float]:
        from tunelab.tasks.base import next_token_loss

        optimizer = self.task.configure_optimizers()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.model.train()
        ends = []
        for batch in self.loader(index):
            loss, _ = next_token_loss(self.model, batch, self.task.chunked_lm_loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            ends.append(time.perf_counter())
        del optimizer, params
        gc.collect()
        return ends


class SeedSFT(SFTContender):
    """The seed: ch04 GPTModel, ch07 `custom_collate_fn` (pad to longest), ch05's plain loop.

    The loop body is ch05 `train_model_simple`'s (zero_grad, `calc_loss_batch`, backward, step)
    without its periodic evaluation and sample printing; the optimizer is ch07's AdamW.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.model = build_seed_model(self.load_state(), self.cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.00005, weight_decay=0.1)

    def segment(self, index: int, **_: Any) -> dict[str, Any]:
        from llms_from_scratch.ch05 import calc_loss_batch
        from llms_from_scratch.ch07 import custom_collate_fn

        collate = partial(custom_collate_fn, device="cpu", allowed_max_length=1024)
        batches = [ids for b in self.segment_batches(index) for ids in b]
        loader = DataLoader(
            batches, batch_size=self.spec["batch_size"], shuffle=False, collate_fn=collate
        )
        self.model.train()
        ends = []
        for input_batch, target_batch in loader:
            self.optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, self.model, "cpu")
            loss.backward()
            self.optimizer.step()
            ends.append(time.perf_counter())
        return {"seconds": self.timed(ends), "step_ends": ends}


class _PausableRun:
    """Runs a whole HF-Trainer training in a thread, pausing after every segment.

    HF `Trainer.train()` owns its loop; rather than re-creating trainers (which re-patches the
    model), one `train()` covers every segment and a callback blocks at segment boundaries until
    the driver asks for the next one.
    """

    def __init__(self, per_segment: int) -> None:
        self.per_segment = per_segment
        self.ends: list[float] = []
        self.done = threading.Event()
        self.go = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) % self.per_segment == 0:
            self.done.set()
            self.go.wait()
            self.go.clear()

    def next_segment(self, start) -> list[float]:
        n = len(self.ends)
        self.done.clear()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
            self.thread.start()
        else:
            self.go.set()
        self.done.wait()
        if self.error is not None:
            raise RuntimeError(f"training thread failed: {self.error!r}") from self.error
        return self.ends[n : n + self.per_segment]

    def _run(self, start) -> None:
        try:
            start()
        except BaseException as e:  # reported to the driver by next_segment
            self.error = e
        finally:
            self.done.set()


def _hf_callback(run: _PausableRun):
    from transformers import TrainerCallback

    class Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run.step_end()

    return Pause()


def _sequential(trainer_cls):
    """The trainer class with a sequential sampler: the same batches in the same order."""
    from torch.utils.data import SequentialSampler

    class Sequential(trainer_cls):
        def _get_train_sampler(self, *args: Any, **kwargs: Any):
            return SequentialSampler(self.train_dataset)

    return Sequential


def _common_hf_args(spec: dict[str, Any], out_dir: str, total_steps: int) -> dict[str, Any]:
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=spec["batch_size"],
        max_steps=total_steps,
        learning_rate=5e-5,
        weight_decay=0.1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=spec.get("seed", 123),
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=False,
        fp16=False,
    )


class TrlSFT(SFTContender):
    """TRL's SFTTrainer with its defaults (no packing: pad to the batch's longest) on a
    transformers GPT2LMHeadModel holding the same weights; the same batches in the same order."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        self.model = build_hf_model(Path(spec["hf_dir"]))
        n_segments = self.n_segments
        examples = [
            ids + [self.eot]  # the end-of-text target every contender trains on
            for b in self.own_batches()
            for ids in b
        ]
        self.run = _PausableRun(self.per_segment)
        self.tmp = tempfile.mkdtemp(prefix="trl_sft_")
        args = SFTConfig(
            **_common_hf_args(spec, self.tmp, n_segments * self.per_segment), max_length=1024
        )
        self.trainer = _sequential(SFTTrainer)(
            model=self.model,
            args=args,
            train_dataset=Dataset.from_dict({"input_ids": examples}),
            processing_class=hf_tokenizer(spec["hf_dir"]),
            callbacks=[_hf_callback(self.run)],
            peft_config=self.peft_config(),  # trl_sft_lora: PEFT adapters on the frozen base
        )
        self.next_index = self.first

    def segment(self, index: int, **_: Any) -> dict[str, Any]:
        if index != self.next_index:
            raise ValueError(f"TRL segments run in order: expected {self.next_index}, got {index}")
        self.next_index += 1
        ends = self.run.next_segment(self.trainer.train)
        return {"seconds": self.timed(ends), "step_ends": ends}


# ----------------------------------------------------------------------------- generation


class GenContender(Contender):
    """Greedy generation of `new_tokens` tokens (no stop token) from one prompt, batch 1."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.prompt: list[int] = spec["prompt"]
        self.new_tokens: int = spec["new_tokens"]

    def segment(self, index: int, **_: Any) -> dict[str, Any]:
        t = time.perf_counter()
        tokens = self.generate(self.new_tokens)
        seconds = time.perf_counter() - t
        if len(tokens) != self.new_tokens:
            raise RuntimeError(f"generated {len(tokens)} tokens, expected {self.new_tokens}")
        return {"seconds": seconds, "tokens": tokens}

    def warm(self) -> None:
        self.generate(4)

    def generate(self, n: int) -> list[int]:
        raise NotImplementedError


class TunelabGen(GenContender):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.model = self.tunelab_model().eval()
        self.warm()

    def generate(self, n: int) -> list[int]:
        from tunelab.models.generation import generate

        return generate(self.model, [self.prompt], max_new_tokens=n, stop_ids=())[0]


class SeedGen(GenContender):
    """ch04 `generate_text_simple`: every new token re-runs the model over the whole sequence."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.model = build_seed_model(self.load_state(), self.cfg).eval()
        self.warm()

    def generate(self, n: int) -> list[int]:
        from llms_from_scratch.ch04 import generate_text_simple

        idx = torch.tensor([self.prompt])
        out = generate_text_simple(self.model, idx, n, context_size=self.cfg.context_length)
        return out[0, len(self.prompt) :].tolist()


def _cached_attention_forward(self, x, use_cache=False, start_pos=0, cache=None):
    """`kv_cache.gpt2.MultiHeadAttention.forward` with its causal mask sliced by rows.

    In llms-from-scratch 1.0.19 the mask of the cached GPT-2 attention is cut with
    `mask[:, -num_tokens:]` (columns), which raises a shape error on every decode step after the
    prefill. Same operations otherwise: separate q/k/v projections, the cache grown with
    `torch.cat`, explicit scores, `masked_fill`, softmax, output projection.
    """
    b, n, _ = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    queries, keys, values = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
    next_cache = None
    if use_cache:
        if cache is not None:
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        next_cache = (keys, values)
    total = keys.size(2)
    # the n new queries sit at positions total-n .. total-1; each sees the keys up to itself
    mask = torch.ones(n, total, dtype=torch.bool, device=x.device).triu(diagonal=total - n + 1)
    scores = (queries @ keys.transpose(2, 3)).masked_fill_(mask, -torch.inf)
    weights = self.dropout(torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1))
    context = (weights @ values).transpose(1, 2).contiguous().view(b, n, self.d_out)
    return self.out_proj(context), next_cache


class SeedKVGen(GenContender):
    """The seed's KV-cache variant: `llms_from_scratch.kv_cache.gpt2.GPTModel` and its `KVCache`.

    Two repairs to the 1.0.19 package, both needed for it to run at all: the package's
    `kv_cache.generate.generate_text_simple` expects `model.cfg` and `model.reset_kv_cache()`,
    which its GPT-2 model lacks (its own test skips that pairing), so that function's loop is
    written out here (prefill with `use_cache=True`, then one token at a time through the
    cache); and the attention's mask slicing is fixed (`_cached_attention_forward`).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.model = build_seed_model(self.load_state(), self.cfg, kv_cache=True).eval()
        for block in self.model.trf_blocks:
            block.att.forward = _cached_attention_forward.__get__(block.att)
        self.warm()

    def generate(self, n: int) -> list[int]:
        from llms_from_scratch.kv_cache.utils import KVCache

        idx = torch.tensor([self.prompt])
        with torch.no_grad():
            cache = KVCache(n_layers=self.cfg.n_layer)
            self.model.current_pos = 0
            logits = self.model(idx, use_cache=True, cache=cache)
            for _ in range(n):
                next_idx = logits[:, -1].argmax(dim=-1, keepdim=True)
                idx = torch.cat([idx, next_idx], dim=1)
                logits = self.model(next_idx, use_cache=True, cache=cache)
        return idx[0, len(self.prompt) :].tolist()


CONTENDERS: dict[str, str] = {
    "tunelab_sft": "benchmarks.contenders:TunelabSFT",
    "seed_sft": "benchmarks.contenders:SeedSFT",
    "trl_sft": "benchmarks.contenders:TrlSFT",
    "tunelab_sft_lora": "benchmarks.contenders:TunelabSFT",
    "tunelab_sft_lora_recompute": "benchmarks.contenders:TunelabSFT",
    "trl_sft_lora": "benchmarks.contenders:TrlSFT",
    "tunelab_dpo_lora": "benchmarks.dpo:TunelabDPO",
    "trl_dpo_lora": "benchmarks.dpo:TrlDPO",
    "tunelab_gen": "benchmarks.contenders:TunelabGen",
    "seed_gen": "benchmarks.contenders:SeedGen",
    "seed_kv_gen": "benchmarks.contenders:SeedKVGen",
    "tunelab_dpo": "benchmarks.dpo:TunelabDPO",
    "tunelab_dpo_lowmem": "benchmarks.dpo:TunelabDPO",
    "trl_dpo": "benchmarks.dpo:TrlDPO",
    "trl_dpo_precomputed": "benchmarks.dpo:TrlDPO",
    "trl_dpo_lowmem": "benchmarks.dpo:TrlDPO",
}


def contender_class(name: str) -> type[Contender]:
    import importlib

    module, attr = CONTENDERS[name].split(":")
    return getattr(importlib.import_module(module), attr)

"""LoRA adapters of a run: fold them into the model, or write them in PEFT's format.

    python -m tunelab.lora merge <run folder | .ckpt> <out.ckpt>   # a full model, adapters folded in
    python -m tunelab.lora peft  <run folder | .ckpt> <out folder> # adapter_config.json + safetensors

The merged checkpoint is an ordinary tunelab checkpoint (tokenizer and prompt style included), so
serve, eval, generate, lens and `model.source=` take it like any other; they also take the LoRA run
itself (base + adapters, unmerged).
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    from tunelab.models.api import load_pretrained
    from tunelab.models.lora import has_lora, merge_lora
    from tunelab.models.lora_io import save_model_checkpoint, save_peft_adapter

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in ("merge", "peft"):
        print(f"usage:\n{USAGE}", file=sys.stderr)
        return 2
    command, source, out = args
    loaded = load_pretrained(source)
    if not has_lora(loaded.model):
        raise ValueError(f"{source}: not a LoRA checkpoint (no adapters to {command})")
    if command == "peft":
        print(save_peft_adapter(loaded.model, out))
        return 0
    merge_lora(loaded.model)
    print(save_model_checkpoint(loaded.model, loaded.tokenizer, loaded.prompt_style, out))
    return 0


if __name__ == "__main__":
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        sys.exit(main())

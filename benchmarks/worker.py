"""One contender in its own process: `python -m benchmarks.worker NAME SPEC_JSON`.

Speaks JSON lines with the driver: it reads commands from stdin (`{"cmd": "segment", "index": i,
...}`, `{"cmd": "quit"}`) and answers on stdout with lines starting with `@@BENCH ` (everything
else a library prints is ignored by the driver). Each answer carries the process's peak RSS.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

PREFIX = "@@BENCH "


def reply(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    name, spec_path = argv[1], argv[2]
    import logging

    import torch

    for lib in ("lightning", "lightning.pytorch", "transformers", "trl", "datasets", "accelerate"):
        logging.getLogger(lib).setLevel(logging.ERROR)

    from benchmarks.common import peak_rss_mib, process_peak_rss_mib, reset_peak_rss

    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    spec["contender"] = name
    try:
        from benchmarks.contenders import contender_class

        t = time.perf_counter()
        contender = contender_class(name)(spec)
        reply({"ready": True, "setup_s": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib()})
    except Exception:
        reply({"ready": False, "error": traceback.format_exc()})
        return 1
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            break
        try:
            # the peak while doing the work (model, optimizer state, activations), not the
            # transient copies of loading the weights at set-up
            reset = reset_peak_rss()
            out = contender.segment(cmd["index"], **cmd.get("kwargs", {}))
            out["peak_rss_mib"] = peak_rss_mib()
            out["peak_rss_is_segment_peak"] = reset
            out["process_peak_rss_mib"] = process_peak_rss_mib()
            reply(out)
        except Exception:
            reply({"error": traceback.format_exc()})
    contender.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

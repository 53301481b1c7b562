"""One Olive 0.13 `olive finetune` run of --max_steps (default 120, the issue's flags), then one
`slimops finetune` run with its defaults, back to back, each adapter scored the same way.

    python benchmarks/olive_full_run.py [--olive-venv DIR] [--steps 120]

A single run of each (Olive's 120 steps take about 75 min on 2 cores); `benchmarks/finetune.py`
runs the medians of several alternating runs with a shorter Olive. Its functions do the work here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune as bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--olive-venv", type=Path, default=Path.home() / ".cache" / "slimops-bench" / "olive-0.13")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimops-bench-finetune"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "convert-out" / "hf"
    if not model.exists():
        model = bench.convert(args.work)
    olive = bench.olive_venv(args.olive_venv)
    jobs = (("olive", lambda: bench.run_olive(olive, model, args.work, args.steps)),
            ("slimops", lambda: bench.run_slimops(model, args.work)))
    for name, job in jobs:
        started = time.time()
        result = job()
        result["tokens_per_s"] = result["tokens"] / result["train_s"]
        result["accuracy"] = bench.accuracy(model, result.pop("adapter"))
        print(name, json.dumps(result), f"total {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()

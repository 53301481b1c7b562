"""Engine overhead: `slimops validate` of a template, and plan + all-hits rerun of six passes.

    python benchmarks/engine.py [--repeats 7]

Each figure is the median of `--repeats` fresh processes (what a user waits for), measured
here; the table goes into docs/benchmarks.md under "Engine overhead".
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import commit, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIX = textwrap.dedent(
    """
    name: six
    targets: {laptop: cpu-int4, phone: cpu-int8}
    passes:
      p1: {type: fake, value: a}
      p2: {type: fake, value: b}
      p3: {type: fake, value: c}
      p4: {type: fake, value: d}
      p5: {type: fake, value: e}
      p6: {type: fake, value: f}
    """
)


def timed(*args: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slimops.cli", *args], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"slimops {' '.join(args)} failed:\n{done.stderr}")
    return elapsed


def in_process(config: Path) -> float:
    """Engine time alone (no interpreter start): load, plan and an all-hits run."""
    import slimops
    from slimops.display import RunDisplay

    t0 = time.perf_counter()
    result = slimops.run(config, display=RunDisplay(quiet=True))
    elapsed = time.perf_counter() - t0
    assert all(node.cached for node in result.nodes.values())
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--template", default="quickstart")
    args = parser.parse_args()
    template = ROOT / "configs" / f"{args.template}.yaml"
    if not template.exists():
        template = ROOT / "configs" / "demo.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        config = project / "six.yaml"
        config.write_text(SIX)
        timed("run", "--quiet", "--config", str(config), cwd=project)  # build once
        validate = [timed("validate", "--config", str(template), cwd=project) for _ in range(args.repeats)]
        plan = [timed("plan", "--config", str(config), cwd=project) for _ in range(args.repeats)]
        rerun = [timed("run", "--quiet", "--config", str(config), cwd=project) for _ in range(args.repeats)]
        engine = [in_process(config) for _ in range(args.repeats)]
        python = [timed("--version", cwd=project) for _ in range(args.repeats)]
    rows = [
        (f"`slimops validate` of configs/{template.name}", validate),
        ("`slimops plan` of a six-pass, two-target pipeline (9 nodes)", plan),
        ("`slimops run` of it, all hits", rerun),
        ("in-process `slimops.run`, all hits (engine time alone)", engine),
        ("`slimops --version` (interpreter + CLI start-up)", python),
    ]
    lines = [
        f"`python benchmarks/engine.py --repeats {args.repeats}` at commit `{commit()}` on {machine()}.",
        "Medians of fresh processes unless marked in-process.",
        "",
        "| what | median | min | max |",
        "| --- | --- | --- | --- |",
    ]
    for label, values in rows:
        lines.append(f"| {label} | {statistics.median(values):.3f} s | {min(values):.3f} s | {max(values):.3f} s |")
    lines += [
        "",
        "For scale: on this kind of machine a cached rerun of `olive finetune` was reported at 14 s, 7 s of it",
        "telemetry shutdown (figure from the issue, not measured here).",
    ]
    write_section("Engine overhead", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

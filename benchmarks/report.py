"""Write one benchmark's section into docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEAD = "# Benchmarks\n\nEach section is written by the script it names, on one machine in one run; medians and ratios.\n"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=DOC.parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=DOC.parent).stdout.strip()
        return f"{sha}{'+dirty' if dirty else ''}" or "unknown"
    except OSError:
        return "unknown"


def machine() -> str:
    import os

    from slimops.hardware import cpu_model

    return f"{cpu_model() or platform.machine()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md with `body`."""
    text = DOC.read_text() if DOC.exists() else HEAD
    heading = f"## {title}"
    parts = text.split("\n## ")
    kept = [parts[0]] + [p for p in parts[1:] if not p.startswith(f"{title}\n")]
    new = "\n## ".join(kept).rstrip() + f"\n\n{heading}\n\n{body.strip()}\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(new)

"""A fake pass for testing pipelines without a model.

`fake` writes a small text file derived from its inputs and params. It can sleep, fail, and
produce any artifact kind, so users (and slimops's own tests) can exercise the planner, the
cache and the scheduler in seconds.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from slimops.plugin import Artifact, Pass, PassContext


class Fake(Pass):
    """Writes `out.txt`: its params and a digest of each input's files."""

    name = "fake"
    version = "1"
    consumes = None
    produces = "text"
    many_inputs = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        value: str = Field("x", description="Text written into the output.")
        seconds: float = Field(0.0, ge=0, description="How long to pretend to work.")
        fail: bool = Field(False, description="Raise an error instead of producing output.")
        kind: str = Field("text", description="The artifact kind to claim for the output.")

    def output_kind(self, params, input_kinds):
        return params.kind

    def run(self, ctx: PassContext) -> Artifact:
        params = ctx.params
        steps = max(1, int(params.seconds * 10))
        for step in range(steps):
            if params.seconds:
                time.sleep(params.seconds / steps)
            ctx.progress.update(step + 1, steps, f"step {step + 1}/{steps}")
        if params.fail:
            raise RuntimeError(f"fake failure requested by '{ctx.node}'")
        lines = [f"value={params.value}", f"target={getattr(ctx.target, 'precision', None)}"]
        for name, artifact in ctx.inputs.items():
            lines.append(f"{name}={_digest(artifact.path)}")
        out = ctx.output_dir / "out.txt"
        out.write_text("\n".join(lines) + "\n")
        return Artifact(path=ctx.output_dir, kind=params.kind, metrics={"chars": out.stat().st_size})


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]

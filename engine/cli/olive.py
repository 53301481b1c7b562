"""`slimops convert-olive FILE [-o pipeline.yaml]`: an Olive workflow config, written as a pipeline.

The pipeline is the one `slimops run --config FILE` runs (the same conversion, then the same
validation); each key an Olive setting became, and each Olive setting dropped, carries a comment
saying so. Paths are rewritten relative to the written file. Without `-o` the YAML goes to
standard output; an existing file is replaced only with `--force`, and then atomically.

`announce(config, file)` is the one line `run`, `validate` and `plan` print for an Olive file.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from slimops.errors import ConfigError

WIDTH = 110


def add_parser(sub) -> None:
    p = sub.add_parser("convert-olive", help="write an Olive workflow config as a slimops pipeline, with comments on what mapped")
    p.add_argument("file", help="the Olive config (YAML or JSON)")
    p.add_argument("--output", "-o", help="the pipeline file to write, or - to print it (default: print it)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")


def announce(config, file: str | Path) -> None:
    """The one line saying an Olive config runs as its slimops pipeline."""
    if config.olive is not None:
        print(f"{file}: an Olive workflow config; running it as the equivalent slimops pipeline "
              f"('slimops convert-olive {file} -o pipeline.yaml' writes it out)", file=sys.stderr)


def cmd_convert_olive(args) -> int:
    from slimops.config import load_config
    from slimops.planner import build_plan

    source = Path(args.file)
    config = load_config(source)
    if config.olive is None:
        raise ConfigError(f"this is a slimops pipeline already, not an Olive workflow config; run it with 'slimops run --config {source}'", str(source))
    build_plan(config, keys=False)  # every check `slimops validate` makes, before anything is written
    out = Path(args.output) if args.output and args.output != "-" else None
    if out is not None:
        if out.resolve() == source.resolve():
            raise ConfigError("the output would replace the Olive config itself; give another file with -o", str(out))
        if out.exists() and not out.is_file():
            raise ConfigError("is not a file; give a file name with -o", str(out))
        if out.exists() and not args.force:
            raise ConfigError("the file exists; add --force to replace it, or give another file with -o", str(out))
    base = (out.resolve().parent if out else Path.cwd().resolve())
    pipeline = relocate(config.olive.pipeline, source.resolve().parent, base)
    text = pipeline_text(pipeline, config.olive.notes, source.name, out.name if out else "pipeline.yaml")
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    print(f"wrote {out}; run it with 'slimops run --config {out}'", file=sys.stderr)
    return 0


def relocate(pipeline: dict[str, Any], origin: Path, base: Path) -> dict[str, Any]:
    """The pipeline with its local paths (model, data files, output folder) relative to `base`, not `origin`."""
    def moved(text: str, must_exist: bool) -> str:
        path = Path(text).expanduser()
        if path.is_absolute() or text.startswith("~") or (must_exist and not (origin / path).exists()):
            return text
        return Path(os.path.relpath(origin / path, base)).as_posix()

    out = json.loads(json.dumps(pipeline))
    if isinstance(out.get("model"), dict) and isinstance(out["model"].get("path"), str):
        out["model"]["path"] = moved(out["model"]["path"], must_exist=True)
    for data in (out.get("data") or {}).values():
        files = data.get("files")
        if isinstance(files, str):
            data["files"] = moved(files, False)
        elif isinstance(files, list):
            data["files"] = [moved(f, False) for f in files]
        elif isinstance(files, dict):
            data["files"] = {k: moved(v, False) if isinstance(v, str) else [moved(f, False) for f in v] for k, v in files.items()}
    engine = out.get("engine") or {}
    if "output_dir" in engine:
        engine["output_dir"] = moved(engine["output_dir"], False)
    return out


def pipeline_text(pipeline: dict[str, Any], notes, source: str, name: str) -> str:
    """The pipeline as YAML, each note a comment above the key it concerns (or at the head, for a
    section the pipeline does not have)."""
    by_path: dict[tuple, list[str]] = {}
    for note in notes:
        path = tuple(note.path)
        while path and not _has(pipeline, path):
            path = path[:-1]
        by_path.setdefault(path, []).append(("warning: " if note.warn else "") + note.comment)
    lines = [f"# Converted from the Olive config {source} by 'slimops convert-olive'; run it with 'slimops run --config {name}'.",
             "# Each comment says which Olive setting a key came from, or what was dropped and why (docs/olive.md)."]
    lines += _comments(by_path.get((), []), 0)
    lines += _block(pipeline, (), 0, by_path)
    return "\n".join(lines) + "\n"


def _has(data: Any, path: tuple) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _comments(texts: list[str], indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for text in dict.fromkeys(texts):
        out += textwrap.wrap(text, WIDTH - indent, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}#   ")
    return out


def _block(data: dict[str, Any], path: tuple, indent: int, notes: dict[tuple, list[str]]) -> list[str]:
    pad = " " * indent
    out = []
    for key, value in data.items():
        here = (*path, key)
        out += _comments(notes.get(here, []), indent)
        label = _scalar(key)
        if isinstance(value, dict) and value and not _short(value):
            out.append(f"{pad}{label}:")
            out += _block(value, here, indent + 2, notes)
        else:
            out.append(f"{pad}{label}: {_flow(value)}")
    return out


def _short(value: dict[str, Any]) -> bool:
    """A mapping of a few plain values that reads well on one line ({device: cpu})."""
    return len(value) <= 3 and all(not isinstance(v, (dict, list)) for v in value.values()) and len(_flow(value)) < 60


def _scalar(value: Any) -> str:
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is YAML's double-quoted form
    # dumped inside a list, so a string is quoted wherever a flow collection would misread it (train[:90%])
    text = yaml.safe_dump([value], default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[1:-1]


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)

"""The pipeline templates shipped in `slimops.configs`, and copying one into a project."""

from __future__ import annotations

import difflib
import shutil
from importlib import resources
from pathlib import Path

import yaml

from slimops.errors import TemplateError


def template_dir() -> Path:
    return Path(str(resources.files("slimops.configs")))


def templates() -> dict[str, str]:
    """Template name -> its first comment line (what it is for)."""
    found = {}
    for path in sorted(template_dir().glob("*.yaml")):
        comments = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
        found[path.stem] = next((c for c in comments if not c.startswith("yaml-language-server")), "")
    return found


def copy_template(name: str, dest_dir: Path, force: bool = False) -> list[Path]:
    """Copy template `name` and the data files it names into `dest_dir`.

    Raises:
        TemplateError: unknown template, `dest_dir` (or a folder above it) is a file, or a file
            exists already (unless `force`).
    """
    source = template_dir() / f"{name}.yaml"
    if not source.is_file():
        close = difflib.get_close_matches(name, list(templates()), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"templates are: {', '.join(templates())}"
        raise TemplateError(f"no template '{name}'; {hint} ('slimops init' lists them)")
    blocked = next((p for p in (dest_dir, *dest_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise TemplateError(f"{blocked} is a file, not a folder; give the folder to copy '{name}' into "
                            f"(slimops init {name} DIR; it is made if missing)")
    data = yaml.safe_load(source.read_text()) or {}
    files = [source]
    for spec in (data.get("data") or {}).values():
        value = spec.get("files") if isinstance(spec, dict) else None
        values = [value] if isinstance(value, str) else (value if isinstance(value, list) else list((value or {}).values()))
        files.extend(template_dir() / v for v in values if isinstance(v, str))
    copies = [(file, dest_dir / file.relative_to(template_dir())) for file in files]
    clashes = [str(dst.relative_to(dest_dir)) for _, dst in copies if dst.exists()]
    if clashes and not force:
        raise TemplateError(f"{dest_dir} already has {', '.join(clashes)}; pass --force to replace them, or give "
                            "another folder")
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return [dst for _, dst in copies]

"""The pipeline templates shipped in `slimops.configs`, and copying one into a project."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import yaml

from slimops.errors import ConfigError


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
        ConfigError: unknown template, or a file that exists already (unless `force`).
    """
    source = template_dir() / f"{name}.yaml"
    if not source.is_file():
        raise ConfigError(f"no template '{name}'; templates are: {', '.join(templates())}")
    data = yaml.safe_load(source.read_text()) or {}
    files = [source]
    for spec in (data.get("data") or {}).values():
        value = spec.get("files") if isinstance(spec, dict) else None
        values = [value] if isinstance(value, str) else (value if isinstance(value, list) else list((value or {}).values()))
        files.extend(template_dir() / v for v in values if isinstance(v, str))
    copies = [(file, dest_dir / file.relative_to(template_dir())) for file in files]
    clashes = [str(dst) for _, dst in copies if dst.exists()]
    if clashes and not force:
        raise ConfigError(f"would overwrite {', '.join(clashes)}; pass --force to replace them")
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return [dst for _, dst in copies]

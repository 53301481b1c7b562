"""Names that become paths: a pass (node) or target name is a folder under the output folder, so
it must be one safe path component, and no two names may land on the same path.

- `name_problem(name, what)`: why `name` cannot name a pass or target, or None.
- `RESERVED`: the names of what slimops itself writes into the output folder.
"""

from __future__ import annotations

import re

# letters, digits, '_', '-' and inner dots; 64 at most; never '.', '..' or a hidden name
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
RESERVED = {"model", "run.json", "report.md", "report.html", "report", "trials.json", "trials"}
ALLOWED = "letters, digits, '_', '-' and '.' (not first; not in a pass name), at most 64 characters"


def name_problem(name: str, what: str) -> str | None:
    """Why `name` cannot name a `what` ("pass" or "target"), or None when it can."""
    if name in RESERVED:
        return f"'{name}' cannot name a {what}: slimops uses it ({', '.join(sorted(RESERVED))}); pick another name"
    if not SAFE.fullmatch(name) or name.endswith("."):
        return f"{name!r} cannot name a {what}: it becomes a folder under the output folder; allowed: {ALLOWED}"
    if what == "pass" and "." in name:
        return (f"'{name}' cannot name a pass: slimops names the nodes it adds with a dot ({name.split('.')[0]}.before "
                f"for a baseline, model.from_gguf for a conversion) and --set separates keys with one; "
                f"try '{name.replace('.', '-')}'")
    return None

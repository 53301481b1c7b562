"""The output folder: slimops replaces only what it wrote there.

A run claims its output folder before the first pass runs: a new or empty folder gets the marker
`.slimops-output.json`, which lists every node folder slimops has written into it. A folder that
holds files slimops did not write (a project folder given as `engine.output_dir: .`, say) is
refused with a message, and a node folder is replaced only when the marker lists it, so a user's
own `out/data/` is never deleted. An output folder written before the marker existed is adopted
when everything in it is something slimops writes (its `run.json` names the node folders).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from filelock import FileLock

from slimops.config.names import RESERVED
from slimops.errors import ConfigError, SlimopsError

MARKER = ".slimops-output.json"
LOCK = ".slimops-output.lock"
RUN_JSON = "run.json"  # what a run records, beside the node folders


class OutputFolder:
    """One run's output folder and the marker that says what in it slimops wrote."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.marker = self.root / MARKER
        self._filelock: FileLock | None = None

    def claim(self) -> None:
        """Make the folder this run's (create it, or adopt it), or refuse it.

        Raises:
            ConfigError: the folder is a file, or holds files slimops did not write.
        """
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"the output folder {self.root} is a file; set engine.output_dir to a folder")
        try:
            if self.marker.is_file():
                return
            if self.root.is_dir():  # checked before anything (the lock file too) is written there
                adopted = self._adopted()
                foreign = [p.name for p in self.root.iterdir() if not _ours(p.name, adopted)]
                if foreign:
                    shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
                    raise ConfigError(
                        f"the output folder {self.root} holds files slimops did not write ({shown}); slimops replaces "
                        "what it writes there, so set engine.output_dir to a new folder (e.g. out), or empty this one")
            self.root.mkdir(parents=True, exist_ok=True)
            with self.lock():
                if not self.marker.is_file():
                    self._write(sorted(self._adopted()))
        except OSError as err:
            raise SlimopsError(f"cannot write to the output folder {self.root}: {err.strerror or err}; "
                               "check its permissions and free space, or set engine.output_dir elsewhere") from None

    def reserve(self, dest: Path) -> None:
        """Record `dest` (a node's folder) as slimops's before writing it.

        Raises:
            SlimopsError: `dest` exists and slimops did not write it.
        """
        rel = dest.relative_to(self.root).as_posix()
        with self.lock():
            paths = self._paths()
            if rel in paths:
                return
            if dest.exists() or dest.is_symlink():
                raise SlimopsError(f"{dest} exists and slimops did not write it; move it away (slimops replaces only "
                                   "the folders it wrote) or set engine.output_dir to a new folder")
            self._write(sorted({*paths, rel}))

    # -- private ------------------------------------------------------------------------------

    def lock(self) -> FileLock:
        """The folder's lock (reentrant): held while a run writes the marker or replaces a node folder,
        so concurrent runs sharing the folder take turns, and one holding it knows no one else is copying."""
        if self._filelock is None:
            self._filelock = FileLock(str(self.root / LOCK))
        return self._filelock

    def _paths(self) -> set[str]:
        try:
            return set(json.loads(self.marker.read_text()).get("paths", []))
        except (OSError, ValueError, AttributeError):
            return set()

    def _write(self, paths: list[str]) -> None:
        tmp = self.root / f".{MARKER}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"written_by": "slimops", "paths": paths}, indent=1))
        os.replace(tmp, self.marker)

    def _previous_nodes(self) -> dict[str, dict]:
        try:
            nodes = json.loads((self.root / RUN_JSON).read_text()).get("nodes", {})
            return nodes if isinstance(nodes, dict) else {}
        except (OSError, ValueError, AttributeError):
            return {}

    def _adopted(self) -> set[str]:
        """The node folders an older run recorded in run.json."""
        found = set()
        for node_id, info in self._previous_nodes().items():
            if not isinstance(info, dict) or info.get("pass_name") == "model":
                continue
            name, _, target = str(node_id).partition("@")
            found.add(f"{target}/{name}" if target else name)
        return found


def _ours(name: str, adopted: set[str]) -> bool:
    """Whether an entry of the output folder's top level is something slimops writes there."""
    if name in RESERVED or name.startswith("."):
        return True  # run.json, reports, trials, the marker, and a run's dot-named staging and temp files
    return any(path.split("/")[0] == name for path in adopted)

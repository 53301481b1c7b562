"""The output folder: slimops replaces only what it wrote there.

A run claims its output folder before the first pass runs: a new or empty folder gets the marker
`.slimops-output.json`, which lists every node folder slimops has written into it, and a node folder
is replaced only when the marker lists it, so a user's own `out/data/` is never deleted. A folder
without the marker is adopted only when it is an older slimops output folder: its `run.json` (or a
search's `trials.json`) has slimops's shape, and everything beside it is something slimops writes
(its reports, the node folders run.json names, a killed run's staging). Any other folder is refused
(a project folder given as `engine.output_dir: .`, or one that merely holds a `report.md` and a
`model/` of the user's), naming what is in the way.

A node folder that stays is trusted by what it holds (`holds`: its names, sizes and checksums against
the cache entry's manifest, through the hash memo), never by what an older run.json says; anything
slimops removes there (`remove`) is unlinked when it is a link, never followed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from slimops.config.names import RESERVED
from slimops.errors import ConfigError, SlimopsError

if TYPE_CHECKING:
    from slimops.keys import HashMemo

MARKER = ".slimops-output.json"
LOCK = ".slimops-output.lock"
RUN_JSON = "run.json"  # what a run records, beside the node folders
TRIALS_JSON = "trials.json"  # what a search records, written before its best run claims the folder
# what a run leaves in the folder for a moment: a temp file or staging folder (`.NAME.PID.tmp`), a node
# folder set aside while its replacement is renamed in (`.NAME.PID.old`); a killed run leaves them behind
SCRATCH = re.compile(r"\.(.+)\.\d+\.(tmp|old)")


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
        self._refuse_a_file()
        try:
            if self.marker.is_file():
                return
            # checked before anything (the lock file too) is written there
            adopted = self._adoptable() if self.root.is_dir() else set()
            self.root.mkdir(parents=True, exist_ok=True)
            with self.lock():
                if not self.marker.is_file():
                    self._write(sorted(adopted))
        except OSError as err:
            raise SlimopsError(f"cannot write to the output folder {self.root}: {err.strerror or err}; "
                               "check its permissions and free space, or set engine.output_dir elsewhere") from None

    def check(self) -> None:
        """Raise what `claim` would refuse, writing nothing: validate and plan find it before a run.

        Raises:
            ConfigError: the folder is a file, or holds files slimops did not write.
        """
        self._refuse_a_file()
        if self.root.is_dir() and not self.marker.is_file():
            self._adoptable()

    def _refuse_a_file(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"the output folder {self.root} is a file; set engine.output_dir to a folder")

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

    def sweep(self, dest: Path) -> None:
        """Remove what a killed run left beside `dest`: its half copy, or the folder it set aside.

        Runs sharing the output folder take turns under its lock, so the caller, holding it, knows
        that no one else is writing beside `dest`: whatever is there, its writer was killed.
        """
        for leftover in dest.parent.glob(f".{dest.name}.*"):
            if _scratch_of(leftover.name) == dest.name:
                remove(leftover)

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

    def _adoptable(self) -> set[str]:
        """The node folders of a marker-less folder that may be adopted; raise when it may not.

        Raises:
            ConfigError: the folder is neither empty nor an older slimops output folder.
        """
        names = [p.name for p in self.root.iterdir()]
        if MARKER in names:
            return set()  # a concurrent run claimed it since the marker was looked for
        nodes = self._previous_nodes()
        adopted = _node_folders(nodes or {})
        older = nodes is not None or _shaped(self.root / TRIALS_JSON, "trials", list)
        foreign = [name for name in names if not _ours(name, adopted, older)]
        if foreign:
            shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(
                f"the output folder {self.root} holds files slimops did not write ({shown}); slimops replaces "
                "what it writes there, so set engine.output_dir to a new folder (e.g. out), or empty this one")
        return adopted

    def _previous_nodes(self) -> dict[str, dict] | None:
        """The nodes of an older run's run.json; None when there is none, or it is not slimops's."""
        try:
            nodes = json.loads((self.root / RUN_JSON).read_text()).get("nodes")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(nodes, dict) or not all(isinstance(n, dict) and isinstance(n.get("key"), str) for n in nodes.values()):
            return None
        return nodes


def _node_folders(nodes: dict[str, dict]) -> set[str]:
    """The node folders an older run recorded in run.json."""
    found = set()
    for node_id, info in nodes.items():
        if info.get("pass_name") == "model":
            continue
        name, _, target = str(node_id).partition("@")
        found.add(f"{target}/{name}" if target else name)
    return found


def _shaped(path: Path, key: str, kind: type) -> bool:
    """Whether `path` is JSON whose `key` holds a `kind`: a file slimops wrote, not one of the same name."""
    try:
        return isinstance(json.loads(path.read_text()).get(key), kind)
    except (OSError, ValueError, AttributeError):
        return False


def _ours(name: str, adopted: set[str], older: bool) -> bool:
    """Whether an entry of a marker-less output folder's top level is something slimops wrote there.

    A claim killed before its marker was written leaves the lock and the marker's temp file, in a
    folder that is otherwise empty. Only an older slimops folder (`older`) may hold the rest: what
    slimops writes by name carries no mark of its own, so a user's `report.md` or `model/` beside no
    run.json of slimops's is the user's.
    """
    if name == LOCK or _scratch_of(name) == MARKER:
        return True
    if not older:
        return False
    if name in RESERVED or _scratch_of(name):
        return True  # run.json, reports, trials, and a killed run's temp files and staging folders
    return any(path.split("/")[0] == name for path in adopted)


def scratch(dest: Path, what: str) -> Path:
    """Where this process stages `dest`'s new copy (`what` "tmp") or sets its old one aside ("old")."""
    return dest.parent / f".{dest.name}.{os.getpid()}.{what}"


def _scratch_of(name: str) -> str | None:
    """What a run's temp file or staging folder called `name` stands for (`.a.123.old` -> a), or None."""
    found = SCRATCH.fullmatch(name)
    return found.group(1) if found else None


def holds(dest: Path, source: Path, files: dict[str, dict[str, Any]], memo: HashMemo) -> bool:
    """Whether `dest` is a folder with exactly `source`'s names (folders, files, links and where they
    point) and files of the sizes and sha256 that `files` records."""
    if dest.is_symlink() or not dest.is_dir():
        return False  # a link (to a folder of the user's, say) is replaced by a folder of slimops's own
    try:
        if _tree(dest) != _tree(source):
            return False
        for rel, info in files.items():
            if (dest / rel).stat().st_size != info["size"] or memo.file(dest / rel) != info["sha256"]:
                return False
    except (OSError, KeyError, TypeError):
        return False
    return True


def _tree(root: Path) -> dict[str, str]:
    """Every name under `root` and what it is; a link is told by where it points, never followed."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in (*dirs, *names):
            path = Path(folder, name)
            what = f"link to {os.readlink(path)}" if path.is_symlink() else "folder" if name in dirs else "file"
            found[path.relative_to(root).as_posix()] = what
    return found


def remove(path: Path) -> None:
    """Delete what slimops left at `path`; a link is unlinked, never followed (rmtree refuses a link)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)

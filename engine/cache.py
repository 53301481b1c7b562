"""The content-addressed cache of every node's artifact.

Layout under the cache folder:

    entries/<key>/manifest.json   what made it: pass, params, inputs, data, target, libraries, timings
    entries/<key>/artifact/       the pass's output folder
    tmp/<key>.<pid>.<n>/          an entry being written; renamed into entries/ only when complete
    work/<key>/                   checkpoints of an unfinished node, kept across killed attempts
    locks/<key>.lock              one writer per key; a second run waits, then reuses the entry
    logs/                         logs of failed attempts
    damaged/<key>.*/              entries found damaged when a run wanted them, set aside and rebuilt
    hashes.json                   memo of file hashes
    .slimops-cache                the marker: a folder without it is adopted only when empty, or a cache from before it

A killed run leaves at most a folder in tmp/ (removed by the next run or `slimops cache gc`),
never a half entry: an entry exists only once its rename has happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from slimops.errors import CacheError
from slimops.keys import HashMemo, sha256_file, shared_memo_path

MANIFEST = "manifest.json"
ARTIFACT = "artifact"
MARKER = ".slimops-cache"  # in the cache folder: `gc` and `clear` act only on a folder that has it
MARKER_TEXT = "a slimops cache: `slimops cache gc|clear` manage it\n"
KNOWN = {"entries", "tmp", "work", "locks", "logs", "damaged", "hashes.json", MARKER}  # and hashes.json.*.tmp
TRASH = "trash-"  # a folder being deleted is renamed to trash-* first, so a killed delete blocks nothing


def manifest_problem(manifest: Any) -> str | None:
    """What keeps a parsed manifest from being used (a field slimops reads is missing or of another
    type than slimops writes), or None. The one home of a manifest's shape: a local hit, a fetch and
    the remote's verify all ask it, so a hand-edited manifest is a damaged entry, never a crash."""
    if not isinstance(manifest, dict):
        return "its manifest is incomplete (not a JSON object)"
    artifact, files = manifest.get("artifact"), manifest.get("files")
    for name, value in (("artifact", artifact), ("files", files)):
        if not isinstance(value, dict):
            return f"its manifest is incomplete (no {name})" if value is None else f"its manifest is malformed ({name} is not a mapping)"
    for field in ("path", "kind"):
        if not isinstance(artifact.get(field), str):
            return (f"its manifest is incomplete (no artifact.{field})" if artifact.get(field) is None
                    else f"its manifest is malformed (artifact.{field} is not text)")
    for field in ("meta", "metrics"):
        if field in artifact and not isinstance(artifact[field], dict):
            return f"its manifest is malformed (artifact.{field} is not a mapping)"
    for rel, info in files.items():
        if not isinstance(info, dict) or type(info.get("size")) is not int or not isinstance(info.get("sha256"), str):
            return f"its manifest is malformed (files.{rel} is not a size and a sha256)"
    return None


ADOPT = "set engine.cache_dir (or --cache-dir) to an empty folder or to the cache folder itself"


@dataclass
class Entry:
    key: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def artifact_path(self) -> Path:
        return self.dir / self.manifest["artifact"]["path"]


def names_itself(entry: Entry) -> bool:
    """Whether an entry's manifest names the key it is filed under: the proof that a folder without the
    marker is a cache made before the marker existed (a user's own tmp/ or logs/ proves nothing)."""
    return entry.manifest.get("key") == entry.key


class Cache:
    """One cache folder; safe to share between concurrent runs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"
        self.memo = HashMemo(self.root / "hashes.json", shared_memo_path())

    # -- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self._read(key)

    def _read(self, key: str) -> Entry | None:
        """The entry in this folder (a remote cache's local copy; `get` may fetch, this never does).

        Raises:
            CacheError: the key's folder is there without a readable manifest (a run sets it aside).
        """
        manifest, problem = self.read_manifest(key)
        if problem:
            raise CacheError(f"cache entry {key[:12]}: {problem}; run 'slimops cache gc'")
        return None if manifest is None else Entry(key, self.entries_dir / key, manifest)

    def read_manifest(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """The manifest in key's folder, or what is wrong with it; (None, None) when there is no folder.

        A folder without a manifest is damage, never an entry being written: entries are renamed into
        place with their manifest, and renamed away whole.
        """
        directory = self.entries_dir / key
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            return None, ("its manifest is missing" if os.path.lexists(directory) else None)
        except (OSError, ValueError) as err:
            return None, f"its manifest is unreadable ({err})"
        if not isinstance(manifest, dict):
            return None, "its manifest is unreadable (not a JSON object)"
        return manifest, None

    def has(self, key: str) -> bool:
        """Whether an entry for `key` exists (nothing is read or fetched; `get` checks it)."""
        return (self.entries_dir / key / MANIFEST).is_file()

    def entries(self) -> list[Entry]:
        return self._folder_entries()

    def _folder_entries(self) -> list[Entry]:
        found = []
        if not self.entries_dir.is_dir():
            return found
        for directory in sorted(self.entries_dir.iterdir()):
            try:
                entry = self._read(directory.name)
            except CacheError:
                continue
            if entry is not None:
                found.append(entry)
        return found

    def find(self, prefix: str) -> Entry:
        """The one entry whose key starts with `prefix` (hex digits; never a glob).

        Raises:
            CacheError: `prefix` is not hex, or no entry or several start with it.
        """
        if not prefix or any(c not in "0123456789abcdef" for c in prefix.lower()):
            raise CacheError(f"'{prefix}' is not a key prefix: keys are hex digits (0-9, a-f); copy one from 'slimops cache ls'")
        prefix = prefix.lower()
        matches = [name for name in self._keys() if name.startswith(prefix)]
        if len(matches) > 1:
            raise CacheError(f"{len(matches)} cache entries start with '{prefix}' ({', '.join(m[:12] for m in matches[:4])}"
                             f"{', ...' if len(matches) > 4 else ''}); give more of the key")
        if not matches:
            raise CacheError(f"no cache entry starts with '{prefix}' in {self.location}; see 'slimops cache ls' (or pass --config or --cache-dir)")
        entry = self._peek(matches[0])
        if entry is None:
            raise CacheError(f"cache entry {prefix}: its manifest is missing; run 'slimops cache gc'")
        return entry

    def _keys(self) -> list[str]:
        return sorted(d.name for d in self.entries_dir.iterdir()) if self.entries_dir.is_dir() else []

    def _peek(self, key: str) -> Entry | None:
        """The entry's manifest, for showing it (a remote cache downloads nothing else)."""
        return self.get(key)

    @property
    def location(self) -> str:
        """Where the cache is, for messages: its folder (a remote cache: its URL)."""
        return str(self.root)

    def touch(self, entry: Entry) -> None:
        try:
            os.utime(entry.dir / MANIFEST)
        except OSError:
            pass

    # -- ownership ----------------------------------------------------------------------------

    def claim(self) -> None:
        """Create the cache folder, or adopt it, for a run; refuse a folder that is not a cache.

        Raises:
            CacheError: the folder is a file, holds files that are not a cache's, or cannot be written.
        """
        try:
            if self.root.exists() and not self.root.is_dir():
                raise CacheError(f"the cache folder {self.root} is a file; set engine.cache_dir to a folder")
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / MARKER).is_file():
                self._check_unmarked()
                (self.root / MARKER).write_text(MARKER_TEXT)
            for leftover in self.root.glob("hashes.json.*.tmp"):  # a killed run's memo, not one being written now
                if time.time() - leftover.stat().st_mtime > 60:
                    leftover.unlink(missing_ok=True)
        except OSError as err:
            raise CacheError(f"cannot write to the cache folder {self.root}: {err.strerror or err}; "
                             "check its permissions and free space, or set engine.cache_dir elsewhere") from None

    def _check_owned(self, action: str) -> None:
        """Raise unless the folder is a cache: it has the marker, or passes `_check_unmarked`."""
        root = self.root.resolve()
        if root in (Path(root.anchor), Path.home().resolve()):
            raise CacheError(f"refusing to {action} {root}: it is not a cache folder of its own")
        if not root.is_dir():
            raise CacheError(f"no cache at {root}; nothing to {action}")
        if not (root / MARKER).is_file():
            self._check_unmarked(action)

    def _check_unmarked(self, action: str = "use") -> None:
        """Raise unless a folder without the marker is empty (planning may have written its hash memo)
        or a cache made before the marker: nothing but a cache's names, and an entry that names itself.
        Names alone prove nothing: tmp/, logs/ and work/ are as likely a user's own, and gc deletes them."""
        names = sorted(p.name for p in self.root.iterdir())
        if MARKER in names or all(name.startswith("hashes.json") for name in names):  # MARKER: a concurrent run claimed it
            return
        foreign = [name for name in names if name not in KNOWN and not name.startswith((TRASH, "hashes.json."))]
        shown = ", ".join((foreign or names)[:5]) + (", ..." if len(foreign or names) > 5 else "")
        if foreign:
            raise CacheError(f"refusing to {action} {self.root}: it holds files that are not a slimops cache's ({shown}); {ADOPT}")
        if any(names_itself(entry) for entry in self._folder_entries()):
            return
        raise CacheError(f"refusing to {action} {self.root}: it has no {MARKER} marker and no cache entry, so its {shown} "
                         f"may be someone else's; {ADOPT}")

    def _delete(self, path: Path) -> None:
        """Rename `path` aside, then delete it: a delete killed half-way leaves a trash-* folder, never a half entry."""
        aside = self.root / f"{TRASH}{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    # -- writing ------------------------------------------------------------------------------

    def lock(self, key: str) -> FileLock:
        return FileLock(str(self._locks() / f"{key}.lock"))

    def _locks(self) -> Path:
        """locks/, made on first use. A cache folder made here is marked at once: a remote cache's
        copies folder gets its first locks from a verify or gc, before any run has claimed it."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / MARKER).write_text(MARKER_TEXT)
        (self.root / "locks").mkdir(exist_ok=True)
        return self.root / "locks"

    def work_dir(self, key: str) -> Path:
        path = self.root / "work" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def begin(self, key: str) -> Path:
        """A fresh temporary entry folder for `key`, with an empty `artifact/` inside."""
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = tmp_root / f"{key}.{os.getpid()}.{n}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        (path / ARTIFACT).mkdir()
        return path

    def publish(self, key: str, tmp: Path, manifest: dict[str, Any]) -> Entry:
        """Checksum the files of `tmp`, write its manifest, and rename it into place."""
        files = {}
        total = 0
        for file in sorted(p for p in (tmp / ARTIFACT).rglob("*") if p.is_file()):
            size = file.stat().st_size
            total += size
            files[file.relative_to(tmp).as_posix()] = {"size": size, "sha256": sha256_file(file)}
        manifest = {**manifest, "files": files, "size_bytes": total}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        self._place(key, tmp, "publish cache entry")
        shutil.rmtree(self.root / "work" / key, ignore_errors=True)
        entry = self.get(key)
        assert entry is not None
        for rel, info in files.items():  # the hashes are known: a later hit checks them from the memo
            try:
                self.memo.remember(entry.dir / rel, info["sha256"])
            except OSError:
                pass
        return entry

    def _place(self, key: str, tmp: Path, what: str) -> None:
        """Rename a complete entry folder into entries/<key>, under the key's lock. A folder already there
        without a manifest is damage (set aside, and the rename tried again); one with a manifest is
        another run's entry of the same key, which stays (`tmp` is removed).

        Raises:
            CacheError: the rename fails for another reason.
        """
        final = self.entries_dir / key
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                os.rename(tmp, final)
                return
            except OSError:
                if (final / MANIFEST).is_file():  # another run published the same key first
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                if attempt == 0 and os.path.lexists(final):
                    self.set_aside(Entry(key, final, {}))
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"cannot {what} {key[:12]} into {final}; check that folder's permissions, "
                         "or run 'slimops cache gc' and run again")

    def check(self, entry: Entry, rehash: bool = False) -> str | None:
        """What is wrong with an entry before it is used (its manifest's shape, sizes, then checksums), or None.

        A hit stays cheap: the hash memo answers for a file whose size, mtime and inode are unchanged.
        `rehash` reads every file instead (`verify`: a byte changed in place, its mtime put back, is
        found only so), and corrects the memo, so a later hit and `gc` agree with what it found.
        """
        problem = manifest_problem(entry.manifest)
        if problem:
            return problem
        artifact, files = entry.manifest["artifact"], entry.manifest["files"]
        root = entry.dir.resolve()
        for rel in (artifact["path"], *files):
            if not (entry.dir / rel).resolve().is_relative_to(root):
                return f"its manifest names a path outside the entry ({rel})"
        if not os.path.lexists(entry.dir / artifact["path"]):
            return f"its artifact ({artifact['path']}) is missing"
        listed = set(files)
        present = {p.relative_to(entry.dir).as_posix() for p in (entry.dir / ARTIFACT).rglob("*") if p.is_file() or p.is_symlink()}
        if present - listed:
            return f"it holds a file its manifest does not list ({sorted(present - listed)[0]})"
        for rel, info in files.items():
            file = entry.dir / rel
            try:
                if not file.is_file():
                    return f"{rel} is missing"
                if file.stat().st_size != info["size"]:
                    return f"{rel} changed size"
                if rehash:
                    self.memo.remember(file, sha256_file(file))
                if self.memo.file(file) != info["sha256"]:
                    return f"{rel} changed"
            except OSError as err:
                return f"{rel} is unreadable ({err.strerror or err})"
        return None

    def set_aside(self, entry: Entry) -> Path:
        """Move a damaged entry out of the way (kept under damaged/ for a look; `gc` removes it)."""
        aside = self.root / "damaged" / f"{entry.key}.{os.getpid()}.{time.monotonic_ns()}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry.dir, aside)
        except FileNotFoundError:  # a concurrent run set it aside first
            pass
        return aside

    def abandon(self, tmp: Path, work: Path | None = None) -> None:
        """Remove a failed attempt's staged entry, and its work folder if it holds no checkpoint to resume from."""
        shutil.rmtree(tmp, ignore_errors=True)
        if work is not None:
            with contextlib.suppress(OSError):
                work.rmdir()  # only when empty

    # -- maintenance --------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Problems found, one line per damaged entry, each saying what `gc` will do about it.
        Every file is read and hashed (the memo is corrected, not trusted)."""
        problems = []
        if not self.entries_dir.is_dir():
            return problems
        for directory in sorted(self.entries_dir.iterdir()):
            manifest, problem = self.read_manifest(directory.name)
            if manifest is not None:
                problem = self.check(Entry(directory.name, directory, manifest), rehash=True)
            if problem:
                node = manifest.get("node") if manifest is not None else None
                problems.append(f"{directory.name[:12]} {node if isinstance(node, str) else '?'}: {problem}; "
                                "gc removes it, and a run rebuilds it")
        with contextlib.suppress(OSError):  # a read-only cache is still verified
            self.memo.save()
        return problems

    def gc(self, older_than_days: float | None = None) -> dict[str, int]:
        """Remove leftovers of killed runs, and entries unused for `older_than_days`.

        Raises:
            CacheError: the folder is not a slimops cache.
        """
        self._check_owned("clean")
        for trash in self.root.glob(f"{TRASH}*"):
            shutil.rmtree(trash, ignore_errors=True)
        removed = {"tmp": 0, "work": 0, "entries": 0, "damaged": 0}
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        for damaged in (self.root / "damaged").glob("*"):
            self._delete(damaged)
            removed["damaged"] += 1
        if self.entries_dir.is_dir():  # broken entries go too: gc leaves only what a run would use
            for directory in list(self.entries_dir.iterdir()):
                try:
                    entry = self._read(directory.name)
                except CacheError:
                    entry = None
                if entry is None or self.check(entry):
                    self._delete(directory)
                    removed["damaged"] += 1
        for folder in ("tmp", "work"):
            base = self.root / folder
            if not base.is_dir():
                continue
            for path in base.iterdir():
                key = path.name.split(".")[0]
                lock = self.lock(key)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # a live run is writing it
                try:  # checkpoints go only when none was written within the age: a killed run resumes from them
                    if folder == "tmp" or (cutoff is not None and _newest_mtime(path) < cutoff):
                        shutil.rmtree(path, ignore_errors=True)
                        removed[folder] += 1
                finally:
                    lock.release()
        if cutoff is not None:
            for entry in self._folder_entries():
                if (entry.dir / MANIFEST).stat().st_mtime >= cutoff:
                    continue
                lock = self.lock(entry.key)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # a live run holds it
                try:
                    self._delete(entry.dir)
                    removed["entries"] += 1
                finally:
                    lock.release()
        return removed

    def remove_stale_tmp(self) -> None:
        """Remove temporary folders whose writer is gone.

        A writer holds its key's lock while it writes, and the kernel drops the lock when the process
        dies; so a free lock means a dead writer, whatever its PID (PIDs are reused, and a run in
        another container sees other PIDs).
        """
        if (self.root / "work").is_dir():  # checkpoints of a node that was published after all
            for path in (self.root / "work").iterdir():
                if (self.entries_dir / path.name / MANIFEST).is_file():
                    shutil.rmtree(path, ignore_errors=True)
        base = self.root / "tmp"
        if not base.is_dir():
            return
        for path in base.iterdir():
            lock = self.lock(path.name.split(".")[0])
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a live run is writing it
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                lock.release()

    def clear(self) -> int:
        """Remove every entry, leftover and log; the number of entries removed.

        Raises:
            CacheError: the folder is not a slimops cache.
        """
        self._check_owned("clear")
        count = len(self._folder_entries())
        for folder in ("entries", "tmp", "work", "logs", "damaged"):
            self._delete(self.root / folder)
        for trash in self.root.glob(f"{TRASH}*"):
            shutil.rmtree(trash, ignore_errors=True)
        (self.root / "hashes.json").unlink(missing_ok=True)
        return count


def _newest_mtime(path: Path) -> float:
    """When anything in `path` (itself included) was last modified."""
    newest = path.lstat().st_mtime
    for folder, subfolders, files in os.walk(path):
        for name in (*subfolders, *files):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest

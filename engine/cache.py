"""The content-addressed cache of every node's artifact.

Layout under the cache folder:

    entries/<key>/manifest.json   what made it: pass, params, inputs, data, target, libraries, timings
    entries/<key>/artifact/       the pass's output folder
    tmp/<key>.<pid>.<n>/          an entry being written; renamed into entries/ only when complete
    work/<key>/                   checkpoints of an unfinished node, kept across killed attempts
    locks/<key>.lock              one writer per key; a second run waits, then reuses the entry
    logs/                         logs of failed attempts
    hashes.json                   memo of file hashes

A killed run leaves at most a folder in tmp/ (removed by the next run or `slimops cache gc`),
never a half entry: an entry exists only once its rename has happened.
"""

from __future__ import annotations

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


@dataclass
class Entry:
    key: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def artifact_path(self) -> Path:
        return self.dir / self.manifest["artifact"]["path"]


class Cache:
    """One cache folder; safe to share between concurrent runs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"
        self.memo = HashMemo(self.root / "hashes.json", shared_memo_path())

    # -- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        directory = self.entries_dir / key
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise CacheError(f"cache entry {key[:12]} is unreadable ({err}); run 'slimops cache verify'") from None
        return Entry(key, directory, manifest)

    def entries(self) -> list[Entry]:
        found = []
        if not self.entries_dir.is_dir():
            return found
        for directory in sorted(self.entries_dir.iterdir()):
            try:
                entry = self.get(directory.name)
            except CacheError:
                continue
            if entry is not None:
                found.append(entry)
        return found

    def find(self, prefix: str) -> Entry:
        matches = [d.name for d in self.entries_dir.glob(f"{prefix}*")] if self.entries_dir.is_dir() else []
        if len(matches) != 1:
            raise CacheError(f"{'no' if not matches else 'more than one'} cache entry starts with '{prefix}'; see 'slimops cache ls'")
        entry = self.get(matches[0])
        if entry is None:
            raise CacheError(f"cache entry {prefix} has no manifest; run 'slimops cache gc'")
        return entry

    def touch(self, entry: Entry) -> None:
        try:
            os.utime(entry.dir / MANIFEST)
        except OSError:
            pass

    # -- writing ------------------------------------------------------------------------------

    def lock(self, key: str) -> FileLock:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

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
        final = self.entries_dir / key
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / MANIFEST).is_file():  # another run published the same key first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise CacheError(f"cannot publish cache entry {key[:12]} into {final}") from None
        shutil.rmtree(self.root / "work" / key, ignore_errors=True)
        entry = self.get(key)
        assert entry is not None
        return entry

    def abandon(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- maintenance --------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Problems found: missing, resized or changed files in any entry."""
        problems = []
        if not self.entries_dir.is_dir():
            return problems
        for directory in sorted(self.entries_dir.iterdir()):
            try:
                entry = self.get(directory.name)
            except CacheError as err:
                problems.append(str(err))
                continue
            if entry is None:
                problems.append(f"{directory.name[:12]}: no manifest")
                continue
            for rel, info in entry.manifest.get("files", {}).items():
                file = entry.dir / rel
                if not file.is_file():
                    problems.append(f"{entry.key[:12]} {entry.manifest.get('node')}: missing {rel}")
                elif file.stat().st_size != info["size"] or sha256_file(file) != info["sha256"]:
                    problems.append(f"{entry.key[:12]} {entry.manifest.get('node')}: {rel} changed")
        return problems

    def gc(self, older_than_days: float | None = None) -> dict[str, int]:
        """Remove leftovers of killed runs, and entries unused for `older_than_days`."""
        removed = {"tmp": 0, "work": 0, "entries": 0}
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
                try:
                    if folder == "tmp" or older_than_days is not None:
                        shutil.rmtree(path, ignore_errors=True)
                        removed[folder] += 1
                finally:
                    lock.release()
        if older_than_days is not None:
            cutoff = time.time() - older_than_days * 86400
            for entry in self.entries():
                if (entry.dir / MANIFEST).stat().st_mtime < cutoff:
                    shutil.rmtree(entry.dir, ignore_errors=True)
                    removed["entries"] += 1
        return removed

    def remove_stale_tmp(self) -> None:
        """Remove temporary folders whose writing process is gone."""
        base = self.root / "tmp"
        if not base.is_dir():
            return
        for path in base.iterdir():
            parts = path.name.split(".")
            if len(parts) == 3 and parts[1].isdigit() and not process_alive(int(parts[1])):
                shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> int:
        count = len(self.entries())
        for folder in ("entries", "tmp", "work", "logs"):
            shutil.rmtree(self.root / folder, ignore_errors=True)
        (self.root / "hashes.json").unlink(missing_ok=True)
        return count


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

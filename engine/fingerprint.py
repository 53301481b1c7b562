"""Content hashes of files and folders, memoised by (path, size, mtime, inode).

A large model is read once; later runs find its hash from `os.stat` alone. The memo lives in
the cache folder (`hashes.json`) and is only a shortcut: keys hold content, never paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def canonical(value: Any) -> str:
    """Stable JSON text of a value, for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class HashMemo:
    """File hashes remembered across runs in one JSON file."""

    def __init__(self, store: Path | None):
        self.store = store
        self.changed = False
        self.memo: dict[str, str] = {}
        if store is not None and store.is_file():
            try:
                self.memo = json.loads(store.read_text())
            except (OSError, ValueError):
                self.memo = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        token = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
        found = self.memo.get(token)
        if found is None:
            found = self.memo[token] = sha256_file(path)
            self.changed = True
        return found

    def path(self, path: Path) -> str:
        """Hash of a file's bytes, or of a folder's relative names and file bytes."""
        if path.is_file():
            return self.file(path)
        entries = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            entries.append((file.relative_to(path).as_posix(), self.file(file)))
        return sha256_text(canonical(entries))

    def save(self) -> None:
        if not self.changed or self.store is None:
            return
        self.store.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.store.with_name(f"{self.store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.memo))
        os.replace(tmp, self.store)
        self.changed = False

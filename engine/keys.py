"""Cache keys: content hashes of files and folders, and the key of a plan's node.

- `node_key(plan, node)`: a node's key, the sha256 of `key_parts` (pass, version, params,
  inputs' keys, data fingerprints, target fields, library versions); `slimops plan --explain`
  compares those parts field by field.
- `data_fingerprint(config, memo, name)`: a data set's settings and the contents of its files.
- `HashMemo`, `sha256_file`, `canonical`: file hashes, memoised by (path, size, mtime, inode).

A large model is read once; later runs find its hash from `os.stat` alone. The memo lives in
the cache folder (`hashes.json`) and, shared by every cache of this user, in
`~/.cache/slimops/file-hashes.json` (`$SLIMOPS_HASH_MEMO`, or under `$XDG_CACHE_HOME`): a new
cache folder does not read a 500 MB model again. It is only a shortcut: keys hold content,
never paths.
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


SHARED_ENTRIES = 20000  # the shared memo keeps the newest entries


def shared_memo_path() -> Path:
    """Where the user's shared memo of file hashes lives."""
    explicit = os.environ.get("SLIMOPS_HASH_MEMO")
    if explicit:
        return Path(explicit)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "slimops" / "file-hashes.json"


def _read(store: Path | None) -> dict[str, str]:
    if store is None or not store.is_file():
        return {}
    try:
        found = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class HashMemo:
    """File hashes remembered across runs: the cache's own JSON file, then the user's shared one."""

    def __init__(self, store: Path | None, shared: Path | None = None):
        self.store = store
        self.shared = shared
        self.changed = False
        self.memo: dict[str, str] = {**_read(shared), **_read(store)}

    @staticmethod
    def _token(path: Path) -> str:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"

    def file(self, path: Path) -> str:
        token = self._token(path)
        found = self.memo.get(token)
        if found is None:
            found = self.memo[token] = sha256_file(path)
            self.changed = True
        return found

    def remember(self, path: Path, sha256: str) -> None:
        """Record a hash already computed for `path` (a file just published), so checking it later is cheap."""
        self.memo[self._token(path)] = sha256
        self.changed = True

    def path(self, path: Path) -> str:
        """Hash of a file's bytes, or of a folder's relative names and file bytes."""
        if path.is_file():
            return self.file(path)
        entries = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            entries.append((file.relative_to(path).as_posix(), self.file(file)))
        return sha256_text(canonical(entries))

    def save(self) -> None:
        if not self.changed:
            return
        if self.store is not None:
            _write(self.store, self.memo)
        if self.shared is not None:
            merged = {**_read(self.shared), **self.memo}
            try:  # best effort: a read-only home only costs a re-read next time
                _write(self.shared, dict(list(merged.items())[-SHARED_ENTRIES:]))
            except OSError:
                pass
        self.changed = False


def _write(store: Path, memo: dict[str, str]) -> None:
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    try:
        os.replace(tmp, store)
    except FileNotFoundError:  # taken for a killed run's leftover by another run: the memo is only a shortcut
        pass


def data_fingerprint(config, memo: "HashMemo", name: str) -> str:
    """Hash of a data set's settings and the contents of its files."""
    data = config.spec.data[name]
    files = {file: memo.path(config.base_dir / file) for file in data.file_list()}
    return sha256_text(canonical({"spec": data.model_dump(mode="json", exclude={"files"}), "files": files}))


def node_key(plan, node) -> None:
    """Set `node.parts` and `node.key` (a plan's nodes in topological order: inputs first)."""
    if node.source is not None:
        content = plan.cache.memo.path(Path(node.source.path))
        node.parts = {"source": content, "kind": node.kind}
        task = node.source.meta.get("task")
        if task and task != "text-generation":  # passes read it (a classifier trains another model); the default keeps older keys
            node.parts["task"] = task
        node.key = sha256_text(canonical(node.parts))
        return
    pc = node.config
    assert pc is not None
    cls = pc.cls
    data = {}
    for field_name in cls.data_fields:
        value = getattr(pc.params, field_name, None)
        if isinstance(value, str) and value in plan.config.spec.data:
            data[field_name] = data_fingerprint(plan.config, plan.cache.memo, value)
    node.parts = key_parts(
        cls, pc.params.model_dump(mode="json", exclude=set(cls.unkeyed)),
        {plan.nodes[i].name: plan.nodes[i].key for i in node.inputs},
        data, node.target.fields_for_key() if cls.per_target else None, node.parts.get("libraries", {}),
    )
    machine = cls().choices(pc.params)
    if machine:  # only passes that choose something carry it: every other key stays as it was
        node.parts["machine"] = machine
    node.key = sha256_text(canonical(node.parts))


def key_parts(cls, params: dict, inputs: dict[str, str], data: dict[str, str], target: dict | None, libraries: dict[str, str]) -> dict[str, Any]:
    """What a node's key is made of; `slimops plan --explain` compares these field by field."""
    return {
        "pass": cls.name,
        "version": cls.version,
        "params": params,
        "inputs": inputs,
        "data": data,
        "target": target,
        "libraries": libraries,
    }

"""The cache shared by machines: entries at an fsspec URL, a local copy of each on the machine using it.

Remote layout (the local one, less what stays on each machine):

    <url>/.slimops-cache                     the marker: `gc` and `clear` act only on a prefix that has it
    <url>/entries/<key>/artifact/...         an entry's files, uploaded first
    <url>/entries/<key>/manifest.json        written last, only if absent: the commit
    <url>/entries/<key>/used                 touched when a machine fetches or reuses it (for gc --older-than)
    <url>/locks/<key>.lock                   a lease: one builder of a key at a time, on any machine

An entry without a manifest is absent (its publisher was killed, or is still uploading). A fetch
checks every file's size and sha256 against the manifest before it renames the copy into place.
The remote is reached only inside these methods: fsspec and s3fs are imported when a URL is opened.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from slimops.cache import ARTIFACT, MANIFEST, MARKER, MARKER_TEXT, Cache, Entry, manifest_problem, names_itself
from slimops.errors import CacheError
from slimops.keys import sha256_file
from slimops.lease import LeaseLock, create_object, expired, read_lease, replace_object

REMOTE_KNOWN = {"entries", "locks", MARKER}
USED = "used"


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("updated", 0)))
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


class RemoteCache(Cache):
    """A cache at a URL; `root` is this machine's folder of local copies (the local cache layout).

    Args:
        url: the fsspec URL of the shared cache (for messages).
        fs, path: its fsspec filesystem and the path in it (`slimops.storage.filesystem(url)`).
        local_dir: this machine's copies; passes read their inputs from here.
        local_gb: the copies' size bound; the least recently used go first, never one in use.
        lease_s: how long a builder's lock outlives its last renewal (a lost machine's node waits this long).
    """

    def __init__(self, url: str, fs: Any, path: str, local_dir: Path, local_gb: float = 20.0, lease_s: float = 60.0):
        super().__init__(Path(local_dir))
        self.url = url.rstrip("/")
        self.fs, self.rpath = fs, path.rstrip("/") or path
        self.local_gb = local_gb
        self.lease_s = lease_s
        self._damaged: dict[str, tuple[str, bytes]] = {}  # a failed fetch's folder -> (problem, remote manifest)
        self._pins: dict[str, FileLock] = {}  # local copies this process uses: never evicted under it

    @property
    def location(self) -> str:
        return self.url

    def __getstate__(self) -> dict[str, Any]:  # sent to another process (a Ray task): its pins are its own
        return {**self.__dict__, "_pins": {}, "_damaged": {}}

    def _r(self, *parts: str) -> str:
        return "/".join([self.rpath, *parts])

    def _rm(self, paths: list[str]) -> None:
        if paths:
            self.fs.rm(paths)

    def _unreachable(self, action: str, err: BaseException) -> CacheError:
        if isinstance(err, CacheError):
            return err
        if isinstance(err, FileNotFoundError) and self.url.startswith("file:"):
            why = "a file or folder vanished under it; check that the shared folder is mounted"
        elif isinstance(err, FileNotFoundError):
            why = "its bucket does not exist (or these credentials cannot see it); create it, or set engine.cache_dir to one that does"
        elif isinstance(err, PermissionError):
            why = "access denied; check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
        else:
            why = "check the network, the credentials, and AWS_ENDPOINT_URL for an S3-compatible store"
        return CacheError(f"cannot {action} the cache at {self.url} ({type(err).__name__}: {err}); {why}")

    # -- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The local copy of `key`, fetched from the remote if needed; None when no manifest is there.

        A fetched copy that does not match its manifest is returned as is, and `check()` says why
        (the scheduler then sets it aside and rebuilds it).

        Raises:
            CacheError: the remote cannot be reached, or the local copy's manifest is unreadable.
        """
        with self._pin_mutex(key):
            entry = super().get(key)
            if entry is not None:
                self._pin(key)
                return entry
        try:
            raw = self.fs.cat_file(self._r("entries", key, MANIFEST))
        except FileNotFoundError:
            return None
        except Exception as err:
            raise self._unreachable("read", err) from None
        return self._fetch(key, raw)

    def has(self, key: str) -> bool:
        if super().has(key):
            return True
        try:
            return self.fs.exists(self._r("entries", key, MANIFEST))
        except Exception as err:
            raise self._unreachable("read", err) from None

    def _fetch(self, key: str, raw: bytes) -> Entry:
        try:
            manifest = json.loads(raw)
        except ValueError:
            manifest = None
        tmp = self.begin(key)
        hashes: dict[str, str] = {}
        try:
            problem = self._download(key, manifest, tmp, hashes)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, Exception):
                raise self._unreachable("fetch from", err) from None
            raise
        if problem:
            self._damaged[str(tmp)] = (problem, raw)
            return Entry(key, tmp, manifest if isinstance(manifest, dict) else {})
        (tmp / MANIFEST).write_bytes(raw)
        final = self.entries_dir / key
        with self._pin_mutex(key):
            self._place(key, tmp, "place the fetched cache entry")
            self._pin(key)  # before the mutex goes: no eviction between the rename and the pin
        for rel, digest in hashes.items():  # a hit checks these from the memo, without reading the files again
            try:
                self.memo.remember(final / rel, digest)
            except OSError:
                pass
        self._stamp_used(key)
        self._evict(keep=key)
        entry = super().get(key)
        assert entry is not None
        return entry

    def _download(self, key: str, manifest: Any, tmp: Path, hashes: dict[str, str]) -> str | None:
        """Fetch the manifest's files into `tmp`, checking each; what is wrong, or None."""
        if problem := manifest_problem(manifest):
            return problem
        root = tmp.resolve()
        for rel, info in manifest["files"].items():
            dest = tmp / rel
            if not rel.startswith(f"{ARTIFACT}/") or not dest.resolve().is_relative_to(root):
                return f"its manifest names a path outside the entry ({rel})"
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fs.get_file(self._r("entries", key, rel), str(dest))
            except FileNotFoundError:
                return f"{rel} is missing"
            if dest.stat().st_size != info["size"]:
                return f"{rel} changed size"
            hashes[rel] = sha256_file(dest)
            if hashes[rel] != info["sha256"]:
                return f"{rel} changed"
        return None

    def check(self, entry: Entry, rehash: bool = False) -> str | None:
        damaged = self._damaged.get(str(entry.dir))
        return damaged[0] if damaged else super().check(entry, rehash)

    def entries(self) -> list[Entry]:
        """Every remote entry with a readable manifest (nothing is downloaded but the manifests)."""
        keys = sorted(key for key, files in self._index().items() if MANIFEST in files)
        try:
            raws = self.fs.cat([self._r("entries", key, MANIFEST) for key in keys], on_error="omit") if keys else {}
        except Exception as err:
            raise self._unreachable("list", err) from None
        found = []
        for key in keys:
            raw = raws.get(self._r("entries", key, MANIFEST))
            try:
                manifest = json.loads(raw) if raw is not None else None
            except ValueError:
                manifest = None
            if isinstance(manifest, dict):
                found.append(Entry(key, self.entries_dir / key, manifest))
        return found

    def _keys(self) -> list[str]:
        return sorted(self._index())

    def _peek(self, key: str) -> Entry | None:
        try:
            return Entry(key, self.entries_dir / key, json.loads(self.fs.cat_file(self._r("entries", key, MANIFEST))))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise CacheError(f"cache entry {key[:12]} has an unreadable manifest ({err}); run 'slimops cache gc'") from None
        except Exception as err:
            raise self._unreachable("read", err) from None

    def _index(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Remote entries by key: each file's path in the entry -> its listing (size, modified time)."""
        prefix = self._r("entries") + "/"
        try:
            listing = self.fs.find(self._r("entries"), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as err:
            raise self._unreachable("list", err) from None
        index: dict[str, dict[str, dict[str, Any]]] = {}
        for path, info in listing.items():
            if path.startswith(prefix) and "/" in path[len(prefix):] and not path.endswith(".tmp"):
                key, rel = path[len(prefix):].split("/", 1)
                index.setdefault(key, {})[rel] = info
        return index

    def touch(self, entry: Entry) -> None:
        try:
            stale = time.time() - (entry.dir / MANIFEST).stat().st_mtime > 86400
        except OSError:
            stale = False
        super().touch(entry)
        if stale:
            self._stamp_used(entry.key)

    def _stamp_used(self, key: str) -> None:
        try:
            replace_object(self.fs, self._r("entries", key, USED), b"")
        except Exception:  # only gc --older-than reads it
            pass

    # -- local copies: pinned while used, least recently used evicted past local_gb --------------

    def _pin_mutex(self, key: str) -> FileLock:
        return FileLock(str(self._locks() / f"{key}.pin"))

    def _pin(self, key: str) -> None:
        """Hold a lock of this process's own on the copy: an evicting run sees it taken, and skips it."""
        if key not in self._pins:
            pin = FileLock(str(self.root / "locks" / f"{key}.use.{os.getpid()}.{uuid.uuid4().hex[:8]}"))
            pin.acquire()
            self._pins[key] = pin

    def _in_use(self, key: str) -> bool:
        """Whether a live process holds a pin on the copy (a dead one's pins are free, and removed)."""
        used = False
        for path in (self.root / "locks").glob(f"{key}.use.*"):
            probe = FileLock(str(path))
            try:
                probe.acquire(timeout=0)
            except (Timeout, RuntimeError):  # RuntimeError: this process's own pin, in this thread
                used = True
                continue
            probe.release()
            path.unlink(missing_ok=True)
        return used

    def _evict(self, keep: str) -> None:
        copies = []
        for directory in self.entries_dir.iterdir() if self.entries_dir.is_dir() else []:
            try:
                stat = (directory / MANIFEST).stat()
                size = json.loads((directory / MANIFEST).read_text()).get("size_bytes", 0)
            except (OSError, ValueError, AttributeError):
                continue
            copies.append((stat.st_mtime, int(size or 0), directory.name))
        total = sum(size for _, size, _ in copies)
        for _, size, key in sorted(copies):
            if total <= self.local_gb * 2**30:
                break
            if key == keep or key in self._pins:
                continue
            with self._pin_mutex(key):
                if self._in_use(key):
                    continue
                self._delete(self.entries_dir / key)
            total -= size

    # -- ownership ----------------------------------------------------------------------------

    def claim(self) -> None:
        super().claim()
        try:
            if not self.fs.exists(self._r(MARKER)):
                self._check_remote_contents("use")
                create_object(self.fs, self._r(MARKER), MARKER_TEXT.encode())
        except FileExistsError:  # another machine claimed it just now
            pass
        except Exception as err:
            raise self._unreachable("write to", err) from None

    def _remote_names(self) -> list[str]:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.rpath, detail=False))
        except FileNotFoundError:
            return []

    def _check_remote_contents(self, action: str) -> None:
        """Raise unless a prefix without the marker is empty, or a cache from before the marker (see `Cache._check_unmarked`)."""
        names = self._remote_names()
        if MARKER in names:  # another machine claimed it since the caller looked
            return
        foreign = [name for name in names if name not in REMOTE_KNOWN]
        shown = ", ".join((foreign or names)[:5]) + (", ..." if len(foreign or names) > 5 else "")
        if foreign:
            raise CacheError(f"refusing to {action} {self.url}: it holds objects that are not a slimops cache's ({shown}); "
                             "set engine.cache_dir (or --cache-dir) to a prefix of its own, e.g. s3://bucket/slimops-cache")
        if names and not any(names_itself(entry) for entry in self.entries()):
            raise CacheError(f"refusing to {action} {self.url}: it has no {MARKER} marker and no cache entry, so its {shown} "
                             "may be someone else's; set engine.cache_dir (or --cache-dir) to an empty prefix or to the cache itself")

    def _check_remote_owned(self, action: str) -> None:
        try:
            if self.fs.exists(self._r(MARKER)):
                return
            if not self._remote_names():
                raise CacheError(f"no cache at {self.url}; nothing to {action}")
            self._check_remote_contents(action)
        except Exception as err:
            raise self._unreachable("read", err) from None

    # -- writing ------------------------------------------------------------------------------

    def lock(self, key: str) -> LeaseLock:
        """This machine's FileLock on `key`, then a lease on `<url>/locks/<key>.lock` (see slimops.lease)."""
        return LeaseLock(self.fs, self._r("locks", f"{key}.lock"), super().lock(key), self.lease_s)

    def publish(self, key: str, tmp: Path, manifest: dict[str, Any]) -> Entry:
        """Publish locally, upload the files, then create the remote manifest (if another machine
        published the key first, its entry stays). Called under `lock(key)`.

        Raises:
            CacheError: the upload failed; the remote entry stays absent, and the local one is kept.
        """
        entry = super().publish(key, tmp, manifest)  # its closing get() pins the copy
        where = self._r("entries", key)
        try:
            if not self.fs.exists(f"{where}/{MANIFEST}"):
                # a killed or set-aside publisher's files: no one else writes them while we hold the lock
                self._rm([p for p in self.fs.find(where) if not p.endswith(f"/{USED}")])
                for rel in entry.manifest["files"]:
                    self.fs.put_file(str(entry.dir / rel), f"{where}/{rel}")
                create_object(self.fs, f"{where}/{MANIFEST}", (entry.dir / MANIFEST).read_bytes())
        except FileExistsError:
            pass
        except Exception as err:
            raise self._unreachable(f"upload entry {key[:12]} to", err) from None
        self._evict(keep=key)
        return entry

    def set_aside(self, entry: Entry) -> Path:
        """Set a damaged copy aside locally; if the damage came from the remote, remove the remote
        entry too: its manifest first (the entry becomes absent), then its files."""
        damaged = self._damaged.pop(str(entry.dir), None)
        if damaged is not None:
            manifest = self._r("entries", entry.key, MANIFEST)
            try:
                if self.fs.cat_file(manifest) == damaged[1]:  # not a good one another machine published since
                    self.fs.rm_file(manifest)
                self._remove_files(entry.key)
            except FileNotFoundError:
                pass
            except Exception as err:
                raise self._unreachable("set aside an entry of", err) from None
        return super().set_aside(entry)

    def _remove_files(self, key: str) -> bool:
        """Remove an absent entry's files unless someone holds its lock (a publisher at work)."""
        lock = self.lock(key)
        try:
            lock.acquire(timeout=0)
        except (Timeout, RuntimeError):  # RuntimeError: this thread holds it (a set-aside under the builder's lock)
            return False
        try:
            if not self.fs.exists(self._r("entries", key, MANIFEST)):
                self._rm(self.fs.find(self._r("entries", key)))
                return True
            return False
        finally:
            lock.release()

    # -- maintenance --------------------------------------------------------------------------

    def remove_stale_tmp(self) -> None:
        """Local leftovers, then remote entries without a manifest whose publisher's lease is gone."""
        super().remove_stale_tmp()
        for path in (self.root / "locks").glob("*.use.*") if (self.root / "locks").is_dir() else []:
            self._in_use(path.name.split(".")[0])
        try:
            index = self._index()
        except CacheError:
            return  # unreachable now: the run says so when it reads
        for key, files in index.items():
            if MANIFEST not in files:
                self._remove_files(key)

    def _remote_problem(self, key: str, files: dict[str, dict[str, Any]]) -> str | None:
        if MANIFEST not in files:
            return "files without a manifest (its publisher was killed); the entry is absent"
        try:
            manifest = json.loads(self.fs.cat_file(self._r("entries", key, MANIFEST)))
        except FileNotFoundError:
            return None  # removed since the listing
        except ValueError:
            return "its manifest is unreadable"
        if problem := manifest_problem(manifest):
            return problem
        for rel, info in manifest["files"].items():
            if rel not in files:
                return f"{rel} is missing"
            if files[rel].get("size") != info["size"]:
                return f"{rel} changed size"
        return None

    def verify(self) -> list[str]:
        """This machine's copies (sizes and checksums), then every remote entry: a readable manifest,
        and every file it lists present with its size. One line per problem, saying what `gc` will do."""
        problems = [f"local copy {line}" for line in super().verify()]
        for key, files in sorted(self._index().items()):
            if MANIFEST not in files:
                lease = read_lease(self.fs, self._r("locks", f"{key}.lock"))
                if lease is not None and not expired(lease):
                    continue  # being published now
            problem = self._remote_problem(key, files)
            if problem:
                problems.append(f"{key[:12]} ({self.url}): {problem}; gc removes it, and a run rebuilds it")
        return problems

    def gc(self, older_than_days: float | None = None) -> dict[str, int]:
        """`Cache.gc` on this machine's copies, then on the remote: entries without a manifest whose
        lease is gone, broken entries, expired leases, and (with `older_than_days`) entries no machine
        fetched or reused for that long.

        Raises:
            CacheError: the URL is not a slimops cache, or cannot be reached.
        """
        self._check_remote_owned("clean")
        zero = {"tmp": 0, "work": 0, "entries": 0, "damaged": 0}
        removed = super().gc(older_than_days) if self.root.is_dir() else zero
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        for key, files in self._index().items():
            problem = self._remote_problem(key, files)
            used = max((_mtime(files[name]) for name in (MANIFEST, USED) if name in files), default=0)
            if problem is None and (cutoff is None or used >= cutoff):
                continue
            lock = self.lock(key)
            try:
                lock.acquire(timeout=0)
            except (Timeout, RuntimeError):
                continue  # a live run is publishing it
            try:
                self._rm([self._r("entries", key, MANIFEST)] if MANIFEST in files else [])  # absent first
                self._rm(self.fs.find(self._r("entries", key)))
                removed["tmp" if MANIFEST not in files else "damaged" if problem else "entries"] += 1
            finally:
                lock.release()
        try:
            for path in self.fs.find(self._r("locks")):
                lease = read_lease(self.fs, path)
                if lease is not None and expired(lease, time.time() - self.lease_s):  # well past: its holder is gone
                    self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        return removed

    def clear(self) -> int:
        """Remove every remote entry (manifests first) and this machine's copies; the number of remote entries."""
        self._check_remote_owned("clear")
        index = self._index()
        count = sum(MANIFEST in files for files in index.values())
        if self.root.is_dir():
            super().clear()
        try:
            self._rm([self._r("entries", key, MANIFEST) for key, files in index.items() if MANIFEST in files])
            self._rm(self.fs.find(self._r("entries")))
        except FileNotFoundError:
            pass
        except Exception as err:
            raise self._unreachable("clear", err) from None
        return count

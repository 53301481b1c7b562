"""A lock shared by machines: a lease on an object of the cache's filesystem (S3, GCS, a shared folder).

- `LeaseLock(fs, path, local, lease_s)`: the FileLock interface the scheduler uses (`acquire(timeout)`
  raising `filelock.Timeout`, `release()`), held as this machine's FileLock and a lease object.
- `create_object(fs, path, data)`: write an object only if none exists (FileExistsError otherwise),
  and never let a reader see half of it.

The lease object holds {owner, host, pid, expires}. It is created with a conditional write (S3's
If-None-Match; O_EXCL on a local or mounted folder), so one holder wins. While held, a daemon thread
renews `expires` every lease_s/3. Whether a holder is alive is decided by its lease, never by its PID
(another machine's PIDs mean nothing here): a lease past `expires` belongs to a lost machine or a
killed process, and may be broken, which is deleting it and creating ours.

The race accepted: two waiters that both read the same expired lease may both delete, and the
slower delete can remove the faster one's fresh lease, so both hold it. They then build the same
node twice; the first manifest written wins (the manifest is a conditional create too), and a
fetch checks every file's checksum, so a mix of both builds is set aside and rebuilt, never used.
Machines' clocks must agree to well within lease_s (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from filelock import FileLock, Timeout

from slimops.errors import CacheError

log = logging.getLogger("slimops.lease")


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def create_object(fs: Any, path: str, data: bytes) -> None:
    """Write `data` at `path` only if nothing is there.

    Raises:
        FileExistsError: an object is already at `path`.
    """
    if not is_local(fs):
        fs.pipe_file(path, data, mode="create")  # s3fs: a PUT with If-None-Match: *, atomic on S3
        return
    # A local or mounted folder: write a temporary file, then link it into place (fails if the
    # name exists, and the name never shows a half-written file).
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "xb") as handle:
        handle.write(data)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def replace_object(fs: Any, path: str, data: bytes) -> None:
    """Overwrite `path` with `data`, atomically for readers."""
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def read_lease(fs: Any, path: str) -> dict[str, Any] | None:
    """The lease at `path`, None if there is none; an unreadable one reads as expired."""
    try:
        body = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"owner": None, "expires": 0}
    return body if isinstance(body, dict) else {"owner": None, "expires": 0}


def expired(lease: dict[str, Any], now: float | None = None) -> bool:
    try:
        return float(lease.get("expires", 0)) < (time.time() if now is None else now)
    except (TypeError, ValueError):
        return True


class LeaseLock:
    """This machine's FileLock on a key, then a lease on the shared `path`; see the module docstring.

    Args:
        fs: the fsspec filesystem of the cache.
        path: the lease object, e.g. `bucket/cache/locks/<key>.lock`.
        local: the FileLock that makes runs on this machine take turns before they ask the remote.
        lease_s: how long a lease outlives its last renewal.
        poll_s: how often a waiter looks again.
    """

    def __init__(self, fs: Any, path: str, local: FileLock, lease_s: float = 60.0, poll_s: float | None = None):
        self.fs = fs
        self.path = path
        self.local = local
        self.lease_s = float(lease_s)
        self.poll_s = poll_s if poll_s is not None else min(1.0, max(0.2, self.lease_s / 60))
        self.owner = uuid.uuid4().hex
        self.lost = False
        self._count = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def is_locked(self) -> bool:
        return self._count > 0

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.lease_s}).encode()

    def acquire(self, timeout: float = -1, poll_interval: float | None = None) -> LeaseLock:
        """Hold the lock; `timeout` < 0 waits for as long as it takes, 0 tries once.

        Raises:
            filelock.Timeout: another run (on this machine or another) holds it past `timeout`.
        """
        if self._count:
            self._count += 1
            return self
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        self.local.acquire(timeout=-1 if deadline is None else timeout)
        try:
            while not self._try_once():
                if deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(self.path)
                time.sleep(poll_interval or self.poll_s)
        except (Timeout, KeyboardInterrupt, SystemExit):
            self.local.release()
            raise
        except Exception as err:
            self.local.release()
            raise CacheError(f"cannot take the lock {self.path} ({type(err).__name__}: {err}); check the network "
                             "and the credentials of the cache's storage") from None
        self._count = 1
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, args=(self._stop,), daemon=True, name=f"lease {self.path}")
        self._thread.start()
        return self

    def _try_once(self) -> bool:
        for _ in range(2):  # a second try right after a release seen, or a lease broken
            try:
                create_object(self.fs, self.path, self._body())
                return True
            except FileExistsError:
                pass
            held = read_lease(self.fs, self.path)
            if held is not None and not expired(held):
                return False
            if held is not None:  # its holder stopped renewing it: lost or killed
                log.info("breaking the expired lease %s of %s (pid %s)", self.path, held.get("host"), held.get("pid"))
                try:
                    self.fs.rm_file(self.path)
                except FileNotFoundError:
                    pass
        return False

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            try:
                held = read_lease(self.fs, self.path)
                if held is None or held.get("owner") != self.owner:
                    self.lost = True
                    log.warning("the lease %s was taken over (this run stalled past its lease); another run may "
                                "build the same node, and the first manifest published wins", self.path)
                    return
                replace_object(self.fs, self.path, self._body())
            except Exception as err:  # a network blip: the next renewal tries again
                log.warning("could not renew the lease %s: %s", self.path, err)

    def release(self, force: bool = False) -> None:
        if not self._count:
            return
        self._count = 0 if force else self._count - 1
        if self._count:
            return
        assert self._stop is not None and self._thread is not None
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            held = read_lease(self.fs, self.path)
            if held is not None and held.get("owner") == self.owner:
                self.fs.rm_file(self.path)
        except Exception as err:  # unreachable now: the lease expires by itself
            log.warning("could not release the lease %s: %s", self.path, err)
        finally:
            self.local.release()

    def __enter__(self) -> LeaseLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

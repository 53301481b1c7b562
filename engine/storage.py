"""Where the cache lives: a local folder, or an fsspec URL shared by machines (s3://, gs://, file://).

- `is_url(text)`: whether `engine.cache_dir` names a URL rather than a folder.
- `open_cache(location, ...)`: a `Cache` for a folder, a `RemoteCache` for a URL; `cache_of(config)`
  opens a pipeline's, with its engine settings.
- `filesystem(url)`: its fsspec filesystem and path, or a CacheError that says what to install.
- `RemoteCache` (slimops.remote): the shared cache, with a local copy folder on each machine.

The remote layout, and what is atomic: slimops.remote.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from slimops.cache import Cache
from slimops.errors import CacheError
from slimops.remote import RemoteCache

__all__ = ["RemoteCache", "cache_of", "cache_settings", "default_local_dir", "filesystem", "is_url", "open_cache", "url_problem"]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:// is a drive
_PACKAGES = {"s3": "pip install 'slimops[cluster]' (it brings s3fs)", "s3a": "pip install 'slimops[cluster]' (it brings s3fs)",
             "gs": "pip install gcsfs", "gcs": "pip install gcsfs", "az": "pip install adlfs", "abfs": "pip install adlfs",
             "abfss": "pip install adlfs"}


def is_url(text: str | os.PathLike) -> bool:
    """True for `s3://bucket/x`, `file:///x`, `memory://x`; False for a path (`out`, `C:\\x`, `/x`)."""
    return isinstance(text, str) and _SCHEME.match(text) is not None


def url_problem(url: str) -> str | None:
    """What is wrong with a cache URL that can be told without reaching it, or None."""
    scheme, rest = url.split("://", 1)
    if not rest.strip("/") and scheme.lower() != "memory":
        where = "bucket" if scheme.lower() in _PACKAGES else "folder"
        return f"'{url}' names no {where}; give one, e.g. {scheme}://my-{where}/slimops-cache"
    return None


def default_local_dir(url: str) -> Path:
    """This machine's folder of local copies for `url`: ~/.cache/slimops/copies/<hash of the URL>."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "slimops" / "copies" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def open_cache(location: str | Path, *, local_dir: Path | None = None, local_gb: float = 20.0, lease_s: float = 60.0) -> Cache:
    """A `Cache` for a folder, a `RemoteCache` for a URL (its local copies in `local_dir`).

    Raises:
        CacheError: the URL's filesystem package is not installed, or its protocol is unknown.
    """
    if not is_url(str(location)) or isinstance(location, Path):
        return Cache(Path(location))
    url = str(location).rstrip("/")
    fs, path = filesystem(url)
    return RemoteCache(url, fs, path, Path(local_dir) if local_dir else default_local_dir(url), local_gb=local_gb, lease_s=lease_s)


def cache_settings(config: Any) -> dict[str, Any]:
    """`open_cache`'s arguments for a `PipelineConfig` (plain values: a Ray worker reopens the cache from them)."""
    engine = config.spec.engine
    return {"location": config.cache_location, "local_dir": config.local_cache_dir, "local_gb": engine.local_cache_gb,
            "lease_s": engine.lock_lease_s}


def cache_of(config: Any) -> Cache:
    """The cache a `PipelineConfig` names, with its `engine.local_cache_*` and `lock_lease_s` settings."""
    return open_cache(**cache_settings(config))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url`, and the path in it (no network is reached).

    Raises:
        CacheError: the URL names no bucket, its package is not installed, or its protocol is unknown.
    """
    scheme = url.split("://", 1)[0].lower()
    problem = url_problem(url)
    if problem:
        raise CacheError(f"engine.cache_dir: {problem}")
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise CacheError(f"a cache URL ({url}) needs fsspec: pip install fsspec") from None
    # a shared folder makes its subfolders on write; an object store must not serve other machines' writes from a stale listing
    options = {"auto_mkdir": True} if scheme in ("file", "local") else {} if scheme == "memory" else {"use_listings_cache": False}
    if scheme in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        # fsspec keeps one filesystem per set of options: name the endpoint, so a changed one is not served a stale client
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    try:
        fs, path = url_to_fs(url, **options)
    except ImportError as err:
        hint = _PACKAGES.get(scheme) or str(err)
        raise CacheError(f"the cache {url} needs the {scheme}:// filesystem package: {hint}") from None
    except ValueError as err:
        raise CacheError(f"the cache {url}: {err}; use s3://, gs://, file:// or a local folder") from None
    return fs, path.rstrip("/") or path

"""How big an artifact is on disk, measured one way everywhere.

- `size_bytes(path)`: a file's size, or the sum of a folder's files, each hard link counted once
  (the cache hard-links artifacts, and a file linked twice takes its bytes once).
- `size_mb(path)`: the same in MiB (2**20 bytes): the `size_mb` metric of every pass.
"""

from __future__ import annotations

from pathlib import Path


def size_bytes(path: Path) -> int:
    """Bytes on disk of a file or folder (hard links counted once)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for file in path.rglob("*"):
        if file.is_file():
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def size_mb(path: Path) -> float:
    """Size on disk of a file or folder, in MiB (hard links counted once)."""
    return size_bytes(path) / 2**20

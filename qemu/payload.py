"""Stage-two payloads of real files (kernel modules, firmware, libraries, /usr/share) of chosen sizes.

The host's files are cut into chunks (a directory whole when it is small, else its children, down to
single files) in a fixed order; a payload of N MB is the shortest prefix of that list reaching N MB.
So every larger payload contains every smaller one, and profiles differ only in this content. Files
land under /payload in the image, where they cannot collide with what the profile installs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import benchlib as bl

CHUNK_MAX = 8_000_000  # split directories bigger than this, so sizes land close to their targets
DEST = "/payload"


def pool_roots(kver: str) -> list[str]:
    """Where payload files come from, in order: what an initramfs typically grows with."""
    return [f"/lib/modules/{kver}/kernel", "/lib/firmware", "/usr/lib/x86_64-linux-gnu", "/usr/share"]


@dataclass(frozen=True)
class Chunk:
    path: str
    size: int  # bytes of regular files (symlinks count 0)


def tree_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def chunks_of(path: str) -> Iterator[Chunk]:
    """`path` whole if small enough, else its children recursively (sorted: a stable order)."""
    if os.path.islink(path):
        return
    if os.path.isfile(path):
        yield Chunk(path, os.path.getsize(path))
        return
    if not os.path.isdir(path):
        return
    size = tree_size(path)
    if size <= CHUNK_MAX:
        if size:
            yield Chunk(path, size)
        return
    for name in sorted(os.listdir(path)):
        yield from chunks_of(os.path.join(path, name))


def all_chunks(kver: str) -> list[Chunk]:
    return [c for root in pool_roots(kver) if os.path.exists(root) for c in chunks_of(root)]


@dataclass(frozen=True)
class Payload:
    label: str  # e.g. "250MB"
    target: int
    chunks: tuple[Chunk, ...]

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)

    def files(self) -> tuple[bl.FileSpec, ...]:
        return tuple(bl.FileSpec(source=c.path, dest=DEST + c.path) for c in self.chunks)

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "target": self.target, "bytes": self.size, "sources": len(self.chunks)}


def payloads(kver: str, targets_mb: Sequence[int]) -> list[Payload]:
    """One payload per target size (MB = 10^6 bytes), each a prefix of the same chunk list."""
    chunks = all_chunks(kver)
    available = sum(c.size for c in chunks)
    out = []
    for mb in sorted(targets_mb):
        target = mb * 1_000_000
        if target > available:
            have = available / 1e6
            raise SystemExit(f"only {have:.0f} MB of payload files on this host; cannot make {mb} MB")
        taken, total = [], 0
        for c in chunks:
            if total >= target:
                break
            taken.append(c)
            total += c.size
        out.append(Payload(f"{mb}MB", target, tuple(taken)))
    return out


def materialize(payload: Payload, dest: Path) -> Path:
    """Copy a payload into a directory tree (for the stage-two writer benchmark)."""
    import shutil

    for c in payload.chunks:
        target = dest / c.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(c.path):
            shutil.copytree(c.path, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(c.path, target)
    return dest

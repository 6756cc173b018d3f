"""What every image reader yields: one Member per path, and the ImageReader protocol.

Readers (cpio/reader.py, erofs/reader.py) import this module and nothing of each other; inspect.py
picks the reader for a file and builds `ls`, `cat` and `unpack` on this interface alone.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..manifest import Kind


@dataclass(frozen=True)
class Member:
    path: str  # normalised image path, "/" for the root
    kind: Kind  # FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO, SOCKET
    mode: int  # permission bits
    uid: int = 0
    gid: int = 0
    size: int = 0  # content bytes (FILE), link length (SYMLINK)
    mtime: int = 0
    nlink: int = 1
    ino: int = 0  # inode number in the image (EROFS nid, cpio c_ino)
    target: str | None = None  # SYMLINK text; HARDLINK: path of the first name of the inode
    rdev: tuple[int, int] | None = None

    def ls_line(self) -> str:
        t = stat.filemode(self.kind.s_ifmt | self.mode)
        size = f"{self.rdev[0]},{self.rdev[1]}" if self.rdev else str(self.size)
        tail = f" -> {self.target}" if self.kind is Kind.SYMLINK else ""
        tail = f" link to {self.target}" if self.kind is Kind.HARDLINK else tail
        return f"{t} {self.nlink:3d} {self.uid:5d} {self.gid:5d} {size:>10} {self.path}{tail}"


class ImageReader(Protocol):
    """A built image, opened: its members (parents before children) and their contents."""

    def members(self) -> Iterator[Member]: ...

    def read(self, member: Member) -> bytes: ...

"""Reading built images: one Member type and one safe `unpack` for cpio and EROFS readers alike.

A reader is any object with `members()` (an iterator of Member, parents before children) and
`read(member)` (the member's bytes). `open_image(path)` picks the reader from the file's magic.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import FormatError, InitbuildError
from ..manifest import Kind, PathError, check_dest


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
    def members(self) -> Iterator[Member]: ...

    def read(self, member: Member) -> bytes: ...


def open_image(path: str | os.PathLike[str]) -> ImageReader:
    """Open an EROFS image or a (compressed, possibly multi-segment) cpio initramfs."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(1024 + 4)
    except OSError as e:
        raise InitbuildError(f"cannot open {p}: {e.strerror}") from e
    if len(head) >= 1028 and head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        from .erofs.reader import ErofsReader

        return ErofsReader(p)
    from .cpio import CpioReader

    return CpioReader(p)


def find(reader: ImageReader, path: str) -> Member:
    want = check_dest(path)
    for m in reader.members():
        if m.path == want:
            return m
    raise InitbuildError(f"{path}: no such path in the image")


def unpack(reader: ImageReader, dest: str | os.PathLike[str]) -> int:
    """Extract every member under `dest`; returns the number written.

    Never writes outside `dest`: member paths are re-validated, and no path is written through a
    symlink created by the image (parents are checked with lstat). Device nodes are created only
    when running as root, otherwise skipped with a count.
    """
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    count = 0
    dirs: list[tuple[Path, int]] = []
    for m in reader.members():
        try:
            rel = check_dest(m.path).lstrip("/")
        except PathError as e:
            raise FormatError(f"refusing to unpack {m.path!r}: {e}") from e
        target = root / rel if rel else root
        _check_parents(root, target)
        if m.kind is Kind.DIR:
            if target != root:
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    raise FormatError(f"refusing to unpack directory {m.path} over a non-directory")
                target.mkdir(exist_ok=True)
            dirs.append((target, m.mode))
            count += 1
            continue
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                raise FormatError(f"refusing to replace directory {m.path} with a {m.kind}")
            target.unlink()
        if m.kind is Kind.FILE:
            data = reader.read(m)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(target, m.mode)
        elif m.kind is Kind.HARDLINK:
            assert m.target is not None
            src = root / check_dest(m.target).lstrip("/")
            _check_parents(root, src)
            if not src.is_file() or src.is_symlink():
                raise FormatError(f"hard link {m.path} names {m.target}, which was not unpacked as a file")
            os.link(src, target)
        elif m.kind is Kind.SYMLINK:
            assert m.target is not None
            os.symlink(m.target, target)
        elif m.kind is Kind.FIFO:
            os.mkfifo(target, m.mode)
            os.chmod(target, m.mode)  # mkfifo's mode is reduced by the umask
        elif m.kind in (Kind.CHAR, Kind.BLOCK) and os.geteuid() == 0 and m.rdev is not None:
            os.mknod(target, m.kind.s_ifmt | m.mode, os.makedev(*m.rdev))
            os.chmod(target, m.mode)
        else:
            continue  # sockets, or devices without root: nothing sensible to create
        count += 1
    for d, mode in reversed(dirs):
        os.chmod(d, mode)
    return count


def _check_parents(root: Path, target: Path) -> None:
    if target == root:
        return
    p = target.parent
    while p != root:
        if p.is_symlink():
            raise FormatError(f"refusing to unpack {target} through the symlink {p}")
        if root not in p.parents:
            raise FormatError(f"refusing to unpack {target} outside {root}")
        p = p.parent

"""What is this file: open a built image with the right reader, find a path in it, unpack it safely.

Readers yield `Member`s (member.py); this module is the only one in formats/ that knows every reader.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError, InitbuildError
from ..manifest import Kind, PathError, check_dest
from . import pe, uki
from .cpio.reader import CpioReader
from .erofs.format import EROFS_SUPER_MAGIC_V1, EROFS_SUPER_OFFSET
from .erofs.reader import ErofsReader
from .member import ImageReader, Member

_EROFS_MAGIC = EROFS_SUPER_MAGIC_V1.to_bytes(4, "little")


def open_image(path: str | os.PathLike[str]) -> ImageReader:
    """Open an EROFS image, a (compressed, possibly multi-segment) cpio initramfs, or a Unified Kernel
    Image, whose members are those of the stage one (or plain initramfs) in its .initrd section."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(EROFS_SUPER_OFFSET + len(_EROFS_MAGIC))
    except OSError as e:
        raise InitbuildError(f"cannot open {p}: {e.strerror}") from e
    if head[EROFS_SUPER_OFFSET:] == _EROFS_MAGIC:
        return ErofsReader(p)
    if head.startswith(pe.DOS_MAGIC) and (sections := uki_sections(p)) is not None:
        if not any(s.name == ".initrd" for s in sections):
            raise FormatError(f"{p}: a Unified Kernel Image without an .initrd section")
        return CpioReader(p, data=uki.extract_section(p.read_bytes(), ".initrd"))
    return CpioReader(p)


def uki_sections(path: str | os.PathLike[str]) -> list[uki.UkiSection] | None:
    """The PE sections of a Unified Kernel Image (the stub's and the UKI's), or None if it is not one."""
    data = Path(path).read_bytes()
    return uki.read_uki(data) if uki.is_uki(data) else None


def uki_lines(sections: list[uki.UkiSection]) -> list[str]:
    """`initbuild ls` of a UKI: its sections, then (listed by the caller) the members of its .initrd."""
    rows = [f"Unified Kernel Image, {len(sections)} PE sections:"]
    for s in sections:
        rows.append(f"  {s.name:<9} vaddr 0x{s.vaddr:08x}  size {s.size:>10}  file offset 0x{s.offset:08x}")
    return [*rows, ".initrd:"]


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

"""Read EROFS images (initbuild's own and mkfs.erofs 1.5 ones) defensively.

Everything read from the image is validated before it is used: offsets against the file size,
loops against the number of inodes and bytes that could exist, and formats against what the
Linux 6.1 kernel accepts. Corrupt input raises FormatError naming the offset and field; it never
raises anything else, allocates according to a forged size, or loops forever. decode.py decodes
the metadata, filedata.py the contents; this module holds the open file and walks the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import FormatError, InitbuildError
from ...manifest import Kind, check_dest
from ..member import Member
from .decode import (
    Dirent,
    Inode,
    Superblock,
    decode_dir_block,
    decode_inode,
    decode_superblock,
    decode_xattr_entry,
)
from .filedata import compressed_extents, file_data
from .format import BLOCK_SIZE, EROFS_FT_OF_S_IFMT, XATTR_ENTRY, XATTR_IBODY_HEADER, decode_rdev
from .zmap import Extent

MAX_SYMLINK = BLOCK_SIZE


class ErofsReader:
    """An EROFS image file, read with os.pread; implements image.ImageReader."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise InitbuildError(f"cannot open {self.path}: {e.strerror}") from e
        self.size = os.fstat(self._fd).st_size
        self._inodes: dict[int, Inode] = {}
        self.sb = self._superblock()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ErofsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- raw access --------------------------------------------------------------------------------
    def _pread(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(f"{what} lies outside the image ({self.size} bytes)", offset=offset, field=what)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise FormatError(f"short read of {what}", offset=offset, field=what)
        return data

    # -- superblock and inodes (docs/erofs-format.md §2, §3) ---------------------------------------
    def _superblock(self) -> Superblock:
        return decode_superblock(self._pread(0, BLOCK_SIZE, "superblock"), self.size)

    def inode(self, nid: int) -> Inode:
        """Parse and validate the inode `nid` (cached)."""
        ino = self._inodes.get(nid)
        if ino is None:
            ino = self._inodes[nid] = decode_inode(nid, self._pread, self.sb, self.size)
        return ino

    # -- extended attributes (docs/erofs-format.md §6) ---------------------------------------------
    def xattrs(self, ino: Inode) -> list[tuple[str, bytes]]:
        """(name, value) pairs of an inode: inline entries, then shared ones, in on-disk order."""
        if not ino.xattr_size:
            return []
        base = ino.offset + ino.inode_size
        area = self._pread(base, ino.xattr_size, "xattr area")
        shared = area[4]
        pos = XATTR_IBODY_HEADER.size + 4 * shared
        if pos > len(area):
            raise FormatError(
                f"nid {ino.nid}: h_shared_count too large", offset=base + 4, field="h_shared_count"
            )
        out = []
        while pos < len(area):
            item, size = decode_xattr_entry(area, pos, base + pos, ino.nid)
            out.append(item)
            pos += size
        for k in range(shared):
            xid = int.from_bytes(area[XATTR_IBODY_HEADER.size + 4 * k :][:4], "little")
            at = self.sb.xattr_blkaddr * BLOCK_SIZE + 4 * xid
            head = self._pread(at, XATTR_ENTRY.size, "shared xattr")
            length = XATTR_ENTRY.size + head[0] + (head[2] | head[3] << 8)
            out.append(decode_xattr_entry(self._pread(at, length, "shared xattr"), 0, at, ino.nid)[0])
        return out

    # -- file data ---------------------------------------------------------------------------------
    def data(self, ino: Inode) -> bytes:
        """The content of a FILE, SYMLINK or DIR inode."""
        return file_data(ino, self.sb, self._pread, self.size)

    def extents(self, ino: Inode) -> list[Extent]:
        """Decode and validate the block map of a compressed inode (docs/erofs-format.md §7)."""
        return compressed_extents(ino, self.sb, self._pread, self.size)

    # -- directories (docs/erofs-format.md §5) -----------------------------------------------------
    def dirents(self, ino: Inode) -> list[Dirent]:
        """Entries of a directory, '.' and '..' included, validated per block."""
        if ino.kind is not Kind.DIR:
            raise FormatError(f"nid {ino.nid} is not a directory", offset=ino.offset, field="i_mode")
        data = self.data(ino)
        out: list[Dirent] = []
        for start in range(0, len(data), BLOCK_SIZE):
            out += decode_dir_block(ino, data[start : start + BLOCK_SIZE], start)
        # the kernel binary-searches blocks by their first name: the order must be global
        # (docs/erofs-format.md §5.3)
        for a, b in zip(out, out[1:], strict=False):
            if a.name >= b.name:
                raise FormatError(f"directory nid {ino.nid}: names out of order at {b.name!r}", field="name")
        return out

    # -- tree walk ---------------------------------------------------------------------------------
    def _walk(self) -> list[tuple[str, Inode]]:
        """(path, inode) of every name, validating '.', '..', file types and cycles."""
        root = self.inode(self.sb.root_nid)
        if root.kind is not Kind.DIR:
            raise FormatError("root is not a directory", offset=root.offset, field="root_nid")
        out = [("/", root)]
        seen_dirs = {root.nid}
        stack = [("/", root, root.nid)]
        while stack:
            path, ino, parent = stack.pop()
            dots = 0
            for d in self.dirents(ino):
                if d.name in (b".", b".."):
                    dots += 1
                    if d.nid != (ino.nid if d.name == b"." else parent):
                        raise FormatError(
                            f"{path}: wrong {d.name.decode()} entry", offset=ino.offset, field="nid"
                        )
                    continue
                child = self.inode(d.nid)
                if EROFS_FT_OF_S_IFMT[child.kind.s_ifmt] != d.file_type:
                    raise FormatError(
                        f"{path}: file type of {d.name!r} disagrees with its inode", field="file_type"
                    )
                cpath = ("" if path == "/" else path) + "/" + os.fsdecode(d.name)
                out.append((cpath, child))
                if child.kind is Kind.DIR:
                    if child.nid in seen_dirs:
                        raise FormatError(
                            f"{cpath}: directory linked twice (cycle)", offset=child.offset, field="nid"
                        )
                    seen_dirs.add(child.nid)
                    stack.append((cpath, child, ino.nid))
            if dots != 2:
                raise FormatError(
                    f"{path}: missing or duplicate dot entries", offset=ino.offset, field="name"
                )
        return out

    def _member(self, path: str, ino: Inode, first: str | None = None) -> Member:
        target, rdev = None, None
        kind = ino.kind
        if kind is Kind.SYMLINK:
            if not 0 < ino.size <= MAX_SYMLINK:
                raise FormatError(f"{path}: bad symlink length {ino.size}", offset=ino.offset, field="i_size")
            raw = self.data(ino)
            if b"\0" in raw:
                raise FormatError(f"{path}: NUL in symlink target", offset=ino.offset, field="data")
            target = os.fsdecode(raw)
        elif kind in (Kind.CHAR, Kind.BLOCK):
            rdev = decode_rdev(ino.i_u)
        elif kind is Kind.FILE and first is not None:
            kind, target = Kind.HARDLINK, first
        return Member(
            path=path,
            kind=kind,
            mode=ino.mode,
            uid=ino.uid,
            gid=ino.gid,
            size=ino.size if ino.kind in (Kind.FILE, Kind.SYMLINK) else 0,
            mtime=ino.mtime,
            nlink=ino.nlink,
            ino=ino.nid,
            target=target,
            rdev=rdev,
        )

    def members(self) -> Iterator[Member]:
        """Every path in canonical order (by path bytes, so parents come first); the 2nd+ names of
        a regular file are HARDLINK members pointing at the first."""
        items = self._walk()
        items.sort(key=lambda pi: os.fsencode(pi[0]))
        first: dict[int, str] = {}
        for path, ino in items:
            prior = first.setdefault(ino.nid, path) if ino.kind is Kind.FILE else path
            yield self._member(path, ino, prior if prior != path else None)

    def read(self, member: Member) -> bytes:
        """Content of a FILE/HARDLINK member, the target bytes of a SYMLINK, b"" otherwise."""
        if member.kind not in (Kind.FILE, Kind.HARDLINK, Kind.SYMLINK):
            return b""
        ino = self.inode(member.ino)
        if ino.kind not in (Kind.FILE, Kind.SYMLINK):
            raise FormatError(
                f"{member.path}: nid {member.ino} is not a file", offset=ino.offset, field="i_mode"
            )
        return self.data(ino)

    def lookup(self, path: str) -> Member:
        """The member at `path` (no symlinks followed); InitbuildError if there is none."""
        want = check_dest(path)
        ino = self.inode(self.sb.root_nid)
        if want == "/":
            return self._member("/", ino)
        for part in want.strip("/").split("/"):
            if ino.kind is not Kind.DIR:
                raise InitbuildError(f"{path}: not a directory in the image")
            name = os.fsencode(part)
            nid = next((d.nid for d in self.dirents(ino) if d.name == name), None)
            if nid is None:
                raise InitbuildError(f"{path}: no such path in the image")
            ino = self.inode(nid)
        return self._member(want, ino)

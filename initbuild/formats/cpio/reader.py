"""Read a (compressed, multi-segment) newc initramfs the way the kernel's init/initramfs.c unpacks it."""

from __future__ import annotations

import mmap
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ...errors import FormatError, InitbuildError
from ...manifest import Kind, PathError, check_dest
from ..compress import Compression, decompress_stream_into, detect
from ..member import Member
from .newc import ALIGN, CPIO_MAGIC_PREFIX, HEADER_SIZE, PATH_MAX, TRAILER, NewcHeader, field_offset, padding

_NON_ZERO = re.compile(rb"[^\0]")


@dataclass(frozen=True)
class SegmentInfo:
    offset: int  # where the segment starts in the file
    end: int  # just after its last byte (before zero padding)
    compression: Compression
    members: int  # records in it, without trailers


@dataclass
class _Record:
    offset: int  # of the header
    header: NewcHeader
    path: str
    data: memoryview


class CpioReader:
    """A (possibly compressed, possibly multi-segment) newc initramfs, read like the kernel does.

    Every segment is decompressed and parsed when the reader is created; corrupt input raises
    FormatError naming an offset (in the file, or in the decompressed segment at a given file
    offset) and the field. Paths that appear again later replace the earlier member, as they do when
    the kernel unpacks; the member keeps its first position, so parents still come first.
    """

    def __init__(self, path: str | os.PathLike[str], data: bytes | None = None):
        """Read the file at `path`, or `data` (e.g. a UKI's .initrd section; `path` names it)."""
        self.path = Path(path)
        raw: bytes | mmap.mmap = b"" if data is None else data
        try:
            if data is None:
                with open(self.path, "rb") as f:
                    # mapped, not read: the page cache holds the file once; members are views into it
                    size = os.fstat(f.fileno()).st_size
                    raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise InitbuildError(f"cannot read {self.path}: {e.strerror}") from e
        self.segments: list[SegmentInfo] = []
        self._keep: list[IO[bytes]] = []  # the decompressed segments' temporary files
        self._members: dict[str, Member] = {}
        self._content: dict[str, memoryview] = {}
        self._parse_file(raw)

    def members(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def read(self, member: Member) -> bytes:
        path = member.target if member.kind is Kind.HARDLINK else member.path
        if member.kind is Kind.SYMLINK:
            return os.fsencode(member.target or "")
        if path not in self._content:
            if member.kind in (Kind.FILE, Kind.HARDLINK):
                raise FormatError(f"{member.path}: no such file in {self.path}")
            return b""
        return bytes(self._content[path])

    # -- parsing -----------------------------------------------------------------------------------
    def _parse_file(self, raw: bytes | mmap.mmap) -> None:
        pos = 0
        while (m := _NON_ZERO.search(raw, pos)) is not None:  # zeros between segments are skipped
            pos = m.start()
            if raw[pos : pos + len(CPIO_MAGIC_PREFIX)] == CPIO_MAGIC_PREFIX:  # newc, or another cpio format
                if pos % ALIGN:
                    raise FormatError("uncompressed cpio archive does not start 4-aligned", offset=pos)
                end, count = self._parse_archive(memoryview(raw), pos)
                self.segments.append(SegmentInfo(pos, end, Compression.NONE, count))
                pos = end
                continue
            if detect(raw[pos : pos + 8]) is None:
                raise FormatError("neither a cpio archive nor a known compression", offset=pos, field="magic")
            data, compression, end = self._decompress_segment(raw, pos)
            try:
                count = self._parse_archives(data)
            except FormatError as e:
                raise _in_segment(e, compression, pos) from None
            self.segments.append(SegmentInfo(pos, end, compression, count))
            pos = end

    def _decompress_segment(
        self, raw: bytes | mmap.mmap, pos: int
    ) -> tuple[bytes | mmap.mmap, Compression, int]:
        """Decompress the segment at `pos` into an anonymous temporary file and map it: members are
        views into the mapping, and listing a large image touches little more than its headers."""
        tmp = tempfile.TemporaryFile(prefix="initbuild-cpio-")
        self._keep.append(tmp)
        compression, end = decompress_stream_into(memoryview(raw), pos, tmp.write)
        size = tmp.tell()
        if not size:
            return b"", compression, end
        tmp.flush()
        return mmap.mmap(tmp.fileno(), size, access=mmap.ACCESS_READ), compression, end

    def _parse_archives(self, data: bytes | mmap.mmap) -> int:
        """The decompressed content of a segment: archives separated by zeros (initramfs.c Reset)."""
        view = memoryview(data)
        count = 0
        pos = 0
        while (m := _NON_ZERO.search(data, pos)) is not None:
            pos, n = self._parse_archive(view, m.start())
            count += n
        return count

    def _parse_archive(self, buf: memoryview, pos: int) -> tuple[int, int]:
        """Parse one archive (up to and including TRAILER!!!) at buf[pos]; returns (end, records)."""
        records: list[_Record] = []
        while True:
            header, data_at = NewcHeader.parse(buf, pos)
            end = data_at + header.c_filesize
            if end > len(buf):
                raise FormatError(f"data of {header.name!r} is truncated", offset=data_at, field="c_filesize")
            if header.name == TRAILER.encode():
                self._add_records(records)
                return end + padding(end), len(records)
            records.append(_Record(pos, header, _member_path(header, pos), buf[data_at:end]))
            pos = end + padding(end)

    def _add_records(self, records: list[_Record]) -> None:
        """Turn one archive's records into members. Hard links are resolved per archive: the kernel
        forgets its inode table at each trailer (init/initramfs.c free_hash())."""
        first_name: dict[tuple[int, int, int], str] = {}
        link_data: dict[str, memoryview] = {}
        for r in records:  # the first name of each linked inode, and the data (on the last non-empty name)
            if _kind(r) is Kind.FILE and r.header.c_nlink > 1:
                first = first_name.setdefault(_inode_key(r.header), r.path)
                if r.data or first not in link_data:
                    link_data[first] = r.data
        for r in records:
            h = r.header
            kind = _kind(r)
            target: str | None = None
            data = r.data
            if kind is Kind.FILE and h.c_nlink > 1:
                first = first_name[_inode_key(h)]
                data = link_data[first]
                if first != r.path:
                    kind, target = Kind.HARDLINK, first
            elif kind is Kind.SYMLINK:
                if len(data) > PATH_MAX:
                    raise FormatError(
                        f"symlink {r.path} has a target longer than PATH_MAX", field="c_filesize"
                    )
                target = os.fsdecode(bytes(data))
            self._content.pop(r.path, None)
            if kind is Kind.FILE:
                self._content[r.path] = data
            has_size = kind in (Kind.FILE, Kind.HARDLINK, Kind.SYMLINK)
            self._members[r.path] = Member(
                path=r.path,
                kind=kind,
                mode=stat.S_IMODE(h.c_mode),
                uid=h.c_uid,
                gid=h.c_gid,
                size=len(data) if has_size else 0,
                mtime=h.c_mtime,
                nlink=h.c_nlink,
                ino=h.c_ino,
                target=target,
                rdev=(h.c_rdevmajor, h.c_rdevminor) if kind in (Kind.CHAR, Kind.BLOCK) else None,
            )


def _in_segment(e: FormatError, compression: Compression, pos: int) -> FormatError:
    """Say which compressed segment an error is in; its offset stays that of the decompressed data."""
    err = FormatError(
        f"{e.message} in the {compression} segment at file offset {pos} (offset in decompressed data)"
    )
    err.offset, err.field = e.offset, e.field
    return err


def _inode_key(h: NewcHeader) -> tuple[int, int, int]:
    return (h.c_ino, h.c_devmajor, h.c_devminor)


def _kind(r: _Record) -> Kind:
    mode = r.header.c_mode
    kind = Kind.from_mode(mode)
    if kind is None or mode > 0o177777:
        raise FormatError(
            f"{r.path} has an unknown file type (mode {mode:o})",
            offset=r.offset + field_offset("c_mode"),
            field="c_mode",
        )
    return kind


def _member_path(h: NewcHeader, offset: int) -> str:
    try:
        name = h.name.decode()
    except UnicodeDecodeError:  # image paths are str throughout initbuild (Manifest sorts by UTF-8)
        raise FormatError(
            f"cpio name {h.name!r} is not UTF-8", offset=offset + HEADER_SIZE, field="name"
        ) from None
    try:
        return check_dest(name if name.startswith("/") else "/" + name)
    except PathError as e:
        raise FormatError(
            f"unsafe cpio name {h.name!r}: {e}", offset=offset + HEADER_SIZE, field="name"
        ) from e

"""The newc cpio format: header encoder, archive writer, multi-segment initramfs writer, reader.

newc ("SVR4 portable ASCII, no checksum") is the only cpio format the kernel unpacks
(init/initramfs.c rejects the old "070707" format). A record is a 110-byte ASCII header (magic and
13 fields of 8 hex digits), the NUL-terminated name padded so header+name is a multiple of 4, then
the data padded to 4. The archive ends with an entry named TRAILER!!!.

The writer follows GNU `cpio -o -H newc --reproducible -R 0:0` fed `find . | LC_ALL=C sort`, so
that its output is byte-identical to GNU cpio's for the same tree (tests/test_cpio.py checks this):

* names have no leading slash; the root directory is ".";
* inodes are renumbered from 0 in archive order, c_devmajor/c_devminor are 0 (--ignore-devno);
* a directory's c_nlink is 2 + its subdirectories, as on a real filesystem (GNU takes st_nlink);
* hard links: every name of the inode has the same c_ino and c_nlink; GNU *defers* the names of a
  multiply-linked file until the last one is reached, then writes them all with size 0 (most
  recently deferred first) and puts the data on the last name. We do the same, reordering included.
  The kernel accepts it: init/initramfs.c maybe_link() links later names to the first one and opens
  the inode without O_TRUNC to write the data;
* the trailer has c_nlink 1 and all other fields 0, and the archive is padded with zeros to a
  multiple of 512 bytes (GNU's block size; `CpioOptions.pad_trailer_to`). The kernel skips zeros
  between archives (init/initramfs.c: unpack_to_rootfs() and the Reset state).

One deliberate difference from GNU: the metadata of every name of a hard-linked file is that of the
FILE entry (on a real filesystem they are one inode, so GNU sees the same values anyway).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, BinaryIO, NamedTuple

from ..errors import FormatError, InitbuildError
from ..manifest import Entry, Kind, Manifest, PathError, check_dest, entry_size, open_entry
from ..sysroot import Sysroot
from .compress import (
    LZ4_END_OF_STREAM,
    Compression,
    decompress_stream_into,
    detect,
    open_compressor,
)
from .inspect import Member

NEWC_MAGIC = b"070701"  # "new" portable ASCII format without checksum; the only one the kernel reads
OLD_ASCII_MAGIC = b"070707"  # odc: the kernel says "incorrect cpio method used: use -H newc option"
CPIO_MAGIC_PREFIX = b"07070"  # common to all ASCII cpio formats (newc, crc, odc)
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110  # 6 bytes magic + 13 fields * 8 hex digits
ALIGN = 4  # header+name and data are each padded to a multiple of 4 bytes
FIELD_MAX = 0xFFFFFFFF  # 8 hex digits
PATH_MAX = 4096  # the kernel collects names and symlink targets into PATH_MAX-sized buffers
GNU_BLOCK_SIZE = 512  # GNU cpio pads the whole archive to its I/O block size
COPY_CHUNK = 1 << 20  # file data is streamed in pieces of this size, never read whole

_HEX_HEADER = re.compile(rb"070701[0-9A-Fa-f]{104}")
_NON_ZERO = re.compile(rb"[^\0]")


def _pad(n: int, align: int = ALIGN) -> int:
    """Bytes needed after `n` bytes to reach a multiple of `align`."""
    return -n % align


# -- pure header encoder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewcHeader:
    """One newc header, fields named as in the format's documentation (cpio(5)).

    `c_namesize` is derived from `name` (the name's length plus its NUL), so a header can never
    disagree with its name.
    """

    c_ino: int = 0
    c_mode: int = 0
    c_uid: int = 0
    c_gid: int = 0
    c_nlink: int = 1
    c_mtime: int = 0
    c_filesize: int = 0
    c_devmajor: int = 0
    c_devminor: int = 0
    c_rdevmajor: int = 0
    c_rdevminor: int = 0
    c_check: int = 0  # always 0 in newc ("070702" would hold a checksum here)
    name: bytes = b""

    @property
    def c_namesize(self) -> int:
        return len(self.name) + 1

    def values(self) -> tuple[int, ...]:
        """The 13 numeric fields in on-disk order."""
        v = self
        return (
            v.c_ino,
            v.c_mode,
            v.c_uid,
            v.c_gid,
            v.c_nlink,
            v.c_mtime,
            v.c_filesize,
            v.c_devmajor,
            v.c_devminor,
            v.c_rdevmajor,
            v.c_rdevminor,
            v.c_namesize,
            v.c_check,
        )

    def pack(self) -> bytes:
        """Header + name + NUL, padded with NULs to a multiple of 4. FormatError if a field overflows."""
        for name, value in zip(FIELD_NAMES, self.values(), strict=True):
            if not 0 <= value <= FIELD_MAX:
                raise FormatError(
                    f"cpio header of {self.name!r}: {value} does not fit in 8 hex digits", field=name
                )
        if b"\0" in self.name:
            raise FormatError(f"cpio name {self.name!r} contains a NUL byte", field="name")
        head = NEWC_MAGIC + b"".join(b"%08X" % v for v in self.values())
        raw = head + self.name + b"\0"
        return raw + b"\0" * _pad(len(raw))

    @classmethod
    def parse(cls, buf: bytes | memoryview, offset: int) -> tuple[NewcHeader, int]:
        """Decode the header at `buf[offset]`; returns it and the offset of its (aligned) data.

        Raises FormatError naming the offset and field of the first thing that is wrong.
        """
        raw = bytes(buf[offset : offset + HEADER_SIZE])
        if len(raw) < HEADER_SIZE:
            raise FormatError("cpio header is truncated", offset=offset, field="header")
        if not raw.startswith(NEWC_MAGIC):
            what = "old ASCII (odc) cpio; the kernel needs newc" if raw.startswith(OLD_ASCII_MAGIC) else ""
            raise FormatError(f"bad cpio magic {raw[:6]!r} {what}".rstrip(), offset=offset, field="c_magic")
        if not _HEX_HEADER.fullmatch(raw):
            bad = next(
                i for i in range(13) if not re.fullmatch(rb"[0-9A-Fa-f]{8}", raw[6 + 8 * i : 14 + 8 * i])
            )
            raise FormatError(
                "cpio header field is not hexadecimal", offset=offset + 6 + 8 * bad, field=FIELD_NAMES[bad]
            )
        values = [int(raw[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        namesize = values[11]
        if not 1 <= namesize <= PATH_MAX:
            raise FormatError(
                f"cpio name size {namesize} is not in 1..{PATH_MAX}", offset=offset + 94, field="c_namesize"
            )
        name_at = offset + HEADER_SIZE
        name = bytes(buf[name_at : name_at + namesize])
        if len(name) < namesize:
            raise FormatError("cpio name is truncated", offset=name_at, field="name")
        if name[-1] != 0 or b"\0" in name[:-1]:
            raise FormatError("cpio name is not a NUL-terminated string", offset=name_at, field="name")
        kw = dict(zip(FIELD_NAMES, values, strict=True))
        del kw["c_namesize"]
        header = cls(**kw, name=name[:-1])
        data_at = name_at + namesize
        return header, data_at + _pad(data_at)


FIELD_NAMES = (
    "c_ino",
    "c_mode",
    "c_uid",
    "c_gid",
    "c_nlink",
    "c_mtime",
    "c_filesize",
    "c_devmajor",
    "c_devminor",
    "c_rdevmajor",
    "c_rdevminor",
    "c_namesize",
    "c_check",
)
assert [f.name for f in fields(NewcHeader) if f.name != "name"] == [
    n for n in FIELD_NAMES if n != "c_namesize"
]
assert len(NewcHeader().pack()) == HEADER_SIZE + 2  # 110 + NUL, padded to 112
assert len(NEWC_MAGIC) + 8 * len(FIELD_NAMES) == HEADER_SIZE


# -- archive writer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioOptions:
    """How to write an archive; nothing here depends on the host.

    mtime: used for entries whose Entry.mtime is None; the caller passes SOURCE_DATE_EPOCH or a
        fixed value (never the wall clock).
    pad_trailer_to: the archive is padded with zeros to a multiple of this (GNU cpio: 512). Use 4 for
        no padding beyond the format's own alignment.
    """

    mtime: int = 0
    pad_trailer_to: int = GNU_BLOCK_SIZE

    def __post_init__(self) -> None:
        if not 0 <= self.mtime <= FIELD_MAX:
            raise FormatError(f"mtime {self.mtime} cannot be stored in a newc header", field="c_mtime")
        if self.pad_trailer_to <= 0 or self.pad_trailer_to % ALIGN:
            raise FormatError(f"pad_trailer_to={self.pad_trailer_to} is not a positive multiple of {ALIGN}")


@dataclass(frozen=True)
class CpioStats:
    entries: int  # records written, without the trailer
    data_bytes: int  # file contents and symlink targets
    size: int  # archive bytes, including trailer and padding (before compression)


class _ArchiveState:
    """The writer's mutable state: output offset and the inode counter (tarfile's self.offset)."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.offset = 0
        self.next_ino = 0  # GNU --renumber-inodes starts at 0 (the root directory)
        self.entries = 0
        self.data_bytes = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def take_ino(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def record(self, header: NewcHeader, data: bytes = b"") -> None:
        self.write(header.pack())
        if data:
            self.write(data + b"\0" * _pad(len(data)))
        self.entries += 1
        self.data_bytes += len(data)

    def record_stream(self, header: NewcHeader, src: BinaryIO, what: str) -> None:
        """A record whose data is streamed from `src` (which must hold exactly c_filesize bytes)."""
        self.write(header.pack())
        left = header.c_filesize
        while left:
            chunk = src.read(min(COPY_CHUNK, left))
            if not chunk:
                raise FormatError(f"{what} shrank while being archived ({left} bytes missing)")
            self.write(chunk)
            left -= len(chunk)
        if src.read(1):
            raise FormatError(f"{what} grew while being archived")
        self.write(b"\0" * _pad(header.c_filesize))
        self.entries += 1
        self.data_bytes += header.c_filesize


def cpio_name(path: str) -> bytes:
    """The archive name of an image path: no leading slash, the root is "." (as `find .` gives)."""
    name = path.lstrip("/") or "."
    raw = os.fsencode(name)
    if len(raw) + 1 > PATH_MAX:
        raise FormatError(f"{path}: name longer than PATH_MAX ({PATH_MAX}) cannot be unpacked by the kernel")
    return raw


@dataclass
class _Inode:
    """A regular file and its names (the FILE entry and the HARDLINKs to it), in archive order."""

    file: Entry
    names: list[str] = field(default_factory=list)
    ino: int | None = None
    deferred: list[str] = field(default_factory=list)


def _inodes(entries: Sequence[Entry]) -> dict[str, _Inode]:
    """Path of every FILE/HARDLINK entry -> its inode (shared by all names of the file)."""
    by_file: dict[str, _Inode] = {}
    for e in entries:
        if e.kind is Kind.FILE:
            by_file[e.path] = _Inode(e)
    out: dict[str, _Inode] = {}
    for e in entries:
        if e.kind is Kind.FILE or e.kind is Kind.HARDLINK:
            key = e.path if e.kind is Kind.FILE else (e.target or "")
            inode = by_file.get(key)
            if inode is None:
                raise FormatError(
                    f"hard link {e.path} names {e.target}, which is not a regular file in the image"
                )
            inode.names.append(e.path)
            out[e.path] = inode
    return out


def _dir_nlinks(entries: Sequence[Entry]) -> dict[str, int]:
    """st_nlink of each directory on a real filesystem: ".", its own name, and each subdirectory's ".."."""
    nlink = {e.path: 2 for e in entries if e.kind is Kind.DIR}
    for e in entries:
        if e.kind is Kind.DIR and e.path != "/":
            nlink[e.parent] = nlink.get(e.parent, 2) + 1
    return nlink


def _header(e: Entry, ino: int, nlink: int, size: int, options: CpioOptions, name: str) -> NewcHeader:
    major, minor = e.rdev or (0, 0)
    return NewcHeader(
        c_ino=ino,
        c_mode=e.st_mode if e.kind is not Kind.HARDLINK else stat.S_IFREG | e.mode,
        c_uid=e.uid,
        c_gid=e.gid,
        c_nlink=nlink,
        c_mtime=options.mtime if e.mtime is None else e.mtime,
        c_filesize=size,
        c_rdevmajor=major,
        c_rdevminor=minor,
        name=cpio_name(name),
    )


def write_cpio(manifest: Manifest, sysroot: Sysroot, out: BinaryIO, options: CpioOptions) -> CpioStats:
    """Write `manifest` as one newc archive (with trailer) to `out`; file data is streamed."""
    entries = manifest.sorted()
    inodes = _inodes(entries)
    dir_nlink = _dir_nlinks(entries)
    st = _ArchiveState(out)
    for e in entries:
        if e.kind is Kind.FILE or e.kind is Kind.HARDLINK:
            _write_name(st, inodes[e.path], e.path, sysroot, options)
        elif e.kind is Kind.SYMLINK:
            target = os.fsencode(e.target or "")
            if len(target) > PATH_MAX:
                raise FormatError(f"{e.path}: symlink target longer than PATH_MAX ({PATH_MAX})")
            st.record(_header(e, st.take_ino(), 1, len(target), options, e.path), target)
        else:
            nlink = dir_nlink[e.path] if e.kind is Kind.DIR else 1
            st.record(_header(e, st.take_ino(), nlink, 0, options, e.path))
    st.write(NewcHeader(name=TRAILER.encode()).pack())
    st.write(b"\0" * _pad(st.offset, options.pad_trailer_to))
    return CpioStats(entries=st.entries, data_bytes=st.data_bytes, size=st.offset)


def _write_name(st: _ArchiveState, inode: _Inode, path: str, sysroot: Sysroot, options: CpioOptions) -> None:
    """One name of a regular file, GNU style: defer all names but the last, which carries the data."""
    if inode.ino is None:
        inode.ino = st.take_ino()
    if path != inode.names[-1]:
        inode.deferred.append(path)
        return
    f = inode.file
    nlink = len(inode.names)
    for name in reversed(inode.deferred):  # most recent first, as GNU cpio 2.13 does
        st.record(_header(f, inode.ino, nlink, 0, options, name))
    size = entry_size(f, sysroot)
    header = _header(f, inode.ino, nlink, size, options, path)
    with open_entry(f, sysroot) as src:
        st.record_stream(header, src, f"{f.path} (from {f.source or 'inline data'})")


# -- multi-segment initramfs ------------------------------------------------------------------------


class Segment(NamedTuple):
    """One archive of an initramfs: e.g. an uncompressed early cpio (microcode), then the main one."""

    manifest: Manifest
    compression: Compression


@dataclass(frozen=True)
class SegmentStats:
    compression: Compression
    offset: int  # in the initramfs file
    size: int  # bytes in the file, including padding
    cpio: CpioStats


class _CountingWriter:
    def __init__(self, out: BinaryIO):
        self.out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.count += len(data)
        return len(data)


def write_initramfs(
    out: BinaryIO,
    segments: Sequence[tuple[Manifest, Compression]],
    sysroot: Sysroot,
    options: CpioOptions,
    *,
    levels: dict[Compression, int] | None = None,
) -> list[SegmentStats]:
    """Concatenate one archive per segment, each compressed as asked; all but the last padded to 4.

    init/initramfs.c unpack_to_rootfs() reads segments back to back: an uncompressed archive must
    start 4-aligned, zero bytes between segments are skipped, and a compressed segment ends where
    its decompressor says (gzip, xz and zstd decode exactly one stream/frame and report the bytes
    they used; lib/decompress_unzstd.c loops until the frame is complete). The last segment is not
    padded, so that e.g. `zstd -d` accepts the tail of the file as is. lz4 legacy has no end mark,
    so an lz4 segment that is not last is followed by LZ4_END_OF_STREAM (a zero chunk size, where
    lib/decompress_unlz4.c stops).
    """
    counter = _CountingWriter(out)
    stats = []
    for i, (manifest, compression) in enumerate(segments):
        start = counter.count
        level = (levels or {}).get(compression)
        with open_compressor(counter, compression, level) as w:  # type: ignore[arg-type]
            cpio_stats = write_cpio(manifest, sysroot, w, options)  # type: ignore[arg-type]
        if i + 1 < len(segments):  # nothing after the last segment: its own tool reads it unchanged
            if compression is Compression.LZ4:
                counter.write(b"\0" * _pad(counter.count) + LZ4_END_OF_STREAM)
            counter.write(b"\0" * _pad(counter.count))
        stats.append(SegmentStats(Compression(compression), start, counter.count - start, cpio_stats))
    return stats


# -- reader -----------------------------------------------------------------------------------------


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

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                # mapped, not read: the page cache holds the file once; members are views into it
                size = os.fstat(f.fileno()).st_size
                raw: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
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

    # -- parsing ------------------------------------------------------------------------------------
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
                return end + _pad(end), len(records)
            records.append(_Record(pos, header, _member_path(header, pos), buf[data_at:end]))
            pos = end + _pad(end)

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
            f"{r.path} has an unknown file type (mode {mode:o})", offset=r.offset + 14, field="c_mode"
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

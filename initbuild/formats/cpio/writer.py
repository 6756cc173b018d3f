"""Write a Manifest as a newc archive, and several archives (each compressed its own way) as an initramfs.

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

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from ...errors import FormatError
from ...manifest import Entry, Kind, Manifest, entry_size, open_entry
from ...sysroot import Sysroot
from ..compress import LZ4_END_OF_STREAM, Compression, open_compressor
from .newc import ALIGN, FIELD_MAX, PATH_MAX, TRAILER, NewcHeader, padding

GNU_BLOCK_SIZE = 512  # GNU cpio pads the whole archive to its I/O block size
COPY_CHUNK = 1 << 20  # file data is streamed in pieces of this size, never read whole


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
            self.write(data + b"\0" * padding(len(data)))
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
        self.write(b"\0" * padding(header.c_filesize))
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
    st.write(b"\0" * padding(st.offset, options.pad_trailer_to))
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


# -- multi-segment initramfs -----------------------------------------------------------------------


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
                counter.write(b"\0" * padding(counter.count) + LZ4_END_OF_STREAM)
            counter.write(b"\0" * padding(counter.count))
        stats.append(SegmentStats(Compression(compression), start, counter.count - start, cpio_stats))
    return stats

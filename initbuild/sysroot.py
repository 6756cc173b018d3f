"""Sysroot: the one object through which initbuild reads its source tree.

Paths given to a Sysroot are *image-absolute* POSIX strings ("/usr/bin/sh"), interpreted inside the
sysroot directory. Symbolic links are resolved inside the sysroot as the kernel would after a chroot:
an absolute target restarts at the sysroot, and ".." never climbs above it. Nothing here writes.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from .errors import ResolveError

MAX_SYMLINKS = 40  # same limit as Linux (MAXSYMLINKS)
# Files stored compressed whose content is used decompressed (kernel modules: .ko.xz, .ko.zst, .ko.gz),
# told by the suffix as kmod and the kernel's module loader tell them.
COMPRESSED_SUFFIXES = (".xz", ".zst", ".gz")
XZ_FOOTER = 12  # CRC32, Backward Size, Stream Flags, "YZ" (xz-file-format 2.1.2)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def strip_compression(path: str) -> str:
    """ "erofs.ko.xz" -> "erofs.ko": the name of a compressed file's decompressed content."""
    for suffix in COMPRESSED_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def normpath(path: str) -> str:
    """Normalise an image path to the form "/a/b" (no "..", no trailing slash). ".." stops at "/"."""
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/" + "/".join(parts)


class Sysroot:
    """A directory tree read as if it were "/"."""

    def __init__(self, root: str | os.PathLike[str] = "/"):
        self.root = Path(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"Sysroot({str(self.root)!r})"

    # -- path resolution ------------------------------------------------------------------------
    def host_path(self, path: str) -> Path:
        """Host path of an image path, *without* resolving symlinks."""
        p = normpath(path)
        return self.root / p.lstrip("/") if p != "/" else self.root

    def resolve(self, path: str, *, follow_final: bool = True) -> str:
        """Resolve symlinks of `path` inside the sysroot; returns a normalised image path.

        Missing components are allowed (the unresolved rest is appended), like os.path.realpath.
        """
        todo = [p for p in path.split("/") if p not in ("", ".")]
        todo.reverse()
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, part])
            hp = self.host_path(candidate)
            is_last = not todo
            try:
                st = os.lstat(hp)
            except OSError:
                done.append(part)
                continue
            if stat.S_ISLNK(st.st_mode) and (follow_final or not is_last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise ResolveError(f"too many levels of symbolic links resolving {path} in {self.root}")
                target = os.readlink(hp)
                rest = [p for p in target.split("/") if p not in ("", ".")]
                if target.startswith("/"):
                    done = []
                todo.extend(reversed(rest))
                continue
            done.append(part)
        return "/" + "/".join(done)

    def symlink_chain(self, path: str) -> list[tuple[str, str]]:
        """The symlinks met while resolving `path`, as (link path, target) pairs in order.

        Used to reproduce usr-merge style links (/lib -> usr/lib) in the image.
        """
        chain: list[tuple[str, str]] = []
        todo = [p for p in path.split("/") if p not in ("", ".")]
        todo.reverse()
        done: list[str] = []
        while todo and len(chain) <= MAX_SYMLINKS:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, part])
            hp = self.host_path(candidate)
            if hp.is_symlink():
                target = os.readlink(hp)
                chain.append((candidate, target))
                if target.startswith("/"):
                    done = []
                todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            done.append(part)
        return chain

    # -- queries ------------------------------------------------------------------------------------
    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(self.host_path(path))

    def stat(self, path: str) -> os.stat_result:
        return os.lstat(self.host_path(self.resolve(path)))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.host_path(self.resolve(path)))

    def lexists(self, path: str) -> bool:
        return os.path.lexists(self.host_path(path))

    def is_file(self, path: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(path).st_mode)
        except OSError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    def is_symlink(self, path: str) -> bool:
        return self.host_path(path).is_symlink()

    def readlink(self, path: str) -> str:
        return os.readlink(self.host_path(path))

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a directory (symlinks in `path` resolved)."""
        return sorted(os.listdir(self.host_path(self.resolve(path))))

    def walk(self, path: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """os.walk over an image directory, yielding image paths, sorted, not following symlinks."""
        top = self.resolve(path)
        base = self.host_path(top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            filenames.sort()
            rel = os.path.relpath(dirpath, base)
            yield (top if rel == "." else posixpath.join(top, rel)), dirnames, filenames

    def glob(self, pattern: str) -> list[str]:
        """Image paths matching a glob pattern (sorted)."""
        out = []
        for hp in self.root.glob(pattern.lstrip("/")):
            out.append("/" + hp.relative_to(self.root).as_posix())
        return sorted(out)

    # -- content ------------------------------------------------------------------------------------
    def open(self, path: str) -> BinaryIO:
        """Open a regular file for reading (symlinks resolved inside the sysroot)."""
        hp = self.host_path(self.resolve(path))
        try:
            return open(hp, "rb")
        except OSError as e:
            raise ResolveError(f"cannot read {path} in sysroot {self.root}: {e.strerror}") from e

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def read_decompressed(self, path: str) -> bytes:
        """A file's content decompressed by its suffix (.xz, .zst, .gz); any other file as it is."""
        data = self.read_bytes(path)
        try:
            if path.endswith(".xz"):
                return lzma.decompress(data)
            if path.endswith(".zst"):
                return _unzstd(data)
            if path.endswith(".gz"):
                return gzip.decompress(data)
        except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as e:
            raise ResolveError(f"cannot decompress {path} in sysroot {self.root}: {e}") from e
        return data

    def decompressed_size(self, path: str) -> int:
        """len(read_decompressed(path)), without decompressing when the file records it (the xz index,
        the zstd frame header): writers size every file before they read one."""
        if not path.endswith(COMPRESSED_SUFFIXES):
            return self.stat(path).st_size
        with self.open(path) as f:
            size = _recorded_size(path, f, self.stat(path).st_size)
        return size if size is not None else len(self.read_decompressed(path))

    def listxattr(self, path: str) -> list[tuple[str, bytes]]:
        """Extended attributes of a path (not following symlinks), sorted; [] where unsupported."""
        hp = self.host_path(path)
        try:
            names = os.listxattr(hp, follow_symlinks=False)
        except OSError:
            return []
        out = []
        for n in sorted(names):
            try:
                out.append((n, os.getxattr(hp, n, follow_symlinks=False)))
            except OSError:
                continue
        return out


def _unzstd(data: bytes) -> bytes:
    """Every frame of a zstd file (frames may not record their size: a streaming compressor's don't);
    a truncated frame is an error, as with xz and gzip."""
    out = []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        if not d.eof:
            raise zstandard.ZstdError("the file ends inside a frame")
        data = d.unused_data
    return b"".join(out)


def _recorded_size(path: str, f: BinaryIO, length: int) -> int | None:
    """The decompressed size a compressed file records about itself; None when it records none, or
    none that covers the whole file (a gzip trailer describes only the last member: always counted)."""
    if path.endswith(".zst"):
        return _zstd_size(f, length)
    if path.endswith(".xz"):
        return _xz_size(f, length)
    return None


def _zstd_size(f: BinaryIO, length: int) -> int | None:
    """The content size of a one-frame .zst file, from its frame header (RFC 8878 3.1.1)."""
    head = f.read(18)
    size = zstandard.frame_content_size(head) if head.startswith(ZSTD_MAGIC) else -1
    if size < 0:
        return None  # not recorded (a streaming compressor's frame)
    fhd = head[4]
    pos = zstandard.frame_header_size(head)
    while True:  # walk the block headers to the end of the frame: is it the whole file?
        f.seek(pos)
        block = f.read(3)
        if len(block) < 3:
            return None
        header = int.from_bytes(block, "little")
        kind, bsize = (header >> 1) & 3, header >> 3
        pos += 3 + (1 if kind == 1 else bsize)  # an RLE block stores one byte
        if kind == 3:
            return None
        if header & 1:  # Last_Block
            break
    pos += 4 if fhd & 0x04 else 0  # Content_Checksum
    return size if pos == length else None


def _xz_size(f: BinaryIO, length: int) -> int | None:
    """The uncompressed size of a one-stream .xz file, summed from its index (xz-file-format 4)."""
    if length < 2 * XZ_FOOTER:
        return None
    f.seek(length - XZ_FOOTER)
    footer = f.read(XZ_FOOTER)
    if footer[-2:] != b"YZ":
        return None
    index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
    if index_size > length - 2 * XZ_FOOTER:
        return None
    f.seek(length - XZ_FOOTER - index_size)
    index = f.read(index_size)
    if index[:1] != b"\0":
        return None
    pos = 1
    values: list[int] = []
    try:
        count, pos = _vli(index, pos)
        for _ in range(2 * count):  # (unpadded size, uncompressed size) per block
            value, pos = _vli(index, pos)
            values.append(value)
    except IndexError:
        return None
    blocks = sum(-(-unpadded // 4) * 4 for unpadded in values[::2])
    if XZ_FOOTER + blocks + index_size + XZ_FOOTER != length:
        return None  # several streams, or padding: the index describes only part of the file
    return sum(values[1::2])


def _vli(buf: bytes, pos: int) -> tuple[int, int]:
    """An xz variable-length integer at `pos`: 7 bits per byte, least significant first."""
    value = 0
    for shift in range(0, 63, 7):
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
    raise IndexError("xz integer longer than 9 bytes")

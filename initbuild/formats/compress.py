"""Compression as a stream layer: the five formats the kernel can unpack an initramfs from.

Writers never know about compression: they write to whatever `open_compressor()` yields, the way
tarfile's `_Stream` sits between TarFile and the file. Every choice here is one the kernel's boot-time
decompressors (lib/decompress_*.c, picked by magic in lib/decompress.c) accept:

* gzip  - zlib deflate in a gzip wrapper (mtime 0, no file name: reproducible). Level 9.
* xz    - an .xz stream with a CRC32 check and one LZMA2 filter. lib/decompress_unxz.c (xz_dec) only
          verifies CRC32 or no check ("--check=crc32", as scripts/xz_wrap.sh uses); CRC64/SHA-256
          streams are rejected. The default preset 6 uses an 8 MiB dictionary; for initramfs the
          kernel decoder runs in XZ_DYNALLOC mode and allocates the dictionary the stream asks for
          (scripts/xz_wrap.sh itself uses up to 32 MiB). No BCJ filter: it only helps executables and
          its decoder is architecture-specific (CONFIG_XZ_DEC_X86 ...).
* zstd  - one zstd frame with a checksum and without a content size (we stream). Level 15, the level
          dracut-ng uses: near level 19's ratio for a fraction of the time, and its window (<= 8 MiB)
          is far below what lib/decompress_unzstd.c accepts (ZSTD_WINDOWSIZE_MAX, 128 MiB). The kernel
          decompressor handles streaming frames.
* lz4   - the *legacy* lz4 format ("lz4 -l"): magic 02 21 4C 18, then blocks of le32 compressed size +
          raw lz4 block, each block the compression of at most 8 MiB of input. lib/decompress_unlz4.c
          reads only this format (never the lz4 frame format, magic 04 22 4D 18) and decodes each block
          into an 8 MiB buffer. Level 9 (lz4hc), as "lz4 -9 -l"; our output is byte-identical to it.
          The legacy format has no end mark: the kernel stops at the end of the buffer, at fewer than
          4 bytes left, or at a zero chunk size (see `LZ4_END_OF_STREAM`), and skips a repeated magic.
* none  - bytes pass through unchanged.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import lz4.block  # type: ignore[import-untyped]
import zstandard

from ..errors import FormatError
from ..profile import Compression  # the one enum of this choice; this module implements each member

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"  # le32 0x184C2102, ARCHIVE_MAGICNUMBER in lib/decompress_unlz4.c

MAGIC = {  # the first bytes of a stream of each format, as lib/decompress.c matches them
    Compression.NONE: b"",  # uncompressed data has no magic of its own
    Compression.GZIP: GZIP_MAGIC,
    Compression.XZ: XZ_MAGIC,
    Compression.ZSTD: ZSTD_MAGIC,
    Compression.LZ4: LZ4_LEGACY_MAGIC,
}
DEFAULT_LEVEL = {
    Compression.NONE: 0,
    Compression.GZIP: 9,
    Compression.XZ: 6,
    Compression.ZSTD: 15,
    Compression.LZ4: 9,
}
# lz4 legacy framing (lib/decompress_unlz4.c: LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE; lz4io.c: LEGACY_BLOCKSIZE)
LZ4_LEGACY_BLOCK_SIZE = 8 << 20
LZ4_HC_MIN_LEVEL = 3  # below this, lz4io uses the fast compressor, as we do
LZ4_MAX_CHUNK = LZ4_LEGACY_BLOCK_SIZE + LZ4_LEGACY_BLOCK_SIZE // 255 + 16  # LZ4_compressBound(8 MiB)
# In an in-memory initramfs, unlz4 ends a stream at a zero chunk size. Writing these 4 bytes after an
# lz4 segment lets another segment follow it (the lz4 CLI itself rejects them, so standalone .lz4
# output never ends with them).
LZ4_END_OF_STREAM = b"\0\0\0\0"
_LE32 = struct.Struct("<I")

COPY_CHUNK = 1 << 20  # bytes per read when streaming


def detect(head: bytes) -> Compression | None:
    """The compressed format `head` starts with, or None (uncompressed data has no magic)."""
    for c in (Compression.GZIP, Compression.XZ, Compression.ZSTD, Compression.LZ4):
        if head.startswith(MAGIC[c]):
            return c
    return None


# -- compression ------------------------------------------------------------------------------------


class _Encoder(Protocol):
    """The interface zlib, lzma and zstandard compressor objects share."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Lz4LegacyEncoder:
    """compress()/flush() producing the lz4 legacy format.

    Blocks are independent, so full ones are compressed on a thread pool (python-lz4 releases the
    GIL) and emitted in order; at most `workers` + 1 blocks of 8 MiB are held. The bytes do not depend
    on the number of workers.
    """

    def __init__(self, level: int, workers: int = 0):
        self._mode = "high_compression" if level >= LZ4_HC_MIN_LEVEL else "default"
        self._level = level
        self._buf = bytearray()
        self._started = False
        self._workers = workers or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[bytes]] = deque()

    def _header(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return LZ4_LEGACY_MAGIC

    def _block(self, data: bytes | bytearray) -> bytes:
        if self._mode == "high_compression":
            comp = lz4.block.compress(data, mode=self._mode, compression=self._level, store_size=False)
        else:
            comp = lz4.block.compress(data, mode=self._mode, store_size=False)
        return _LE32.pack(len(comp)) + bytes(comp)

    def compress(self, data: bytes, /) -> bytes:
        out = [self._header()]
        self._buf += data
        while len(self._buf) >= LZ4_LEGACY_BLOCK_SIZE:
            block = bytes(self._buf[:LZ4_LEGACY_BLOCK_SIZE])
            del self._buf[:LZ4_LEGACY_BLOCK_SIZE]
            if self._workers == 1:
                out.append(self._block(block))
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="initbuild-lz4")
            self._pending.append(self._pool.submit(self._block, block))
            while len(self._pending) > self._workers or (self._pending and self._pending[0].done()):
                out.append(self._pending.popleft().result())
        return b"".join(out)

    def flush(self) -> bytes:
        out = [self._header()]
        while self._pending:
            out.append(self._pending.popleft().result())
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._buf:
            out.append(self._block(self._buf))
            self._buf.clear()
        return b"".join(out)


class _NullEncoder:
    def compress(self, data: bytes, /) -> bytes:
        return bytes(data)

    def flush(self) -> bytes:
        return b""


def _encoder(compression: Compression, level: int) -> _Encoder:
    if compression is Compression.GZIP:
        # wbits 16+15: gzip wrapper with mtime 0 and no name, so the output depends on content only
        return zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if compression is Compression.XZ:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": level}]
        return lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if compression is Compression.ZSTD:
        # threads=-1: one worker per CPU. Any threads >= 1 gives the same bytes (only 0, zstd's
        # single-threaded mode, differs), so images stay reproducible across machines.
        cctx = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=False, threads=-1
        )
        return cctx.compressobj()
    if compression is Compression.LZ4:
        return _Lz4LegacyEncoder(level)
    return _NullEncoder()


class CompressWriter(io.RawIOBase):
    """A write-only stream that compresses into `out`. Closing it finishes the stream, not `out`."""

    def __init__(self, out: BinaryIO, encoder: _Encoder):
        super().__init__()
        self._out = out
        self._encoder = encoder
        self.bytes_in = 0  # uncompressed bytes written so far
        self.bytes_out = 0  # compressed bytes passed to `out`

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a finished compression stream")
        n = len(data)
        self.bytes_in += n
        self._emit(self._encoder.compress(bytes(data)))
        return n

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self._out.write(chunk)
            self.bytes_out += len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._emit(self._encoder.flush())
        super().close()


def _check_level(compression: Compression, level: int | None) -> int:
    if level is None:
        return DEFAULT_LEVEL[compression]
    if level not in compression.levels:
        lo, hi = compression.levels.start, compression.levels.stop - 1
        raise FormatError(f"{compression} compression level {level} is not in {lo}..{hi}", field="level")
    return level


@contextlib.contextmanager
def open_compressor(
    out: BinaryIO, compression: Compression, level: int | None = None
) -> Iterator[CompressWriter]:
    """Yield a writer whose bytes reach `out` compressed; the stream is finished on exit.

    Memory stays bounded (one lz4 block at most). `out` is left open. On an exception the stream is
    left unfinished: the caller is discarding the output anyway.
    """
    writer = CompressWriter(out, _encoder(Compression(compression), _check_level(compression, level)))
    yield writer
    writer.close()


def compress(data: bytes, compression: Compression, level: int | None = None) -> bytes:
    buf = io.BytesIO()
    with open_compressor(buf, compression, level) as w:
        w.write(data)
    return buf.getvalue()


# -- decompression ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """One compressed stream found at some offset of a buffer, and where it ended."""

    compression: Compression
    data: bytes | bytearray  # built in place: a large image is not held twice while joining
    end: int  # offset just after the stream's last byte


def decompress_stream(buf: bytes | memoryview, offset: int = 0) -> Decoded:
    """Decompress the one stream starting at `buf[offset]`; trailing bytes are left alone.

    Raises FormatError (with the offset of the stream) on an unknown magic or corrupt data.
    """
    out = bytearray()
    compression, end = decompress_stream_into(buf, offset, out.extend)
    return Decoded(compression, out, end)


def decompress_stream_into(
    buf: bytes | memoryview, offset: int, sink: Callable[[bytes], object]
) -> tuple[Compression, int]:
    """decompress_stream, handing the output to `sink` piece by piece (a file's write: the whole of
    a large image is never in memory). Returns the compression and the offset just after the stream."""
    view = memoryview(buf)[offset:]
    compression = detect(bytes(view[:8]))
    if compression is None:
        raise FormatError("no known compression magic", offset=offset, field="magic")
    try:
        if compression is Compression.LZ4:
            used = _unlz4(view, offset, sink)
        else:
            used = _decode_with(_decoder(compression), view, sink)
    except FormatError:
        raise
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, ValueError, EOFError, MemoryError) as e:
        raise FormatError(f"corrupt {compression} data: {e}", offset=offset) from e
    return compression, offset + used


class _Decoder(Protocol):
    @property
    def unused_data(self) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, /) -> bytes: ...


def _decoder(compression: Compression) -> _Decoder:
    if compression is Compression.GZIP:
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if compression is Compression.XZ:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return zstandard.ZstdDecompressor().decompressobj()


def _decode_with(dec: _Decoder, view: memoryview, sink: Callable[[bytes], object]) -> int:
    pos = 0
    while pos < len(view) and not dec.eof:
        chunk = bytes(view[pos : pos + COPY_CHUNK])
        pos += len(chunk)
        sink(dec.decompress(chunk))
    if not dec.eof:
        raise FormatError("compressed stream is truncated", offset=pos)
    return pos - len(dec.unused_data)


def _unlz4(view: memoryview, base: int, sink: Callable[[bytes], object]) -> int:
    """Decode an lz4 legacy stream with the end rules of lib/decompress_unlz4.c (buffer mode)."""
    pos = len(LZ4_LEGACY_MAGIC)
    while len(view) - pos >= 4:
        (chunk,) = _LE32.unpack_from(view, pos)
        if chunk == 0:  # end of stream (padding before a following segment)
            break
        if view[pos : pos + 4] == LZ4_LEGACY_MAGIC:  # concatenated legacy streams
            pos += 4
            continue
        if chunk > LZ4_MAX_CHUNK:
            # not an lz4 block: another segment follows without the zero chunk size
            raise FormatError(f"lz4 chunk size {chunk} is too large", offset=base + pos, field="chunk size")
        if pos + 4 + chunk > len(view):
            raise FormatError("lz4 chunk is truncated", offset=base + pos, field="chunk size")
        block = bytes(view[pos + 4 : pos + 4 + chunk])
        try:
            sink(lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK_SIZE))
        except lz4.block.LZ4BlockError as e:
            raise FormatError(f"corrupt lz4 block: {e}", offset=base + pos) from e
        pos += 4 + chunk
    return pos


def decompress_all(data: bytes) -> bytes:
    """Decompress data that is entirely one compressed stream (or uncompressed: returned as is)."""
    if detect(data[:8]) is None:
        return data
    dec = decompress_stream(data)
    if any(data[dec.end :]):
        raise FormatError("trailing garbage after the compressed stream", offset=dec.end)
    return bytes(dec.data)

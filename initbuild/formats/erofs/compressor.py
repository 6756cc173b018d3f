"""Cut file data into pclusters: LZ4 extents that fill their pcluster almost exactly, and PLAIN runs.

Compression fills each pcluster of `maxc` blocks almost exactly, like mkfs.erofs's fixed-output
compression: extents start anywhere inside an lcluster (docs/erofs-format.md §7.8), with big
pclusters. The fixed-output call comes from the system's liblz4 (lz4native.py) when it has one that
is safe; otherwise it is emulated with python-lz4 (lz4emul.py). `INITBUILD_LZ4=python` forces the
emulation, `INITBUILD_LZ4=native` requires liblz4. Pure functions of bytes: nothing here knows about
files, inodes or the image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import lz4.block

from ...errors import ConfigError, FormatError
from . import lz4emul, lz4native
from .extents import Piece, add_plain, compressed_piece, extent_end_limit
from .format import BLOCK_SIZE
from .lz4emul import SKIP_RATIO, Compress

COMPRESSIONS = ("lz4hc", "lz4", "none")
LZ4_PATH_ENV = "INITBUILD_LZ4"  # "native" | "python"; unset: liblz4 when usable
PYTHON_PATH = "python-lz4 (emulated fixed-output)"
PROBE = 4 * BLOCK_SIZE  # lz4hc is tried where fast LZ4 shrinks this much input below PROBE_LIMIT
PROBE_LIMIT = int(PROBE * SKIP_RATIO)
# The last extent of a chunk (all of a small file) does not fill its pcluster, and only its whole
# blocks count: level 9's deeper search makes it ~0.3% shorter than level 7's, which saves a block
# only when level 7 spills that little into its last block. So it is compressed at level 7, 40%
# faster, and again at level 12 when it spills at most TAIL_RETRY of its length: about as many
# blocks as level 9 with the retry (docs/erofs-format.md §7.11).
FINAL_LEVEL = 7
TAIL_RETRY = 0.015


@dataclass(frozen=True)
class Codec:
    """The LZ4 block compressor of one image: `native` is liblz4's fixed-output call, or None when
    `compress` (python-lz4: (raw, prefix=None, level=None) -> LZ4 block) emulates it."""

    hc: bool  # lz4hc at `level`, else fast LZ4
    level: int
    compress: Compress
    native: lz4native.Liblz4 | None

    @property
    def path(self) -> str:
        """Which implementation ran, for reports: liblz4 and its version, or the emulation."""
        return f"{self.native.name} (fixed-output)" if self.native else PYTHON_PATH


def lz4_codec(compression: str, level: int) -> Codec | None:
    """The codec for a compression name of COMPRESSIONS and an lz4hc level; None for "none"."""
    if compression == "none":
        return None
    choice = os.environ.get(LZ4_PATH_ENV, "")
    if choice not in ("", "native", "python"):
        raise ConfigError(f"{LZ4_PATH_ENV} must be 'native' or 'python', not {choice!r}")
    native = None if choice == "python" else lz4native.load()
    if choice == "native" and native is None:
        raise ConfigError(
            f"{LZ4_PATH_ENV}=native, but {lz4native.SONAME} is missing or older than 1.9.3",
            hint=f"install liblz4-1, or unset {LZ4_PATH_ENV} to use the slower python-lz4 emulation",
        )
    return Codec(compression == "lz4hc", level, _python_compress(compression, level), native)


def _python_compress(compression: str, level: int) -> Compress:
    # store_size=False is mandatory: the kernel would read a size prefix as LZ4 tokens
    # (docs/erofs-format.md §7.6)
    if compression == "lz4":
        kwargs: dict[str, object] = {"mode": "default", "store_size": False}
    else:
        kwargs = {"mode": "high_compression", "compression": level, "store_size": False}

    def compress(raw: memoryview, prefix: memoryview | None = None, level: int | None = None) -> bytes:
        kw = kwargs if level is None else {**kwargs, "compression": level}
        if prefix is None:
            return lz4.block.compress(raw, **kw)
        return lz4.block.compress(raw, dict=prefix, **kw)

    return compress


def segment(data: bytes, codec: Codec, maxc: int) -> list[Piece]:
    """Cut `data` (a chunk starting on an lcluster boundary and ending on one or at EOF) into
    compressed extents of at most `maxc` blocks and PLAIN runs (extents.py)."""
    if codec.native is None:
        return lz4emul.segment(data, codec.compress, maxc, codec.hc)
    return _segment_native(data, codec, codec.native, maxc)


def _segment_native(data: bytes, codec: Codec, lib: lz4native.Liblz4, maxc: int) -> list[Piece]:
    """Each extent is what liblz4 fits into the pcluster, as mkfs.erofs does.

    With lz4hc, input that fast LZ4 cannot shrink is stored PLAIN, PROBE bytes at a time, without
    trying lz4hc on it (which is slowest on such data). The last extent of the chunk, when fast LZ4
    shows that it fits the pcluster, is compressed at FINAL_LEVEL (see there).
    """
    n = len(data)
    cap = maxc * BLOCK_SIZE
    out: list[Piece] = []
    pos = 0
    while pos < n:
        end = extent_end_limit(pos, n)
        if codec.hc and end - pos >= PROBE and not lib.shrinks(data, pos, pos + PROBE, PROBE_LIMIT):
            run = PROBE  # one PLAIN run for all the incompressible windows in a row
            while end - pos - run >= PROBE and not lib.shrinks(
                data, pos + run, pos + run + PROBE, PROBE_LIMIT
            ):
                run += PROBE
            pos += add_plain(out, data, pos, run)
            continue
        level = codec.level if codec.hc else None
        final = level is not None and level > FINAL_LEVEL and end == n and _fits(lib, data, pos, n, cap)
        comp, took = lib.dest_size(data, pos, end, cap, FINAL_LEVEL if final else level)
        if final and pos + took < n:  # fast LZ4 fitted, lz4hc did not: rare
            comp, took = lib.dest_size(data, pos, end, cap, level)
        e = pos + took
        if e == n and level is not None and 0 < len(comp) % BLOCK_SIZE <= len(comp) * TAIL_RETRY:
            # the chunk's last extent spills a little into its last block: the slowest lz4hc
            # level (a few % smaller on small inputs) often saves that block. Only a result one
            # block shorter is any use, and liblz4 gives up as soon as its output passes the limit.
            comp = lib.compress_hc(data, pos, e, 12, len(comp) - len(comp) % BLOCK_SIZE) or comp
        piece = compressed_piece(pos, e, n, comp) if took else None
        if piece is None:
            pos += add_plain(out, data, pos, max(took, BLOCK_SIZE))
            continue
        _check(comp, data, pos, e, lib)
        out.append(piece)
        pos = e
    return out


def _fits(lib: lz4native.Liblz4, data: bytes, pos: int, end: int, cap: int) -> bool:
    """Whether data[pos:end] surely fits `cap` bytes (LZ4's worst case), or does with fast LZ4 (and
    then with lz4hc, nearly always)."""
    n = end - pos
    return n + n // 255 + 16 <= cap or lib.shrinks(data, pos, end, cap)


def _check(comp: bytes, data: bytes, pos: int, end: int, lib: lz4native.Liblz4) -> None:
    """Decode the block with python-lz4's own copy of LZ4: a broken system library must not make an
    image that the kernel cannot read."""
    try:
        ok = lz4.block.decompress(comp, uncompressed_size=end - pos) == data[pos:end]
    except lz4.block.LZ4BlockError:
        ok = False
    if not ok:
        raise FormatError(
            f"{lib.name} produced an LZ4 block that does not decode to its input",
            hint=f"set {LZ4_PATH_ENV}=python to use python-lz4 only",
        )

"""Serialise a Manifest as an EROFS image that Linux 6.1 mounts and fsck.erofs 1.5 accepts.

Three phases (see layout.py for the image shape):

1. data: regular files are cut into chunks and compressed on a thread pool (lz4 releases the
   GIL); results are consumed in canonical order and streamed to blocks 1..D, so memory stays
   bounded by the in-flight window, and the output does not depend on thread timing;
2. metadata: inode records are placed (nids), directory blocks get addresses;
3. serialisation of the metadata area and directory blocks, then block 0 with its checksum.

Compression fills each pcluster of `pcluster_size` bytes almost exactly, like mkfs.erofs's
fixed-output compression: extents start anywhere inside an lcluster (see segment()), with big
pclusters and compact indexes.
"""

from __future__ import annotations

import hashlib
import os
import uuid as uuid_mod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

import lz4.block

from ... import log
from ...errors import ConfigError, FormatError, ResolveError
from ...manifest import Kind, Manifest, entry_size, open_entry
from ...sysroot import Sysroot
from .format import (
    BLKSZBITS,
    BLOCK_SIZE,
    CHECKSUMMED_BYTES,
    COMPR_CFGS_OFFSET,
    DIRENT,
    EROFS_FEATURE_COMPAT_MTIME,
    EROFS_FEATURE_COMPAT_SB_CHKSUM,
    EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER,
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING,
    EROFS_INODE_COMPRESSED_COMPACT,
    EROFS_INODE_FLAT_INLINE,
    EROFS_INODE_FLAT_PLAIN,
    EROFS_INODE_LAYOUT_COMPACT,
    EROFS_INODE_LAYOUT_EXTENDED,
    EROFS_NULL_ADDR,
    EROFS_SUPER_MAGIC_V1,
    EROFS_SUPER_OFFSET,
    INODE_COMPACT,
    INODE_EXTENDED,
    ISLOTBITS,
    LZ4_CFGS_PAYLOAD,
    LZ4_MAX_DISTANCE,
    SB_CHECKSUM_OFFSET,
    SUPERBLOCK,
    XATTR_IBODY_HEADER,
    Z_EROFS_ADVISE_BIG_PCLUSTER_1,
    Z_EROFS_ADVISE_BIG_PCLUSTER_2,
    Z_EROFS_ADVISE_COMPACTED_2B,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_LZ4_CFGS,
    Z_EROFS_MAP_HEADER,
    Z_EROFS_PCLUSTER_MAX_BLOCKS,
    encode_rdev,
    erofs_crc32c,
    i_format,
)
from .layout import (
    MetaAllocator,
    Node,
    collect_nodes,
    compressed_meta_offset,
    name_bytes,
    record_size,
    xattr_icount,
)
from .zmap import MAX_DELTA, Pcluster, encode_compact, lclusters_of

COMPRESSIONS = ("lz4hc", "lz4", "none")
CHUNK_LCLUSTERS = 1024  # 4 MiB of input per compression task: bounds memory, keeps cores busy
# The first compression of an extent takes at most INPUT_PER_BLOCK lclusters per pcluster block
# (lz4hc gets slower per byte beyond its 64 KiB window); filling the pcluster may then extend very
# compressible extents further, up to the 4 MiB chunk.
INPUT_PER_BLOCK = 4
FILL = 0.88  # aim the first compression of an extent at this fraction of the pcluster (rarely over)
FILL_STEP = 0.92  # each top-up step aims at this fraction of the slack left
FILL_STEPS = 8
FILL_MIN_SLACK = 64  # below this, top up with literals only
SKIP_RATIO = 0.995  # fast LZ4 shrinks a window less than this: do not try lz4hc on it
LZ4_WINDOW = 65536
TAIL_RETRY = 0.01  # retry a chunk's last extent at level 12 when it spills this little (of its size)
USE_COMPACT_2B = True  # 2-byte compact index packs, as mkfs.erofs 1.5 writes (notes §7.4)
MIN_KERNEL_BIG_PCLUSTER = (5, 13)  # COMPR_CFGS/BIG_PCLUSTER (notes §2)


@dataclass(frozen=True)
class ErofsOptions:
    compression: str = "lz4hc"  # "lz4hc" | "lz4" | "none"
    level: int = 9  # lz4hc level (1..12); 9 as mkfs.erofs -zlz4hc: 12 is ~4x slower for ~0.3% smaller
    pcluster_size: int = 65536  # max physical bytes per compressed pcluster (4 KiB multiple, <= 1 MiB)
    build_time: int = 0  # seconds: superblock time = time of every compact inode and of mtime=None
    uuid: bytes | None = None  # 16 bytes; None: derived from the image content
    volume_name: str = ""  # at most 15 bytes (6.1 needs a NUL inside the 16-byte field)
    target_kernel: tuple[int, int] = (6, 1)  # oldest kernel that must mount the image
    workers: int = 0  # compression threads; 0 = os.cpu_count()

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"erofs compression must be one of {', '.join(COMPRESSIONS)}, not {self.compression!r}"
            )
        if self.compression == "lz4hc" and not 1 <= self.level <= 12:
            raise ConfigError(f"lz4hc level must be 1..12, not {self.level}")
        blocks, rest = divmod(self.pcluster_size, BLOCK_SIZE)
        if rest or not 1 <= blocks <= Z_EROFS_PCLUSTER_MAX_BLOCKS:
            raise ConfigError(
                f"pcluster_size must be a multiple of {BLOCK_SIZE} up to 1 MiB, not {self.pcluster_size}"
            )
        if self.uuid is not None and len(self.uuid) != 16:
            raise ConfigError("erofs uuid must be 16 bytes")
        if len(self.volume_name.encode()) > 15:
            raise ConfigError(f"erofs volume name {self.volume_name!r} is longer than 15 bytes")
        if self.compression != "none" and self.target_kernel < MIN_KERNEL_BIG_PCLUSTER:
            raise ConfigError(
                f"compressed EROFS images from initbuild need Linux {MIN_KERNEL_BIG_PCLUSTER[0]}."
                f"{MIN_KERNEL_BIG_PCLUSTER[1]}+ (big pclusters); use compression 'none' for older kernels"
            )
        if not 0 <= self.build_time < 1 << 64:
            raise ConfigError(f"build_time {self.build_time} out of range")

    @property
    def max_pcluster_blocks(self) -> int:
        return self.pcluster_size // BLOCK_SIZE


@dataclass(frozen=True)
class ErofsStats:
    blocks: int  # image size in blocks
    inodes: int
    bytes: int  # image size in bytes
    files: int  # regular file inodes
    compressed_files: int
    input_bytes: int  # sum of regular file sizes
    data_blocks: int  # file data (compressed pclusters and plain blocks)
    meta_blocks: int  # inode records
    dir_blocks: int  # non-inlined directory blocks
    max_pcluster_blocks: int
    uuid: str

    def __str__(self) -> str:
        ratio = f"{100 * self.data_blocks * BLOCK_SIZE / self.input_bytes:.1f}%" if self.input_bytes else "-"
        return (
            f"EROFS image: {self.bytes} bytes ({self.blocks} blocks), {self.inodes} inodes, "
            f"{self.compressed_files}/{self.files} files compressed, data {ratio} of input, "
            f"metadata {self.meta_blocks} + directory {self.dir_blocks} blocks, uuid {self.uuid}"
        )


# -- phase 1: file data ------------------------------------------------------------------------------


@dataclass(slots=True)
class Placement:
    """Where a FILE/SYMLINK inode's data went."""

    layout: int = EROFS_INODE_FLAT_PLAIN
    raw_blkaddr: int = 0  # FLAT_*: first full block; COMPRESSED: first pcluster block
    blocks: int = 0  # physical blocks used in the data area
    tail: bytes = b""  # FLAT_INLINE tail
    pclusters: list[Pcluster] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Chunk:
    node: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class _Encoded:
    pieces: list[tuple[Pcluster, bytes]]  # compressed: padded pcluster; plain: raw bytes
    digest: bytes


Compress = Callable[..., bytes]  # (raw, prefix=None, level=None) -> LZ4 block without size prefix


def _compressor(options: ErofsOptions) -> Compress | None:
    """LZ4 block compressor for `options`: compress(raw), or compress(raw, prefix) for a block that
    continues `prefix` (up to 64 KiB of the bytes before raw, which its matches may reach), or with
    another lz4hc `level`."""
    if options.compression == "none":
        return None
    # store_size=False is mandatory: the kernel would read a size prefix as LZ4 tokens (notes §7.6)
    if options.compression == "lz4":
        kwargs: dict[str, object] = {"mode": "default", "store_size": False}
    else:
        kwargs = {"mode": "high_compression", "compression": options.level, "store_size": False}

    def compress(raw: memoryview, prefix: memoryview | None = None, level: int | None = None) -> bytes:
        kw = kwargs if level is None else {**kwargs, "compression": level}
        if prefix is None:
            return lz4.block.compress(raw, **kw)
        return lz4.block.compress(raw, dict=prefix, **kw)

    return compress


def _probe(raw: memoryview | bytes) -> int:
    """Size of the fast LZ4 encoding: ~25x cheaper than lz4hc, used to predict it."""
    return len(lz4.block.compress(raw, mode="default", store_size=False))


def _literal_header(n: int) -> bytes:
    """LZ4 token (match length 0) and length bytes of a final run of n literals."""
    if n < 15:
        return bytes((n << 4,))
    k, r = divmod(n - 15, 255)
    return b"\xf0" + b"\xff" * k + bytes((r,))


def _last_literals(comp: bytes, raw: bytes) -> tuple[int, int] | None:
    """(literal count, header bytes) of the final, literals-only sequence of the LZ4 block `comp`
    that encodes `raw`, or None. A compressor ends every block with such a sequence holding the
    last input bytes verbatim; candidates are checked from the longest, and callers verify the
    block they derive by decompressing it."""
    lo, hi = 0, min(len(comp) - 1, len(raw))
    while lo < hi:  # longest common suffix of comp and raw
        mid = (lo + hi + 1) // 2
        if comp[-mid:] == raw[-mid:]:
            lo = mid
        else:
            hi = mid - 1
    for lit in range(lo, 4, -1):  # LZ4 blocks end with at least 5 literals
        hdr = _literal_header(lit)
        if comp[-lit - len(hdr) : -lit] == hdr:
            return lit, len(hdr)
    return None


def _fill(
    data: bytes, mv: memoryview, s: int, e: int, comp: bytes, compress: Compress, budget: int
) -> tuple[bytes, int]:
    """Grow the extent [s, e) whose LZ4 block is `comp` so that the block nearly fills `budget`
    bytes: the fixed-output layout of mkfs.erofs (notes §7.8), without LZ4_compress_destSize.

    The block's final literal run is cut off and re-encoded together with the next input bytes
    (compressed with the preceding 64 KiB as dictionary, so matches reach back as in one block);
    the result is spliced on. Repeated while a step fits, then the remaining slack is filled
    with raw literals. Every result is checked by decompression; a failing step is dropped.
    """
    n = len(data)
    ratio = len(comp) / (e - s)
    for _ in range(FILL_STEPS):  # compressions, successful or not
        slack = budget - len(comp)
        if slack < FILL_MIN_SLACK or e >= n:
            break
        found = _last_literals(comp, data[s:e])
        if found is None:
            break
        lit, hdr = found
        prefix = len(comp) - lit - hdr
        if prefix <= 0:
            break  # no match at all: nothing to gain
        cut = e - lit
        room = budget - prefix
        dic = mv[max(s, cut - LZ4_WINDOW) : cut]
        end = min(n, e + max(16, int(slack * FILL_STEP / ratio)))
        if n - end < BLOCK_SIZE:
            end = n  # do not leave a sliver behind
        tail = compress(mv[cut:end], dic)
        if len(tail) > room:
            # overshot: the data got less compressible; retry with the ratio just measured
            ratio = max(ratio, len(tail) / (end - cut))
            continue
        merged = comp[:prefix] + tail
        if not _decodes_to(merged, data[s:end]):
            break
        ratio = max(len(tail) - lit - hdr, 1) / (end - e)
        comp, e = merged, end
    if e < n and len(comp) < budget:
        comp, e = _literal_fill(data, s, e, comp, budget)
    return comp, e


def _literal_fill(data: bytes, s: int, e: int, comp: bytes, budget: int) -> tuple[bytes, int]:
    """Extend the final literal run of `comp` with the next input bytes, up to `budget` bytes."""
    found = _last_literals(comp, data[s:e])
    if found is None:
        return comp, e
    lit, hdr = found
    base = len(comp) - lit - hdr
    k = min(len(data) - e, budget - len(comp))
    while k > 0 and base + len(_literal_header(lit + k)) + lit + k > budget:
        k -= 1
    if k <= 0:
        return comp, e
    merged = comp[:base] + _literal_header(lit + k) + data[e - lit : e + k]
    if not _decodes_to(merged, data[s : e + k]):
        return comp, e
    return merged, e + k


def _decodes_to(block: bytes, raw: bytes) -> bool:
    try:
        return lz4.block.decompress(block, uncompressed_size=len(raw)) == raw
    except lz4.block.LZ4BlockError:
        return False


def segment(data: bytes, compress: Compress, maxc: int, hc: bool = True) -> list[tuple[Pcluster, bytes]]:
    """Cut `data` (a chunk starting on an lcluster boundary and ending on one or at EOF) into
    compressed extents and PLAIN runs.

    Extents start at any byte (notes §7.4-7.8: clusterofs != 0). Each compressed extent is sized
    so that its LZ4 block fills `maxc` blocks (the fixed-output layout mkfs.erofs writes): the
    input length is predicted from a fast-LZ4 probe and the previous extent, then `_fill` tops
    the block up. Compressed data is right-aligned (ZERO_PADDING, notes §7.6); PLAIN runs are
    returned unpadded. `hc`: probe with fast LZ4 and skip data it cannot shrink at all.
    """
    mv = memoryview(data)
    n = len(data)
    cap = maxc * BLOCK_SIZE
    target = cap * FILL
    nmax = min(MAX_DELTA, max(16, INPUT_PER_BLOCK * maxc)) * BLOCK_SIZE
    out: list[tuple[Pcluster, bytes]] = []
    ratio = 0.5  # compressed/input of the previous extent
    kf = 0.85  # lz4hc size / fast-LZ4 size, learnt along the chunk
    pos = 0
    while pos < n:
        rem = n - pos
        L = min(rem, nmax, max(2 * BLOCK_SIZE, int(target / ratio)))
        fr = 0.0
        piece: tuple[Pcluster, bytes, int] | None = None
        if hc:
            fr = _probe(mv[pos : pos + L]) / L
            if fr < SKIP_RATIO or L < 4 * BLOCK_SIZE:
                L = min(rem, nmax, max(2 * BLOCK_SIZE, int(target / (fr * kf))))
            else:
                fr = 0.0
                L = -L  # incompressible even for the probe: store PLAIN without trying lz4hc
        if L > 0:
            if rem - L < 2 * BLOCK_SIZE:
                L = rem
            piece, L = _extent(data, mv, pos, L, compress, maxc, target, hc)
        if piece is not None:
            pc, block, comp_len = piece
            out.append((pc, block))
            ratio = max(comp_len / pc.length, 1 / 256)
            if fr:
                kf = min(1.0, max(0.3, ratio / fr))
            pos += pc.length
            continue
        L = abs(L)
        ln = rem if L >= rem else max(BLOCK_SIZE, L // BLOCK_SIZE * BLOCK_SIZE)
        run, raw = Pcluster(ln, -(-ln // BLOCK_SIZE), False), data[pos : pos + ln]
        if out and not out[-1][0].compressed and out[-1][0].length % BLOCK_SIZE == 0:
            prev, prev_bytes = out.pop()  # merge PLAIN runs (a partial block only ends a chunk)
            run, raw = Pcluster(prev.length + ln, prev.blocks + run.blocks, False), prev_bytes + raw
        out.append((run, raw))
        ratio = 1.0
        pos += ln
    return out


def _extent(
    data: bytes,
    mv: memoryview,
    pos: int,
    length: int,
    compress: Compress,
    maxc: int,
    target: float,
    hc: bool,
) -> tuple[tuple[Pcluster, bytes, int] | None, int]:
    """Compress an extent from `pos` of about `length` input bytes and fill its pcluster.

    Returns ((Pcluster, right-aligned pcluster bytes, LZ4 length), length) when it saves blocks and
    its index is encodable, else (None, input length tried) for the caller to store PLAIN.
    """
    n = len(data)
    cap = maxc * BLOCK_SIZE
    while True:
        comp = compress(mv[pos : pos + length])
        if len(comp) <= cap:
            break
        shorter = int(length * target / len(comp))
        length = min(shorter, length - BLOCK_SIZE)
        if length < 2 * BLOCK_SIZE:
            return None, max(length, BLOCK_SIZE)
    e = pos + length
    if e < n:
        comp, e = _fill(data, mv, pos, e, comp, compress, cap)
    elif hc and len(comp) % BLOCK_SIZE and len(comp) % BLOCK_SIZE <= len(comp) * TAIL_RETRY:
        # the chunk's last extent spills a little into its last block: the slowest lz4hc level
        # (a few % smaller on small inputs) often saves that block
        best = compress(mv[pos:e], level=12)
        if len(best) < len(comp):
            comp = best
    blocks = -(-len(comp) // BLOCK_SIZE)
    head = pos >> BLKSZBITS
    # the lcluster where the next extent starts, or totalidx at the end of the chunk
    nxt = -(-e // BLOCK_SIZE) if e == n else e >> BLKSZBITS
    # a compressed HEAD needs a NONHEAD after it for CBLKCNT (notes §7.5), which also keeps it out
    # of the last lcluster; and it must save at least one block over PLAIN (notes §7.8)
    if nxt < head + 2 or blocks >= -(-(e - pos) // BLOCK_SIZE) or nxt - head > MAX_DELTA:
        return None, e - pos
    block = bytes(blocks * BLOCK_SIZE - len(comp)) + comp
    return (Pcluster(e - pos, blocks, True), block, len(comp)), e - pos


def _chunks(nodes: list[Node], options: ErofsOptions) -> Iterator[_Chunk]:
    step = CHUNK_LCLUSTERS * BLOCK_SIZE
    for n in nodes:
        if n.entry.kind is Kind.FILE:
            for off in range(0, n.size, step):
                yield _Chunk(n.index, off, min(step, n.size - off))


def _encode_chunk(
    chunk: _Chunk,
    nodes: list[Node],
    sysroot: Sysroot,
    compress: Compress | None,
    maxc: int,
    hc: bool,
) -> _Encoded:
    node = nodes[chunk.node]
    with open_entry(node.entry, sysroot) as f:
        f.seek(chunk.offset)
        data = f.read(chunk.length)
    if len(data) != chunk.length:
        raise ResolveError(f"{node.entry.path}: source changed size while the image was written")
    if compress is None or node.size <= BLOCK_SIZE:  # never compress a single lcluster (notes §7.10)
        pieces = [(Pcluster(len(data), -(-len(data) // BLOCK_SIZE), False), data)] if data else []
    else:
        pieces = segment(data, compress, maxc, hc)
    h = hashlib.blake2b(digest_size=16)
    for _, b in pieces:
        h.update(b)
    return _Encoded(pieces, h.digest())


T = TypeVar("T")
R = TypeVar("R")


def _ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """pool.map with a bounded number of tasks in flight (Executor.map submits everything)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _DataWriter:
    """Appends data blocks to the image and records each inode's Placement."""

    def __init__(self, out: BinaryIO, first_block: int):
        self.out = out
        self.block = first_block
        self.digest = hashlib.blake2b(digest_size=16)

    def write(self, data: bytes) -> int:
        """Write `data` zero-padded to whole blocks; returns its first block."""
        start = self.block
        pad = -len(data) % BLOCK_SIZE
        self.out.write(data)
        if pad:
            self.out.write(bytes(pad))
        self.block += (len(data) + pad) // BLOCK_SIZE
        return start

    def file(self, node: Node, encoded: Iterable[_Encoded]) -> Placement:
        """Write one regular file's chunks; choose FLAT_* when no segment compressed."""
        p = Placement(raw_blkaddr=self.block)
        tail = b""  # a partial last PLAIN block, held back: it may become an inline tail
        compressed = False
        for enc in encoded:
            self.digest.update(enc.digest)
            for pc, data in enc.pieces:
                compressed |= pc.compressed
                if tail:
                    # a PLAIN run ending mid-block at a chunk end (it started mid-lcluster after
                    # a compressed extent): not the file's tail after all
                    assert compressed
                    self._piece(p, Pcluster(len(tail), 1, False), tail)
                    tail = b""
                if not pc.compressed and pc.length % BLOCK_SIZE:
                    full = pc.length - pc.length % BLOCK_SIZE
                    tail = data[full:]
                    if full:
                        self._piece(p, Pcluster(full, full // BLOCK_SIZE, False), data[:full])
                    continue
                self._piece(p, pc, data)
        if compressed:
            if tail:
                self._piece(p, Pcluster(len(tail), 1, False), tail)
            p.layout = EROFS_INODE_COMPRESSED_COMPACT
            assert sum(pc.length for pc in p.pclusters) == node.size, node.entry.path
        else:
            p.pclusters = []
            self._flat_tail(node, p, tail)
        p.blocks = self.block - p.raw_blkaddr
        return p

    def _piece(self, p: Placement, pc: Pcluster, data: bytes) -> None:
        self.write(data)
        _append(p.pclusters, pc)

    def symlink(self, node: Node) -> Placement:
        target = name_bytes(node.entry.target or "")
        self.digest.update(target)
        p = Placement(raw_blkaddr=self.block)
        self._flat_tail(node, p, target)  # at most one block (layout.collect_nodes checks)
        p.blocks = self.block - p.raw_blkaddr
        return p

    def _flat_tail(self, node: Node, p: Placement, tail: bytes) -> None:
        """Finish a flat layout: inline the tail if the block rule allows (notes §4.2)."""
        full_blocks = self.block - p.raw_blkaddr
        if tail and node.inline_tail_len() == len(tail):
            p.layout, p.tail = EROFS_INODE_FLAT_INLINE, tail
            if not full_blocks:
                p.raw_blkaddr = EROFS_NULL_ADDR  # what mkfs writes for inline-only data
        else:
            if tail:
                self.write(tail)
            p.layout = EROFS_INODE_FLAT_PLAIN
            if not node.size:
                p.raw_blkaddr = 0


def _append(pcs: list[Pcluster], pc: Pcluster) -> None:
    """Append, merging adjacent PLAIN runs (they index identically) when the first ends on a
    block boundary of its own."""
    if pcs and not pc.compressed and not pcs[-1].compressed and pcs[-1].length % BLOCK_SIZE == 0:
        last = pcs.pop()
        pc = Pcluster(last.length + pc.length, last.blocks + pc.blocks, False)
    pcs.append(pc)


def write_data(
    nodes: list[Node], sysroot: Sysroot, out: BinaryIO, options: ErofsOptions
) -> tuple[dict[int, Placement], int, bytes]:
    """Phase 1: stream file data from block 1. Returns placements, the next free block, a digest."""
    out.seek(BLOCK_SIZE)
    dw = _DataWriter(out, 1)
    placements: dict[int, Placement] = {}
    compress = _compressor(options)
    hc = options.compression == "lz4hc"
    maxc = options.max_pcluster_blocks
    workers = options.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="erofs-compress") as pool:
        results = _ordered_map(
            pool,
            lambda c: _encode_chunk(c, nodes, sysroot, compress, maxc, hc),
            _chunks(nodes, options),
            4 * workers,
        )
        step = CHUNK_LCLUSTERS * BLOCK_SIZE
        for n in nodes:
            kind = n.entry.kind
            if kind is Kind.FILE:
                count = -(-n.size // step)
                placements[n.index] = dw.file(n, (next(results) for _ in range(count)))
            elif kind is Kind.SYMLINK:
                placements[n.index] = dw.symlink(n)
    return placements, dw.block, dw.digest.digest()


# -- phase 2 and 3: metadata -------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    offset: int  # from the start of the metadata area
    layout: int
    tail: bytes = b""
    raw_blkaddr: int = 0
    totalidx: int | None = None


def _plan_records(nodes: list[Node], placements: dict[int, Placement]) -> tuple[list[_Record], int]:
    """Choose each inode's layout and place its record; returns records and metadata blocks."""
    alloc = MetaAllocator()
    records = []
    for n in nodes:
        p = placements.get(n.index)
        totalidx = None
        tail = 0
        if p is not None and p.layout == EROFS_INODE_COMPRESSED_COMPACT:
            totalidx = -(-n.size // BLOCK_SIZE)
            layout = p.layout
        elif p is not None:
            layout, tail = p.layout, len(p.tail)
        elif n.entry.kind is Kind.DIR:
            tail = n.inline_tail_len()
            layout = EROFS_INODE_FLAT_INLINE if tail else EROFS_INODE_FLAT_PLAIN
        else:
            layout = EROFS_INODE_FLAT_PLAIN
        off = alloc.place(record_size(n, tail, totalidx, USE_COMPACT_2B))
        records.append(_Record(off, layout, totalidx=totalidx))
    return records, alloc.nblocks


def _dir_data(node: Node, nids: list[int], ftypes: list[int]) -> list[bytes]:
    """Directory blocks: dirents then names; non-final blocks zero-padded (notes §5.2)."""
    blocks = []
    i = 0
    for count in node.dir_blocks:
        items = node.dirents[i : i + count]
        i += count
        heads = bytearray()
        names = bytearray()
        nameoff = DIRENT.size * count
        for name, idx in items:
            heads += DIRENT.pack(nids[idx], nameoff + len(names), ftypes[idx], 0)
            names += name
        blocks.append(bytes(heads + names))
    return blocks


def _inode_bytes(n: Node, rec: _Record, p: Placement | None, nid: int) -> bytes:
    e = n.entry
    if e.kind in (Kind.CHAR, Kind.BLOCK):
        assert e.rdev is not None
        i_u = encode_rdev(*e.rdev)
    elif rec.layout == EROFS_INODE_COMPRESSED_COMPACT:
        assert p is not None
        i_u = p.blocks  # compressed_blocks: only used for st_blocks
    elif e.kind in (Kind.FIFO, Kind.SOCKET):
        i_u = 0
    else:
        i_u = rec.raw_blkaddr
    icount = xattr_icount(n.xattrs)
    ino = n.index + 1
    if n.extended:
        fmt = i_format(EROFS_INODE_LAYOUT_EXTENDED, rec.layout)
        return INODE_EXTENDED.pack(
            fmt, icount, e.st_mode, 0, n.size, i_u, ino, e.uid, e.gid, n.mtime, 0, n.nlink, b""
        )
    fmt = i_format(EROFS_INODE_LAYOUT_COMPACT, rec.layout)
    return INODE_COMPACT.pack(fmt, icount, e.st_mode, n.nlink, n.size, 0, i_u, ino, e.uid, e.gid, 0)


def _zmap_bytes(n: Node, p: Placement, record_abs: int) -> bytes:
    """Padding to 8, z_erofs_map_header and the compact index (notes §7.2, §7.4)."""
    map_off = compressed_meta_offset(n)
    pad = map_off - n.inode_size - len(n.xattrs)
    advise = Z_EROFS_ADVISE_BIG_PCLUSTER_1 | Z_EROFS_ADVISE_BIG_PCLUSTER_2  # both, or 6.1 refuses
    if USE_COMPACT_2B:
        advise |= Z_EROFS_ADVISE_COMPACTED_2B
    header = Z_EROFS_MAP_HEADER.pack(0, advise, Z_EROFS_COMPRESSION_LZ4, 0)
    ebase = record_abs + map_off + Z_EROFS_MAP_HEADER.size
    entries = lclusters_of(p.pclusters, p.raw_blkaddr)
    assert len(entries) == -(-n.size // BLOCK_SIZE), (n.entry.path, len(entries))
    return bytes(pad) + header + encode_compact(entries, ebase, USE_COMPACT_2B)


def write_erofs(manifest: Manifest, sysroot: Sysroot, out: BinaryIO, options: ErofsOptions) -> ErofsStats:
    """Write `manifest` (contents read through `sysroot`) as an EROFS image to the seekable `out`.

    Deterministic: the same manifest, contents and options give the same bytes.
    """
    sizes = {e.path: entry_size(e, sysroot) for e in manifest.entries.values() if e.kind is Kind.FILE}
    nodes = collect_nodes(manifest, options.build_time, sizes)
    with log.step(f"Writing EROFS data ({len(sizes)} files, {options.compression})"):
        placements, meta_blkaddr, data_digest = write_data(nodes, sysroot, out, options)
    records, meta_blocks = _plan_records(nodes, placements)
    nids = [r.offset >> ISLOTBITS for r in records]
    if nids[0] > 0xFFFF:
        raise FormatError("root inode outside the 16-bit root_nid range")
    ftypes = [n.file_type for n in nodes]
    # directory blocks that are not inlined go after the metadata area
    next_block = meta_blkaddr + meta_blocks
    dir_blocks: list[bytes] = []
    for n, rec in zip(nodes, records, strict=True):
        p = placements.get(n.index)
        if p is not None:
            rec.raw_blkaddr, rec.tail = p.raw_blkaddr, p.tail
        elif n.entry.kind is Kind.DIR:
            blocks = _dir_data(n, nids, ftypes)
            if rec.layout == EROFS_INODE_FLAT_INLINE:
                rec.tail = blocks.pop()
            rec.raw_blkaddr = next_block if blocks else EROFS_NULL_ADDR
            next_block += len(blocks)
            dir_blocks += blocks
    meta = bytearray(meta_blocks * BLOCK_SIZE)
    meta_end = 0
    for n, rec, nid in zip(nodes, records, nids, strict=True):
        p = placements.get(n.index)
        body = _inode_bytes(n, rec, p, nid) + n.xattrs
        if rec.layout == EROFS_INODE_COMPRESSED_COMPACT:
            assert p is not None
            body += _zmap_bytes(n, p, meta_blkaddr * BLOCK_SIZE + rec.offset)
        else:
            body += rec.tail
        meta[rec.offset : rec.offset + len(body)] = body
        meta_end = max(meta_end, rec.offset + len(body))
    out.seek(meta_blkaddr * BLOCK_SIZE)
    out.write(meta)
    for b in dir_blocks:
        out.write(b + bytes(-len(b) % BLOCK_SIZE))
    total_blocks = next_block
    if not dir_blocks and len(meta) - meta_end < XATTR_IBODY_HEADER.size:
        # fsck.erofs 1.5 reads an xattr header after every inode, even one without xattrs, and
        # fails ("failed to read xattr header") when the image ends within those 12 bytes
        out.write(bytes(BLOCK_SIZE))
        total_blocks += 1
    compressed = [p for p in placements.values() if p.layout == EROFS_INODE_COMPRESSED_COMPACT]
    maxc = max((pc.blocks for p in compressed for pc in p.pclusters if pc.compressed), default=0)
    digest = hashlib.sha256(data_digest + bytes(meta) + b"".join(dir_blocks)).digest()
    image_uuid = options.uuid or bytes(uuid_mod.UUID(bytes=digest[:16], version=4).bytes)
    block0 = _block0(
        options, nids[0], len(nodes), total_blocks, meta_blkaddr, image_uuid, maxc if compressed else None
    )
    out.seek(0)
    out.write(block0)
    out.seek(total_blocks * BLOCK_SIZE)
    try:
        out.truncate()
    except OSError:  # pragma: no cover - e.g. a pipe-like BinaryIO; the length is already right
        pass
    return ErofsStats(
        blocks=total_blocks,
        inodes=len(nodes),
        bytes=total_blocks * BLOCK_SIZE,
        files=len(sizes),
        compressed_files=len(compressed),
        input_bytes=sum(sizes.values()),
        data_blocks=meta_blkaddr - 1,
        meta_blocks=meta_blocks,
        dir_blocks=len(dir_blocks),
        max_pcluster_blocks=maxc,
        uuid=str(uuid_mod.UUID(bytes=image_uuid)),
    )


def _block0(
    options: ErofsOptions,
    root_nid: int,
    inos: int,
    blocks: int,
    meta_blkaddr: int,
    image_uuid: bytes,
    maxc: int | None,
) -> bytes:
    """Block 0: superblock (+ LZ4 config record when compressed), checksum computed last (notes §2)."""
    if maxc is not None:
        incompat = EROFS_FEATURE_INCOMPAT_ZERO_PADDING | EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER
        u1 = 1 << Z_EROFS_COMPRESSION_LZ4  # available_compr_algs: COMPR_CFGS is set
    else:
        incompat, u1 = 0, 0
    sb = SUPERBLOCK.pack(
        EROFS_SUPER_MAGIC_V1,
        0,  # checksum, filled below
        EROFS_FEATURE_COMPAT_SB_CHKSUM | EROFS_FEATURE_COMPAT_MTIME,
        BLKSZBITS,
        0,  # sb_extslots
        root_nid,
        inos,
        options.build_time,
        0,  # build_time_nsec
        blocks,
        meta_blkaddr,
        0,  # xattr_blkaddr: all xattrs are inline
        image_uuid,
        options.volume_name.encode(),
        incompat,
        u1,
        0,  # extra_devices
        0,  # devt_slotoff
        0,  # dirblkbits: must be 0
        b"",
        0,  # packed_nid
        b"",
    )
    block = bytearray(BLOCK_SIZE)
    block[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + len(sb)] = sb
    if maxc is not None:
        cfg = Z_EROFS_LZ4_CFGS.pack(LZ4_CFGS_PAYLOAD, LZ4_MAX_DISTANCE, max(maxc, 1), b"")
        block[COMPR_CFGS_OFFSET : COMPR_CFGS_OFFSET + len(cfg)] = cfg
    crc = erofs_crc32c(bytes(block[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + CHECKSUMMED_BYTES]))
    at = EROFS_SUPER_OFFSET + SB_CHECKSUM_OFFSET
    block[at : at + 4] = crc.to_bytes(4, "little")
    return bytes(block)

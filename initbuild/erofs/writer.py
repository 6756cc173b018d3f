"""Serialise a Manifest as an EROFS image that Linux 6.1 mounts and fsck.erofs 1.5 accepts.

Three phases (see layout.py for the image shape):

1. data: regular files are cut into chunks and compressed on a thread pool (lz4 releases the
   GIL); results are consumed in canonical order and streamed to blocks 1..D, so memory stays
   bounded by the in-flight window, and the output does not depend on thread timing;
2. metadata: inode records are placed (nids), directory blocks get addresses;
3. serialisation of the metadata area and directory blocks, then block 0 with its checksum.

Compression uses fixed-input segments (notes §7.8/§7.11) sized adaptively so that each pcluster
fills up to `pcluster_size` bytes, with big pclusters and compact indexes.
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

from .. import log
from ..errors import ConfigError, FormatError, ResolveError
from ..manifest import Kind, Manifest, entry_size, open_entry
from ..sysroot import Sysroot
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
# A segment takes at most INPUT_PER_BLOCK lclusters per pcluster block: lz4hc gets slower per byte
# on inputs beyond its 64 KiB window, and a longer extent means more read amplification.
INPUT_PER_BLOCK = 4
FILL = 0.985  # aim segments at this fraction of the pcluster so few need a second compression
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


def _compressor(options: ErofsOptions) -> Callable[[memoryview], bytes] | None:
    if options.compression == "none":
        return None
    if options.compression == "lz4":
        return lambda raw: lz4.block.compress(raw, mode="default", store_size=False)
    level = options.level
    # store_size=False is mandatory: the kernel would read a size prefix as LZ4 tokens (notes §7.6)
    return lambda raw: lz4.block.compress(raw, mode="high_compression", compression=level, store_size=False)


def segment(
    data: memoryview, compress: Callable[[memoryview], bytes], maxc: int
) -> list[tuple[Pcluster, bytes]]:
    """Cut `data` (a chunk starting on an lcluster boundary) into compressed or PLAIN pclusters.

    Each segment is N whole lclusters compressed into C <= maxc blocks with C < N (notes §7.8
    caveats 2-3); N is guessed from the ratio of the previous segment so that the output nearly
    fills `maxc` blocks, and shrunk when it overflows. Compressed data is right-aligned (ZERO_PADDING,
    notes §7.6); PLAIN runs are returned unpadded.
    """
    total = -(-len(data) // BLOCK_SIZE)
    nmax = min(MAX_DELTA, max(16, INPUT_PER_BLOCK * maxc))
    target = maxc * BLOCK_SIZE * FILL
    out: list[tuple[Pcluster, bytes]] = []
    ratio = 0.5
    lcn = 0
    while lcn < total:
        rem = total - lcn
        n = min(rem, nmax, max(2, int(target / (ratio * BLOCK_SIZE))))
        comp = b""
        if n >= 2:
            while True:
                raw = data[lcn * BLOCK_SIZE : (lcn + n) * BLOCK_SIZE]
                comp = compress(raw)
                if len(comp) <= maxc * BLOCK_SIZE or n == 2:
                    break
                n = max(2, min(n - 1, int(n * target / len(comp))))
        blocks = -(-len(comp) // BLOCK_SIZE)
        if n >= 2 and blocks < n and blocks <= maxc:
            out.append((Pcluster(n, blocks, True), bytes(blocks * BLOCK_SIZE - len(comp)) + comp))
            ratio = max(len(comp) / len(raw), 1 / 256)
        else:
            n = max(n, 1)
            raw_bytes = bytes(data[lcn * BLOCK_SIZE : (lcn + n) * BLOCK_SIZE])
            if out and not out[-1][0].compressed:
                prev, prev_bytes = out.pop()
                out.append((Pcluster(prev.lclusters + n, prev.blocks + n, False), prev_bytes + raw_bytes))
            else:
                out.append((Pcluster(n, n, False), raw_bytes))
            ratio = 1.0
        lcn += n
    return out


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
    compress: Callable[[memoryview], bytes] | None,
    maxc: int,
) -> _Encoded:
    node = nodes[chunk.node]
    with open_entry(node.entry, sysroot) as f:
        f.seek(chunk.offset)
        data = f.read(chunk.length)
    if len(data) != chunk.length:
        raise ResolveError(f"{node.entry.path}: source changed size while the image was written")
    if compress is None or node.size <= BLOCK_SIZE:  # never compress a single lcluster (notes §7.10)
        n = -(-len(data) // BLOCK_SIZE)
        pieces = [(Pcluster(n, n, False), data)]
    else:
        pieces = segment(memoryview(data), compress, maxc)
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
        tail = b""
        compressed = False
        for enc in encoded:
            self.digest.update(enc.digest)
            for pc, data in enc.pieces:
                compressed |= pc.compressed
                if not pc.compressed and len(data) % BLOCK_SIZE:
                    # a partial last lcluster: keep it back, it may become an inline tail
                    full = len(data) - len(data) % BLOCK_SIZE
                    tail = data[full:]
                    if full:
                        self.write(data[:full])
                        _append(p.pclusters, Pcluster(full // BLOCK_SIZE, full // BLOCK_SIZE, False))
                    continue
                self.write(data)
                _append(p.pclusters, pc)
        if compressed:
            if tail:
                self.write(tail)
                _append(p.pclusters, Pcluster(1, 1, False))
            p.layout = EROFS_INODE_COMPRESSED_COMPACT
        else:
            p.pclusters = []
            self._flat_tail(node, p, tail)
        p.blocks = self.block - p.raw_blkaddr
        return p

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
    """Append, merging adjacent PLAIN runs (they index identically)."""
    if pcs and not pc.compressed and not pcs[-1].compressed:
        last = pcs.pop()
        pc = Pcluster(last.lclusters + pc.lclusters, last.blocks + pc.blocks, False)
    pcs.append(pc)


def write_data(
    nodes: list[Node], sysroot: Sysroot, out: BinaryIO, options: ErofsOptions
) -> tuple[dict[int, Placement], int, bytes]:
    """Phase 1: stream file data from block 1. Returns placements, the next free block, a digest."""
    out.seek(BLOCK_SIZE)
    dw = _DataWriter(out, 1)
    placements: dict[int, Placement] = {}
    compress = _compressor(options)
    maxc = options.max_pcluster_blocks
    workers = options.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="erofs-compress") as pool:
        results = _ordered_map(
            pool,
            lambda c: _encode_chunk(c, nodes, sysroot, compress, maxc),
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

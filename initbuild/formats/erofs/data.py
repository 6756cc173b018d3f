"""Phase 1 of the writer: stream regular files and symlink targets to the data blocks of the image.

Regular files are cut into chunks and compressed on a thread pool (liblz4 runs without the GIL);
results are consumed in canonical order and streamed to blocks 1..D, so memory stays bounded by the
in-flight window, and the output does not depend on thread timing. Each inode's Placement records
where its data went.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from ...errors import ResolveError
from ...manifest import Kind, open_entry
from ...sysroot import Sysroot
from .compressor import Codec, segment
from .format import (
    BLOCK_SIZE,
    EROFS_INODE_COMPRESSED_COMPACT,
    EROFS_INODE_FLAT_INLINE,
    EROFS_INODE_FLAT_PLAIN,
    EROFS_NULL_ADDR,
)
from .layout import Node, Placement, name_bytes
from .zmap import Pcluster

CHUNK_LCLUSTERS = 1024  # 4 MiB of input per chunk: bounds memory, keeps cores busy
BATCH_BYTES = 1 << 20  # chunks of small files are compressed together, this much input per task


@dataclass(frozen=True, slots=True)
class _Chunk:
    node: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class _Encoded:
    pieces: list[tuple[Pcluster, bytes]]  # compressed: padded pcluster; plain: raw bytes
    digest: bytes


def _batches(nodes: list[Node]) -> Iterator[list[_Chunk]]:
    """The chunks of all regular files in order, grouped into tasks of about BATCH_BYTES: one task
    per small file would cost more in thread hand-overs than its compression."""
    step = CHUNK_LCLUSTERS * BLOCK_SIZE
    batch: list[_Chunk] = []
    size = 0
    for n in nodes:
        if n.entry.kind is Kind.FILE:
            for off in range(0, n.size, step):
                batch.append(_Chunk(n.index, off, min(step, n.size - off)))
                size += batch[-1].length
                if size >= BATCH_BYTES:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch


def _encode_chunk(
    chunk: _Chunk,
    nodes: list[Node],
    sysroot: Sysroot,
    codec: Codec | None,
    maxc: int,
) -> _Encoded:
    node = nodes[chunk.node]
    with open_entry(node.entry, sysroot) as f:
        if chunk.offset:
            f.seek(chunk.offset)
        data = f.read(chunk.length)
    if len(data) != chunk.length:
        raise ResolveError(f"{node.entry.path}: source changed size while the image was written")
    # never compress a single lcluster (docs/erofs-format.md §7.10)
    if codec is None or node.size <= BLOCK_SIZE:
        pieces = [(Pcluster(len(data), -(-len(data) // BLOCK_SIZE), False), data)] if data else []
    else:
        pieces = segment(data, codec, maxc)
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
        """Finish a flat layout: inline the tail if the block rule allows (docs/erofs-format.md §4.2)."""
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
    nodes: list[Node],
    sysroot: Sysroot,
    out: BinaryIO,
    codec: Codec | None,
    *,
    maxc: int,
    workers: int = 0,
) -> tuple[dict[int, Placement], int, bytes]:
    """Phase 1: stream file data from block 1. Returns placements, the next free block, a digest.

    `codec` is None for uncompressed images; `maxc`: the largest pcluster in blocks; `workers`:
    compression threads (0: one per CPU).
    """
    out.seek(BLOCK_SIZE)
    dw = _DataWriter(out, 1)
    placements: dict[int, Placement] = {}
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="erofs-compress") as pool:
        batches = _ordered_map(
            pool,
            lambda b: [_encode_chunk(c, nodes, sysroot, codec, maxc) for c in b],
            _batches(nodes),
            4 * workers,
        )
        results = (encoded for batch in batches for encoded in batch)
        step = CHUNK_LCLUSTERS * BLOCK_SIZE
        for n in nodes:
            kind = n.entry.kind
            if kind is Kind.FILE:
                count = -(-n.size // step)
                placements[n.index] = dw.file(n, (next(results) for _ in range(count)))
            elif kind is Kind.SYMLINK:
                placements[n.index] = dw.symlink(n)
    return placements, dw.block, dw.digest.digest()

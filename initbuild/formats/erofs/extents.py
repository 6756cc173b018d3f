"""The rules an extent of a compressed file must satisfy, shared by both ways of filling pclusters.

A chunk of file data (starting on an lcluster boundary, ending on one or at EOF) is cut into a list
of (Pcluster, bytes) pieces: compressed extents, right-aligned in their pcluster
(docs/erofs-format.md §7.6), and PLAIN runs, unpadded.
"""

from __future__ import annotations

from .format import BLKSZBITS, BLOCK_SIZE
from .zmap import MAX_DELTA, Pcluster

Piece = tuple[Pcluster, bytes]


def extent_end_limit(pos: int, n: int) -> int:
    """How far an extent starting at `pos` of an n-byte chunk may reach: `delta` below 0x800."""
    return min(n, ((pos >> BLKSZBITS) + MAX_DELTA) * BLOCK_SIZE)


def compressed_piece(pos: int, end: int, n: int, comp: bytes) -> Piece | None:
    """The piece for bytes [pos, end) of an n-byte chunk encoded as the LZ4 block `comp`, or None
    when the index cannot hold it or it saves no block: then the bytes are better stored PLAIN."""
    blocks = -(-len(comp) // BLOCK_SIZE)
    head = pos >> BLKSZBITS
    # the lcluster where the next extent starts, or totalidx at the end of the chunk
    nxt = -(-end // BLOCK_SIZE) if end == n else end >> BLKSZBITS
    # a compressed HEAD needs a NONHEAD after it for CBLKCNT (docs/erofs-format.md §7.5), which also
    # keeps it out of the last lcluster; and it must save at least one block over PLAIN
    # (docs/erofs-format.md §7.8)
    if nxt < head + 2 or blocks >= -(-(end - pos) // BLOCK_SIZE) or nxt - head > MAX_DELTA:
        return None
    return Pcluster(end - pos, blocks, True), bytes(blocks * BLOCK_SIZE - len(comp)) + comp


def add_plain(out: list[Piece], data: bytes, pos: int, length: int) -> int:
    """Append a PLAIN run from `pos` of about `length` bytes (whole blocks, or the rest of the chunk
    when `length` reaches it); returns its length."""
    rem = len(data) - pos
    ln = rem if length >= rem else max(BLOCK_SIZE, length // BLOCK_SIZE * BLOCK_SIZE)
    run, raw = Pcluster(ln, -(-ln // BLOCK_SIZE), False), data[pos : pos + ln]
    if out and not out[-1][0].compressed and out[-1][0].length % BLOCK_SIZE == 0:
        prev, prev_bytes = out.pop()  # merge PLAIN runs (a partial block only ends a chunk)
        run, raw = Pcluster(prev.length + ln, prev.blocks + run.blocks, False), prev_bytes + raw
    out.append((run, raw))
    return ln

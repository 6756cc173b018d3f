"""Fixed-output compression without LZ4_compress_destSize: the pure-Python fallback.

python-lz4 compresses a given input and has no "compress as much as fits into N bytes" call. Used
when the system's liblz4 is missing or too old (compressor.lz4_codec), this emulates the call: it
compresses about as much input as should fill the pcluster, then grows the extent by cutting the
block's final literal run and compressing it again together with the next input bytes (with the
preceding 64 KiB as dictionary), checking each result by decompression. Several compressions per
pcluster: about 2-3 times slower than liblz4's own call, within a fraction of a percent of its size.
"""

from __future__ import annotations

from collections.abc import Callable

import lz4.block

from .extents import Piece, add_plain, compressed_piece
from .format import BLOCK_SIZE
from .zmap import MAX_DELTA

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


Compress = Callable[..., bytes]  # (raw, prefix=None, level=None) -> LZ4 block without size prefix


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
    bytes: the fixed-output layout of mkfs.erofs (docs/erofs-format.md §7.8), without LZ4_compress_destSize.

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


def segment(data: bytes, compress: Compress, maxc: int, hc: bool = True) -> list[Piece]:
    """Cut `data` (a chunk starting on an lcluster boundary and ending on one or at EOF) into
    compressed extents and PLAIN runs (extents.py), with python-lz4 only.

    Each compressed extent is sized so that its LZ4 block fills `maxc` blocks: the input length is
    predicted from a fast-LZ4 probe and the previous extent, then `_fill` tops the block up. `hc`:
    probe with fast LZ4 and skip data it cannot shrink at all.
    """
    mv = memoryview(data)
    n = len(data)
    cap = maxc * BLOCK_SIZE
    target = cap * FILL
    nmax = min(MAX_DELTA, max(16, INPUT_PER_BLOCK * maxc)) * BLOCK_SIZE
    out: list[Piece] = []
    ratio = 0.5  # compressed/input of the previous extent
    kf = 0.85  # lz4hc size / fast-LZ4 size, learnt along the chunk
    pos = 0
    while pos < n:
        rem = n - pos
        L = min(rem, nmax, max(2 * BLOCK_SIZE, int(target / ratio)))
        fr = 0.0
        piece: tuple[Piece, int] | None = None
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
            (pc, block), comp_len = piece
            out.append((pc, block))
            ratio = max(comp_len / pc.length, 1 / 256)
            if fr:
                kf = min(1.0, max(0.3, ratio / fr))
            pos += pc.length
            continue
        pos += add_plain(out, data, pos, abs(L))
        ratio = 1.0
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
) -> tuple[tuple[Piece, int] | None, int]:
    """Compress an extent from `pos` of about `length` input bytes and fill its pcluster.

    Returns ((piece, LZ4 length), length) when it saves blocks and its index is encodable, else
    (None, input length tried) for the caller to store PLAIN.
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
    piece = compressed_piece(pos, e, n, comp)
    return (None if piece is None else (piece, len(comp))), e - pos

"""Compressed-file block maps: encoding (writer) and decoding (reader) of EROFS lcluster indexes.

Mirrors the kernel's fs/erofs/zmap.c. An lcluster is a 4 KiB slice of the file; every lcluster has
one index entry (PLAIN, HEAD1 or NONHEAD). The writer emits big-pcluster compact indexes whose
extents may start anywhere inside an lcluster (`clusterofs != 0`, the fixed-output layout mkfs.erofs
writes); the decoder also handles 1-block pclusters without BIG_PCLUSTER and FULL indexes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import FormatError
from .format import (
    BLKSZBITS,
    BLOCK_SIZE,
    COMPACT_2B_PACK,
    COMPACT_2B_VCNT,
    COMPACT_4B_PACK,
    COMPACT_4B_VCNT,
    COMPACT_LO_BITS,
    Z_EROFS_VLE_CLUSTER_TYPE_HEAD,
    Z_EROFS_VLE_CLUSTER_TYPE_HEAD2,
    Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD,
    Z_EROFS_VLE_CLUSTER_TYPE_PLAIN,
    Z_EROFS_VLE_DECOMPRESSED_INDEX,
    Z_EROFS_VLE_DI_CLUSTER_TYPE_MASK,
    Z_EROFS_VLE_DI_D0_CBLKCNT,
)

LO_MASK = (1 << COMPACT_LO_BITS) - 1
MAX_DELTA = Z_EROFS_VLE_DI_D0_CBLKCNT - 1  # d0/d1 must not carry the CBLKCNT bit


@dataclass(frozen=True, slots=True)
class Pcluster:
    """One extent of a compressed file, in file order: extents are contiguous from byte 0.

    compressed: `length` bytes LZ4-compressed into `blocks` physical blocks.
    otherwise: a PLAIN run of `length` bytes cut into `blocks == ceil(length / 4096)` raw blocks of
    4096 bytes each (the last may be shorter); every block is one PLAIN extent.
    """

    length: int
    blocks: int
    compressed: bool


@dataclass(frozen=True, slots=True)
class Lcluster:
    """One decoded (or to-be-encoded) index entry."""

    type: int
    clusterofs: int = 0  # PLAIN/HEAD
    pblk: int = 0  # PLAIN/HEAD
    d0: int = 0  # NONHEAD: distance back to the HEAD (1 for the CBLKCNT entry)
    d1: int = 0  # NONHEAD: distance forward to the next HEAD or to totalidx
    cblkcnt: int = 0  # NONHEAD right after a big-pcluster HEAD: physical blocks of that pcluster


def lclusters_of(pclusters: Sequence[Pcluster], first_block: int) -> list[Lcluster]:
    """Index entries for pclusters stored contiguously from `first_block` (docs/erofs-format.md §7.4-7.8).

    The lcluster holding the first byte of an extent is that extent's HEAD/PLAIN, with
    `clusterofs` = the extent's offset in it; the bytes before that offset belong to the previous
    extent (the kernel finds it by looking back from the HEAD). Lclusters without an extent start
    are NONHEADs of the extent before them; the first one after a compressed HEAD carries CBLKCNT.
    A PLAIN extent that runs into the last lcluster ends at EOF, which gets a HEAD of its own
    (PLAIN, clusterofs = size % 4096, as mkfs.erofs writes): a PLAIN extent must end inside the
    lcluster after its own or the kernel sees it longer than its one block.
    """
    size = sum(pc.length for pc in pclusters)
    totalidx = -(-size // BLOCK_SIZE)
    # (lcn, clusterofs, pblk, compressed blocks or 0 for PLAIN)
    heads: list[tuple[int, int, int, int]] = []
    pos, pblk = 0, first_block
    for pc in pclusters:
        assert pc.length > 0, pc
        if pc.compressed:
            assert 1 <= pc.blocks <= MAX_DELTA, pc
            heads.append((pos >> BLKSZBITS, pos & (BLOCK_SIZE - 1), pblk, pc.blocks))
            pblk += pc.blocks
        else:
            assert pc.blocks == -(-pc.length // BLOCK_SIZE), pc
            for k in range(pc.blocks):
                p = pos + k * BLOCK_SIZE
                heads.append((p >> BLKSZBITS, p & (BLOCK_SIZE - 1), pblk, 0))
                pblk += 1
        pos += pc.length
    if heads and not heads[-1][3] and heads[-1][0] < totalidx - 1:
        heads.append((totalidx - 1, size & (BLOCK_SIZE - 1), pblk, 0))
    assert heads and heads[0][:2] == (0, 0), "a compressed file starts with an extent at byte 0"
    out: list[Lcluster] = []
    for k, (lcn, clusterofs, hpblk, blocks) in enumerate(heads):
        nxt = heads[k + 1][0] if k + 1 < len(heads) else totalidx
        assert len(out) == lcn and nxt > lcn, ("two extents start in one lcluster", lcn)
        if not blocks:
            assert nxt == lcn + 1, ("PLAIN extent spans more than two lclusters", lcn)
            out.append(Lcluster(Z_EROFS_VLE_CLUSTER_TYPE_PLAIN, clusterofs=clusterofs, pblk=hpblk))
            continue
        # a compressed HEAD needs lcn + 1 (CBLKCNT, or a HEAD meaning 1 block): never the last one
        assert lcn + 1 < totalidx and (blocks == 1 or nxt >= lcn + 2), ("no room for CBLKCNT", lcn)
        assert nxt - lcn - 1 <= MAX_DELTA, ("extent too long for delta", lcn)
        out.append(Lcluster(Z_EROFS_VLE_CLUSTER_TYPE_HEAD, clusterofs=clusterofs, pblk=hpblk))
        for j in range(lcn + 1, nxt):
            # CBLKCNT is mandatory on the first NONHEAD in big-pcluster mode (docs/erofs-format.md §7.5)
            out.append(
                Lcluster(
                    Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD,
                    d0=j - lcn,
                    d1=nxt - j,
                    cblkcnt=blocks if j == lcn + 1 else 0,
                )
            )
    assert len(out) == totalidx
    return out


# -- compact index geometry (kernel compacted_load_cluster_from_disk) ------------------------------


def compact_regions(ebase: int, totalidx: int, use_2b: bool) -> tuple[int, int, int]:
    """(entries in leading 4B packs, entries in 2B packs, entries in trailing 4B packs)."""
    init4 = (32 - ebase % 32) // 4
    if init4 == 8:
        init4 = 0
    init4 = min(init4, totalidx)
    n2b = (totalidx - init4) // COMPACT_2B_VCNT * COMPACT_2B_VCNT if use_2b else 0
    return init4, n2b, totalidx - init4 - n2b


def compact_index_size(ebase: int, totalidx: int, use_2b: bool) -> int:
    """Bytes of the compact index area (whole packs) starting at ebase."""
    a, b, c = compact_regions(ebase, totalidx, use_2b)
    return _packs(a, COMPACT_4B_VCNT) * COMPACT_4B_PACK + b * 2 + _packs(c, COMPACT_4B_VCNT) * COMPACT_4B_PACK


def _packs(n: int, vcnt: int) -> int:
    return -(-n // vcnt)


def _pack_layout(ebase: int, totalidx: int, use_2b: bool) -> list[tuple[int, int, int]]:
    """[(first lcn, vcnt, byte offset from ebase)] for every pack, in order."""
    a, b, c = compact_regions(ebase, totalidx, use_2b)
    out = []
    lcn, off = 0, 0
    for count, vcnt, size in ((a, COMPACT_4B_VCNT, COMPACT_4B_PACK), (b, COMPACT_2B_VCNT, COMPACT_2B_PACK)):
        for _ in range(_packs(count, vcnt)):
            out.append((lcn, vcnt, off))
            lcn += vcnt
            off += size
    for _ in range(_packs(c, COMPACT_4B_VCNT)):
        out.append((lcn, COMPACT_4B_VCNT, off))
        lcn += COMPACT_4B_VCNT
        off += COMPACT_4B_PACK
    return out


def _encodebits(vcnt: int) -> int:
    return ((COMPACT_4B_PACK if vcnt == COMPACT_4B_VCNT else COMPACT_2B_PACK) - 4) * 8 // vcnt


def _pack_nblk(types: Sequence[int], los: Sequence[int], i: int, big: bool) -> int:
    """Blocks between the pack base and the HEAD at pack index i (kernel unpack_compacted_index)."""
    if not big:
        nblk = 1
        while i > 0:
            i -= 1
            if types[i] == Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
                i -= los[i]
            if i >= 0:
                nblk += 1
        return nblk
    nblk = 0
    while i > 0:
        i -= 1
        if types[i] == Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
            if los[i] & Z_EROFS_VLE_DI_D0_CBLKCNT:
                i -= 1
                nblk += los[i + 1] & ~Z_EROFS_VLE_DI_D0_CBLKCNT
                continue
            if los[i] <= 1:  # "bigpcluster shouldn't have plain d0 == 1"
                raise FormatError("compact index: NONHEAD with d0 <= 1 in big-pcluster mode", field="lo")
            i -= los[i] - 2
            continue
        nblk += 1
    return nblk


def encode_compact(entries: Sequence[Lcluster], ebase: int, use_2b: bool) -> bytes:
    """COMPACT index bytes (big-pcluster semantics) for `entries`, to be stored at `ebase`."""
    out = bytearray()
    total = len(entries)
    for first, vcnt, _off in _pack_layout(ebase, total, use_2b):
        bits = _encodebits(vcnt)
        types, los = [], []
        for i in range(vcnt):
            lcn = first + i
            e = entries[lcn] if lcn < total else Lcluster(Z_EROFS_VLE_CLUSTER_TYPE_PLAIN)
            if e.type != Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
                lo = e.clusterofs
            elif e.cblkcnt:
                lo = Z_EROFS_VLE_DI_D0_CBLKCNT | e.cblkcnt
            else:
                # the last entry of a pack stores delta[1], not delta[0] (docs/erofs-format.md §7.4)
                lo = e.d1 if i == vcnt - 1 else e.d0
                assert 1 <= lo <= MAX_DELTA, (lcn, e)
            types.append(e.type)
            los.append(lo)
        base = 0  # never read when the pack holds no HEAD/PLAIN
        for i in range(vcnt):
            if first + i < total and types[i] != Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
                base = entries[first + i].pblk - _pack_nblk(types, los, i, big=True)
                break
        value = 0
        for i in range(vcnt):
            value |= (los[i] | (types[i] << COMPACT_LO_BITS)) << (bits * i)
        size = COMPACT_4B_PACK if vcnt == COMPACT_4B_VCNT else COMPACT_2B_PACK
        out += value.to_bytes(size - 4, "little") + base.to_bytes(4, "little")
    return bytes(out)


# -- decoding --------------------------------------------------------------------------------------


def decode_full(buf: bytes, totalidx: int, big: bool, pos: int = 0) -> list[Lcluster]:
    """FULL (8-byte) index entries; `buf` holds exactly the index area, `pos` is for error messages."""
    out = []
    for lcn in range(totalidx):
        advise, clusterofs, u = Z_EROFS_VLE_DECOMPRESSED_INDEX.unpack_from(buf, lcn * 8)
        t = advise & Z_EROFS_VLE_DI_CLUSTER_TYPE_MASK
        if t == Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
            d0, d1 = u & 0xFFFF, u >> 16
            if d0 & Z_EROFS_VLE_DI_D0_CBLKCNT:
                if not big:
                    raise FormatError("CBLKCNT without big pcluster", offset=pos + lcn * 8, field="delta[0]")
                out.append(Lcluster(t, d0=1, d1=d1, cblkcnt=d0 & ~Z_EROFS_VLE_DI_D0_CBLKCNT))
            else:
                out.append(Lcluster(t, d0=d0, d1=d1))
        else:
            out.append(Lcluster(t, clusterofs=clusterofs, pblk=u))
    return out


def decode_compact(buf: bytes, ebase: int, totalidx: int, use_2b: bool, big: bool) -> list[Lcluster]:
    """COMPACT index entries; `buf` starts at absolute image offset `ebase`."""
    out: list[Lcluster] = []
    for first, vcnt, off in _pack_layout(ebase, totalidx, use_2b):
        size = COMPACT_4B_PACK if vcnt == COMPACT_4B_VCNT else COMPACT_2B_PACK
        pack = buf[off : off + size]
        if len(pack) != size:
            raise FormatError("compact index truncated", offset=ebase + off, field="z_erofs_compact_index")
        bits = _encodebits(vcnt)
        value = int.from_bytes(pack[:-4], "little")
        base = int.from_bytes(pack[-4:], "little")
        types = [(value >> (bits * i + COMPACT_LO_BITS)) & 3 for i in range(vcnt)]
        los = [(value >> (bits * i)) & LO_MASK for i in range(vcnt)]
        for i in range(min(vcnt, totalidx - first)):
            out.append(_decode_one(types, los, i, vcnt, base, big, ebase + off))
    return out


def _decode_one(
    types: list[int], los: list[int], i: int, vcnt: int, base: int, big: bool, at: int
) -> Lcluster:
    t, lo = types[i], los[i]
    if t != Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
        return Lcluster(t, clusterofs=lo, pblk=base + _pack_nblk(types, los, i, big))
    d1 = _lookahead(types, los, i, vcnt)
    if lo & Z_EROFS_VLE_DI_D0_CBLKCNT:
        if not big:
            raise FormatError("CBLKCNT without big pcluster", offset=at, field="lo")
        return Lcluster(t, d0=1, d1=d1, cblkcnt=lo & ~Z_EROFS_VLE_DI_D0_CBLKCNT)
    if i + 1 != vcnt:
        return Lcluster(t, d0=lo, d1=d1)
    # last entry of the pack: lo is delta[1]; delta[0] comes from the previous entry
    prev_t, prev = types[i - 1], los[i - 1]
    d0 = (
        1
        if prev_t != Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD
        else 2
        if prev & Z_EROFS_VLE_DI_D0_CBLKCNT
        else prev + 1
    )
    return Lcluster(t, d0=d0, d1=d1)


def _lookahead(types: list[int], los: list[int], i: int, vcnt: int) -> int:
    """delta[1] as the kernel's get_compacted_la_distance computes it."""
    d1 = 0
    lo = 0
    while i < vcnt:
        lo = los[i]
        if types[i] != Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
            return d1
        d1 += 1
        i += 1
    if not lo & Z_EROFS_VLE_DI_D0_CBLKCNT:
        d1 += lo - 1
    return d1


@dataclass(frozen=True, slots=True)
class Extent:
    """A logical byte range [start, end) of a file and where its data is."""

    start: int
    end: int
    pblk: int
    blocks: int
    compressed: bool


def extents_of(entries: Sequence[Lcluster], size: int, big: bool) -> list[Extent]:
    """Turn decoded index entries into extents, validating them the way the kernel maps them."""
    totalidx = len(entries)
    heads = [lcn for lcn, e in enumerate(entries) if e.type != Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD]
    if not heads or heads[0] != 0:
        raise FormatError("compressed file does not start with a HEAD/PLAIN lcluster", field="lcn 0")
    last_head = 0
    for lcn, e in enumerate(entries):
        if e.type == Z_EROFS_VLE_CLUSTER_TYPE_HEAD2:
            raise FormatError(f"lcluster {lcn}: HEAD2 (second algorithm) is not supported", field="type")
        if e.type == Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
            # the kernel finds a NONHEAD's extent through delta[0] (z_erofs_extent_lookback)
            if lcn - e.d0 != last_head:
                raise FormatError(
                    f"lcluster {lcn}: delta[0]={e.d0} does not lead to its HEAD", field="delta[0]"
                )
            continue
        last_head = lcn
        if e.clusterofs >= BLOCK_SIZE:
            raise FormatError(f"lcluster {lcn}: clusterofs {e.clusterofs} >= block size", field="clusterofs")
    out: list[Extent] = []
    for k, lcn in enumerate(heads):
        e = entries[lcn]
        start = lcn * BLOCK_SIZE + e.clusterofs
        if start >= size:
            continue  # mkfs 1.5 writes a final PLAIN index starting at i_size (docs/erofs-format.md §7.7)
        end = (
            size
            if k + 1 == len(heads)
            else min(size, heads[k + 1] * BLOCK_SIZE + entries[heads[k + 1]].clusterofs)
        )
        if end <= start:
            raise FormatError(f"lcluster {lcn}: empty or backwards extent", field="clusterofs")
        blocks = 1
        compressed = e.type == Z_EROFS_VLE_CLUSTER_TYPE_HEAD
        if compressed and big:
            nxt = entries[lcn + 1] if lcn + 1 < totalidx else None
            if nxt is None:
                raise FormatError(f"lcluster {lcn}: compressed HEAD in the last lcluster", field="type")
            if nxt.type == Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD:
                if not nxt.cblkcnt:
                    raise FormatError(f"lcluster {lcn + 1}: cannot find CBLKCNT", field="delta[0]")
                blocks = nxt.cblkcnt
        if not compressed and end - start > BLOCK_SIZE:
            raise FormatError(f"lcluster {lcn}: PLAIN extent longer than one block", field="type")
        out.append(Extent(start, end, e.pblk, blocks, compressed))
    return out

"""Pure unit tests: on-disk encoders, directory packing, record placement, block maps."""

from __future__ import annotations

import pytest

from initbuild.errors import FormatError
from initbuild.formats.erofs import format as fmt
from initbuild.formats.erofs.layout import MetaAllocator, Node, pack_dir_blocks, xattr_area
from initbuild.formats.erofs.zmap import (
    Pcluster,
    compact_index_size,
    decode_compact,
    encode_compact,
    extents_of,
    lclusters_of,
)
from initbuild.manifest import Entry, Kind


def test_crc32c_and_rdev_vectors() -> None:
    assert fmt.erofs_crc32c(b"123456789") == 0x1CF96D7C  # docs/erofs-format.md §2: no final xor
    # docs/erofs-format.md §3.5
    assert fmt.encode_rdev(4, 65) == 0x441 and fmt.encode_rdev(259, 300) == 0x11032C
    assert fmt.decode_rdev(0x11032C) == (259, 300)
    assert [fmt.i_format(v, lay) for v, lay in ((0, 2), (0, 0), (0, 3), (0, 1), (1, 2))] == [4, 0, 6, 2, 5]


def test_dir_blocks_never_split_an_entry() -> None:
    names = sorted([b".", b"..", b"!a"] + [b"%04d" % i + b"x" * 200 for i in range(100)])
    counts = pack_dir_blocks(names)
    assert sum(counts) == len(names)
    i = 0
    for c in counts:
        assert sum(12 + len(n) for n in names[i : i + c]) <= 4096
        i += c
    assert names[:3] == [b"!a", b".", b".."]  # "!" sorts before "." (docs/erofs-format.md §5.3)
    with pytest.raises(FormatError):
        pack_dir_blocks([b"x" * 256])


def test_meta_allocator_keeps_records_in_one_block() -> None:
    alloc = MetaAllocator()
    assert alloc.place(64) == 0  # the root comes first: nid 0
    offs = [alloc.place(size) for size in (4000, 100, 32, 3000, 5000, 33)]
    for off, size in zip(offs, (4000, 100, 32, 3000, 5000, 33), strict=True):
        assert off % 32 == 0
        if size <= 4096:
            assert off // 4096 == (off + size - 1) // 4096
    assert offs[0] == 64 and offs[1] == 4096 and offs[2] == 4064  # best fit fills block 0


def test_inline_tail_rule() -> None:
    n = Node(0, Entry("/f", Kind.FILE, 0o644, data=b""), size=4096 + 4000)
    assert n.inline_tail_len() == 4000  # 32 + 4000 <= 4096
    n.size = 8192
    assert n.inline_tail_len() == 0  # whole blocks never inline (docs/erofs-format.md §4.2)
    n.size, n.extended = 4064, True
    assert n.inline_tail_len() == 0  # 64 + 4064 > 4096


def test_xattr_area_encoding() -> None:
    area = xattr_area(Entry("/f", Kind.FILE, 0o644, data=b"", xattrs=(("user.foo", b"bar"),)))
    assert area == bytes(12) + b"\x03\x01\x03\x00foobar\0\0"  # mkfs 1.5 (docs/erofs-format.md §6.2)
    with pytest.raises(FormatError, match="/f"):
        xattr_area(Entry("/f", Kind.FILE, 0o644, data=b"", xattrs=(("os2.x", b""),)))


C, P = True, False
LAYOUTS = {
    # fixed-input extents: every extent starts on an lcluster boundary
    "aligned": [(5 * 4096, 2, C), (3 * 4096, 3, P), (40 * 4096, 16, C), (2 * 4096, 1, C), (4091, 1, P)],
    # fixed-output extents: starts mid-lcluster, PLAIN runs shifted by the same clusterofs, a PLAIN
    # block running into the last lcluster (EOF gets a HEAD of its own)
    "mid-lcluster": [(10000, 1, C), (20000, 3, C), (2 * 4096, 2, P), (12293, 2, C), (4096, 1, P)],
    # an extent ending exactly on an lcluster boundary, then one starting mid-lcluster again
    "ends-on-boundary": [(3 * 4096 + 5, 2, C), (4 * 4096 - 5, 2, C), (9000, 2, C), (30000, 4, C)],
    # a compressed extent up to the last byte but one, then a 1-byte PLAIN extent
    "one-byte-tail": [(8191, 1, C), (1, 1, P)],
    # a 1-block pcluster whose next extent starts in the very next lcluster (no CBLKCNT entry)
    "no-cblkcnt": [(4096 + 17, 1, C), (3 * 4096, 2, C), (100, 1, P)],
    # the last extent ends one byte into the last lcluster
    "last-lcluster-one-byte": [(5000, 1, C), (3 * 4096 + 1 - 5000, 2, C)],
    # long extents: CBLKCNT and deltas across 2B packs
    "long": [(100 * 4096 + 123, 16, C), (70 * 4096, 30, C), (5 * 4096, 5, P), (33, 1, P)],
}


@pytest.mark.parametrize("use_2b", [False, True])
@pytest.mark.parametrize("ebase_mod", [0, 8, 16, 24])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_compact_index_round_trip(use_2b: bool, ebase_mod: int, layout: str) -> None:
    pcs = [Pcluster(length, blocks, compressed) for length, blocks, compressed in LAYOUTS[layout]]
    size = sum(p.length for p in pcs)
    total = -(-size // 4096)
    entries = lclusters_of(pcs, 100)
    assert len(entries) == total
    ebase = 4096 * 7 + 64 + ebase_mod
    raw = encode_compact(entries, ebase, use_2b)
    assert len(raw) == compact_index_size(ebase, total, use_2b)
    decoded = decode_compact(raw, ebase, total, use_2b, big=True)
    assert [(e.type, e.clusterofs) for e in decoded] == [(e.type, e.clusterofs) for e in entries]
    got = [(x.start, x.end, x.pblk, x.blocks, x.compressed) for x in extents_of(decoded, size, True)]
    want, pos, pblk = [], 0, 100
    for p in pcs:
        if p.compressed:
            want.append((pos, pos + p.length, pblk, p.blocks, True))
            pblk += p.blocks
        else:  # one PLAIN extent per block of the run
            for k in range(p.blocks):
                want.append((pos + 4096 * k, min(pos + 4096 * (k + 1), pos + p.length), pblk, 1, False))
                pblk += 1
        pos += p.length
    assert got == want


def test_block_map_rejects_unencodable_layouts() -> None:
    with pytest.raises(AssertionError):  # two extents would start in lcluster 0
        lclusters_of([Pcluster(100, 1, C), Pcluster(5000, 1, C)], 1)
    with pytest.raises(AssertionError):  # a 2-block pcluster with no lcluster left for CBLKCNT
        lclusters_of([Pcluster(4096 + 17, 2, C), Pcluster(3 * 4096, 2, C)], 1)
    with pytest.raises(AssertionError):  # a compressed HEAD in the last lcluster
        lclusters_of([Pcluster(4096, 1, P), Pcluster(3000, 1, C)], 1)

"""Pure unit tests: on-disk encoders, directory packing, record placement, block maps."""

from __future__ import annotations

import pytest

from initbuild.erofs import format as fmt
from initbuild.erofs.layout import MetaAllocator, Node, pack_dir_blocks, xattr_area
from initbuild.erofs.zmap import (
    Pcluster,
    compact_index_size,
    decode_compact,
    encode_compact,
    extents_of,
    lclusters_of,
)
from initbuild.errors import FormatError
from initbuild.manifest import Entry, Kind


def test_crc32c_and_rdev_vectors() -> None:
    assert fmt.erofs_crc32c(b"123456789") == 0x1CF96D7C  # notes §2: no final xor
    assert fmt.encode_rdev(4, 65) == 0x441 and fmt.encode_rdev(259, 300) == 0x11032C  # notes §3.5
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
    assert names[:3] == [b"!a", b".", b".."]  # "!" sorts before "." (notes §5.3)
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
    assert offs[0] == 64 and offs[1] == 4096 and offs[2] == 4064  # first fit fills block 0


def test_inline_tail_rule() -> None:
    n = Node(0, Entry("/f", Kind.FILE, 0o644, data=b""), size=4096 + 4000)
    assert n.inline_tail_len() == 4000  # 32 + 4000 <= 4096
    n.size = 8192
    assert n.inline_tail_len() == 0  # whole blocks never inline (notes §4.2)
    n.size, n.extended = 4064, True
    assert n.inline_tail_len() == 0  # 64 + 4064 > 4096


def test_xattr_area_encoding() -> None:
    area = xattr_area(Entry("/f", Kind.FILE, 0o644, data=b"", xattrs=(("user.foo", b"bar"),)))
    assert area == bytes(12) + b"\x03\x01\x03\x00foobar\0\0"  # as mkfs 1.5 writes it (notes §6.2)
    with pytest.raises(FormatError, match="/f"):
        xattr_area(Entry("/f", Kind.FILE, 0o644, data=b"", xattrs=(("os2.x", b""),)))


@pytest.mark.parametrize("use_2b", [False, True])
@pytest.mark.parametrize("ebase_mod", [0, 8, 16, 24])
def test_compact_index_round_trip(use_2b: bool, ebase_mod: int) -> None:
    pcs = [
        Pcluster(5, 2, True),
        Pcluster(3, 3, False),
        Pcluster(40, 16, True),
        Pcluster(2, 1, True),
        Pcluster(1, 1, False),
    ]
    total = sum(p.lclusters for p in pcs)
    entries = lclusters_of(pcs, 100)
    ebase = 4096 * 7 + 64 + ebase_mod
    raw = encode_compact(entries, ebase, use_2b)
    assert len(raw) == compact_index_size(ebase, total, use_2b)
    decoded = decode_compact(raw, ebase, total, use_2b, big=True)
    got = [
        (x.start, x.end, x.pblk, x.blocks, x.compressed) for x in extents_of(decoded, total * 4096 - 5, True)
    ]
    want, lcn, pblk = [], 0, 100
    for p in pcs:
        steps = [(1, p.blocks)] if p.compressed else [(1, 1)] * p.lclusters
        for i, (_, blocks) in enumerate(steps):
            span = p.lclusters if p.compressed else 1
            start = (lcn + i) * 4096
            want.append((start, min(start + span * 4096, total * 4096 - 5), pblk, blocks, p.compressed))
            pblk += blocks
        lcn += p.lclusters
    assert got == want

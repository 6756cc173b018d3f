"""Reading file content: flat blocks, inline tails, and compressed extents (map header, lcluster
index, LZ4 pclusters). Every block address and length is checked against the image first."""

from __future__ import annotations

import lz4.block

from ...errors import FormatError
from .decode import Inode, Pread, Superblock
from .format import (
    BLOCK_SIZE,
    EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER,
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING,
    EROFS_INODE_COMPRESSED_FULL,
    EROFS_INODE_FLAT_INLINE,
    EROFS_INODE_FLAT_PLAIN,
    Z_EROFS_ADVISE_BIG_PCLUSTER_1,
    Z_EROFS_ADVISE_BIG_PCLUSTER_2,
    Z_EROFS_ADVISE_COMPACTED_2B,
    Z_EROFS_ADVISE_FRAGMENT_PCLUSTER,
    Z_EROFS_ADVISE_INLINE_PCLUSTER,
    Z_EROFS_ADVISE_INTERLACED_PCLUSTER,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_FULL_INDEX_ALIGN_RESERVED,
    Z_EROFS_MAP_HEADER,
    Z_EROFS_VLE_DECOMPRESSED_INDEX,
)
from .zmap import Extent, compact_index_size, decode_compact, decode_full, extents_of

LZ4_MAX_RATIO = 255  # an LZ4 block cannot expand more than ~255x: bounds forged extent sizes


def read_blocks(pread: Pread, blkaddr: int, count: int, what: str) -> bytes:
    """`count` whole blocks from `blkaddr`; block 0 (the superblock) never holds data."""
    if count and blkaddr == 0:
        raise FormatError(f"{what} points into block 0 (the superblock)", offset=0, field=what)
    return pread(blkaddr * BLOCK_SIZE, count * BLOCK_SIZE, what)


def file_data(ino: Inode, sb: Superblock, pread: Pread, image_size: int) -> bytes:
    """The content of a FILE, SYMLINK or DIR inode."""
    if ino.layout == EROFS_INODE_FLAT_PLAIN:
        n = -(-ino.size // BLOCK_SIZE)
        return read_blocks(pread, ino.i_u, n, "raw_blkaddr")[: ino.size] if n else b""
    if ino.layout == EROFS_INODE_FLAT_INLINE:
        full = ino.size // BLOCK_SIZE
        head = read_blocks(pread, ino.i_u, full, "raw_blkaddr") if full else b""
        return head + pread(ino.data_offset, ino.size - full * BLOCK_SIZE, "inline data")
    return _decompress(ino, sb, pread, image_size)


def compressed_extents(ino: Inode, sb: Superblock, pread: Pread, image_size: int) -> list[Extent]:
    """Decode and validate the block map of a compressed inode (docs/erofs-format.md §7)."""
    hpos = -(-ino.data_offset // 8) * 8
    h_reserved, advise, algorithm, clusterbits = Z_EROFS_MAP_HEADER.unpack(
        pread(hpos, Z_EROFS_MAP_HEADER.size, "z_erofs_map_header")
    )
    unsupported = (
        Z_EROFS_ADVISE_INLINE_PCLUSTER | Z_EROFS_ADVISE_INTERLACED_PCLUSTER | Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
    )
    if advise & unsupported or clusterbits or algorithm & 0xF != Z_EROFS_COMPRESSION_LZ4:
        raise FormatError(f"nid {ino.nid}: unsupported compression map header", offset=hpos, field="h_advise")
    big = bool(advise & (Z_EROFS_ADVISE_BIG_PCLUSTER_1 | Z_EROFS_ADVISE_BIG_PCLUSTER_2))
    if big and not sb.feature_incompat & EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER:
        raise FormatError(f"nid {ino.nid}: big pcluster without the feature", offset=hpos, field="h_advise")
    totalidx = -(-ino.size // BLOCK_SIZE)
    if ino.layout == EROFS_INODE_COMPRESSED_FULL:
        pos = hpos + Z_EROFS_MAP_HEADER.size + Z_EROFS_FULL_INDEX_ALIGN_RESERVED
        length = totalidx * Z_EROFS_VLE_DECOMPRESSED_INDEX.size
        entries = decode_full(pread(pos, length, "lcluster index"), totalidx, big, pos)
    else:
        if big and not advise & Z_EROFS_ADVISE_BIG_PCLUSTER_2:
            raise FormatError(f"nid {ino.nid}: inconsistent big pcluster bits", offset=hpos, field="h_advise")
        pos = hpos + Z_EROFS_MAP_HEADER.size
        use_2b = bool(advise & Z_EROFS_ADVISE_COMPACTED_2B)
        length = compact_index_size(pos, totalidx, use_2b)
        entries = decode_compact(pread(pos, length, "compact index"), pos, totalidx, use_2b, big)
    try:
        extents = extents_of(entries, ino.size, big)
    except FormatError as e:
        raise FormatError(f"nid {ino.nid}: {e.message}", offset=pos, field=e.field) from None
    for x in extents:
        if x.blocks > sb.max_pclusterblks or x.pblk == 0 or (x.pblk + x.blocks) * BLOCK_SIZE > image_size:
            raise FormatError(
                f"nid {ino.nid}: pcluster at block {x.pblk} is invalid", offset=pos, field="blkaddr"
            )
        if x.compressed and x.end - x.start > x.blocks * BLOCK_SIZE * LZ4_MAX_RATIO:
            raise FormatError(f"nid {ino.nid}: impossible compression ratio", offset=pos, field="blkaddr")
    return extents


def _decompress(ino: Inode, sb: Superblock, pread: Pread, image_size: int) -> bytes:
    out = bytearray()
    for x in compressed_extents(ino, sb, pread, image_size):
        raw = read_blocks(pread, x.pblk, x.blocks, "pcluster")
        n = x.end - x.start
        if not x.compressed:
            out += raw[:n]
            continue
        if not sb.feature_incompat & EROFS_FEATURE_INCOMPAT_ZERO_PADDING:
            raise FormatError(
                "compressed data without ZERO_PADDING is not supported", field="feature_incompat"
            )
        # the LZ4 block is right-aligned: it starts at the first non-zero byte of the first block
        # (docs/erofs-format.md §7.6)
        pad = len(raw[:BLOCK_SIZE]) - len(raw[:BLOCK_SIZE].lstrip(b"\0"))
        if pad == BLOCK_SIZE:
            raise FormatError(
                f"nid {ino.nid}: zero pcluster head", offset=x.pblk * BLOCK_SIZE, field="pcluster"
            )
        try:
            plain = lz4.block.decompress(raw[pad:], uncompressed_size=n)
        except lz4.block.LZ4BlockError:
            plain = b""
        if len(plain) != n:
            raise FormatError(
                f"nid {ino.nid}: pcluster does not decompress to {n} bytes",
                offset=x.pblk * BLOCK_SIZE,
                field="pcluster",
            )
        out += plain
    if len(out) != ino.size:
        raise FormatError(f"nid {ino.nid}: extents do not cover the file", offset=ino.offset, field="i_size")
    return bytes(out)

"""Serialise a Manifest as an EROFS image that Linux 6.1 mounts and fsck.erofs 1.5 accepts.

Three phases (see layout.py for the image shape):

1. data (data.py): file contents are compressed (compressor.py) and streamed to blocks 1..D;
2. layout (layout.py): each inode's layout is chosen and its record placed (nids), directory
   blocks get addresses;
3. serialisation (here): the metadata area and directory blocks, then block 0 with its checksum.
"""

from __future__ import annotations

import hashlib
import uuid as uuid_mod
from dataclasses import dataclass
from typing import BinaryIO

from ... import log
from ...errors import ConfigError, FormatError
from ...manifest import Kind, Manifest, entry_size
from ...sysroot import Sysroot
from .compressor import COMPRESSIONS, lz4_codec
from .data import write_data
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
    USE_COMPACT_2B,
    Node,
    Placement,
    Record,
    collect_nodes,
    compressed_meta_offset,
    plan_records,
    xattr_icount,
)
from .zmap import encode_compact, lclusters_of

MIN_KERNEL_BIG_PCLUSTER = (5, 13)  # COMPR_CFGS/BIG_PCLUSTER (docs/erofs-format.md §2)


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
    compressor: str  # which LZ4 ran: "liblz4 1.9.4 (fixed-output)", the python-lz4 emulation, or ""

    def __str__(self) -> str:
        ratio = f"{100 * self.data_blocks * BLOCK_SIZE / self.input_bytes:.1f}%" if self.input_bytes else "-"
        return (
            f"EROFS image: {self.bytes} bytes ({self.blocks} blocks), {self.inodes} inodes, "
            f"{self.compressed_files}/{self.files} files compressed, data {ratio} of input, "
            f"metadata {self.meta_blocks} + directory {self.dir_blocks} blocks, uuid {self.uuid}"
        )


def _dir_data(node: Node, nids: list[int], ftypes: list[int]) -> list[bytes]:
    """Directory blocks: dirents then names; non-final blocks zero-padded (docs/erofs-format.md §5.2)."""
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


def _inode_bytes(n: Node, rec: Record, p: Placement | None, nid: int) -> bytes:
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
    """Padding to 8, z_erofs_map_header and the compact index (docs/erofs-format.md §7.2, §7.4)."""
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
    codec = lz4_codec(options.compression, options.level)
    how = f", {codec.path}" if codec else ""
    with log.step(f"Writing EROFS data ({len(sizes)} files, {options.compression}{how})"):
        placements, meta_blkaddr, data_digest = write_data(
            nodes,
            sysroot,
            out,
            codec,
            maxc=options.max_pcluster_blocks,
            workers=options.workers,
        )
    records, meta_blocks = plan_records(nodes, placements)
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
        compressor=codec.path if codec else "",
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
    """Block 0: superblock (+ LZ4 config record when compressed), checksum computed last
    (docs/erofs-format.md §2)."""
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

"""Decoding EROFS metadata: the superblock, inodes, xattr entries and directory blocks.

Every value is checked before it is used, against what the Linux 6.1 kernel accepts and against
the image size; bad input raises FormatError naming the offset and field. Functions get the bytes
they decode, or a `Pread` to fetch them, and keep no state: reader.py caches and walks the tree.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import FormatError
from ...manifest import Kind
from .format import (
    BLKSZBITS,
    BLOCK_SIZE,
    CHECKSUMMED_BYTES,
    COMPR_CFGS_OFFSET,
    DIRENT,
    EROFS_FEATURE_COMPAT_SB_CHKSUM,
    EROFS_FEATURE_INCOMPAT_COMPR_CFGS,
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING,
    EROFS_I_ALL,
    EROFS_INODE_COMPRESSED_COMPACT,
    EROFS_INODE_COMPRESSED_FULL,
    EROFS_INODE_FLAT_INLINE,
    EROFS_INODE_FLAT_PLAIN,
    EROFS_INODE_LAYOUT_EXTENDED,
    EROFS_SUPER_MAGIC_V1,
    EROFS_SUPER_OFFSET,
    INODE_COMPACT,
    INODE_EXTENDED,
    ISLOTBITS,
    SB_CHECKSUM_OFFSET,
    SUPERBLOCK,
    XATTR_ALIGN,
    XATTR_ENTRY,
    XATTR_PREFIX_BY_INDEX,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_PCLUSTER_MAX_BLOCKS,
    erofs_crc32c,
    i_format_datalayout,
    i_format_version,
    xattr_ibody_size,
)

# Incompatible features this reader decodes: no chunk-based files, device tables, tail packing
# or fragments.
READABLE_INCOMPAT = EROFS_FEATURE_INCOMPAT_ZERO_PADDING | EROFS_FEATURE_INCOMPAT_COMPR_CFGS

Pread = Callable[[int, int, str], bytes]  # (offset, length, what) -> exactly length bytes, or FormatError


@dataclass(frozen=True)
class Superblock:
    feature_compat: int
    feature_incompat: int
    root_nid: int
    inos: int
    build_time: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: str
    max_pclusterblks: int


@dataclass(frozen=True)
class Inode:
    nid: int
    offset: int  # iloc
    kind: Kind
    mode: int  # permission bits
    layout: int
    inode_size: int
    xattr_size: int
    size: int
    i_u: int
    nlink: int
    uid: int
    gid: int
    mtime: int

    @property
    def data_offset(self) -> int:
        """First byte after the inode and its inline xattrs (inline tail / block map position)."""
        return self.offset + self.inode_size + self.xattr_size


@dataclass(frozen=True)
class Dirent:
    name: bytes
    nid: int
    file_type: int


# -- superblock (docs/erofs-format.md §2) ----------------------------------------------------------


def decode_superblock(block0: bytes, image_size: int) -> Superblock:
    """Decode and check block 0 of an image of `image_size` bytes."""
    f = SUPERBLOCK.unpack_from(block0, EROFS_SUPER_OFFSET)
    (magic, checksum, compat, blkszbits, extslots, root_nid, inos, build_time, _nsec, blocks) = f[:10]
    meta_blkaddr, xattr_blkaddr, uuid, volume_name, incompat, u1 = f[10:16]
    dirblkbits = f[18]
    at = EROFS_SUPER_OFFSET
    if magic != EROFS_SUPER_MAGIC_V1:
        raise FormatError(f"not an EROFS image (magic 0x{magic:08x})", offset=at, field="magic")
    if compat & EROFS_FEATURE_COMPAT_SB_CHKSUM:
        data = bytearray(block0[at : at + CHECKSUMMED_BYTES])
        data[SB_CHECKSUM_OFFSET : SB_CHECKSUM_OFFSET + 4] = bytes(4)
        if erofs_crc32c(bytes(data)) != checksum:
            raise FormatError(
                "superblock checksum mismatch", offset=at + SB_CHECKSUM_OFFSET, field="checksum"
            )
    if blkszbits != BLKSZBITS:
        raise FormatError(f"unsupported block size 2^{blkszbits}", offset=at + 0x0C, field="blkszbits")
    if incompat & ~READABLE_INCOMPAT:
        raise FormatError(
            f"unsupported incompatible features 0x{incompat & ~READABLE_INCOMPAT:x}",
            offset=at + 0x50,
            field="feature_incompat",
        )
    if dirblkbits:
        raise FormatError("dirblkbits must be 0", offset=at + 0x5A, field="dirblkbits")
    if b"\0" not in volume_name:
        raise FormatError("volume name without NUL terminator", offset=at + 0x40, field="volume_name")
    if blocks * BLOCK_SIZE > image_size:
        raise FormatError(
            f"image truncated: superblock says {blocks} blocks, file has {image_size} bytes",
            offset=at + 0x24,
            field="blocks",
        )
    if meta_blkaddr >= blocks:
        raise FormatError(
            f"meta_blkaddr {meta_blkaddr} outside the image", offset=at + 0x28, field="meta_blkaddr"
        )
    maxc = 1
    if incompat & EROFS_FEATURE_INCOMPAT_COMPR_CFGS:
        maxc = _compr_cfgs(block0, u1, extslots)
    return Superblock(
        compat,
        incompat,
        root_nid,
        inos,
        build_time,
        blocks,
        meta_blkaddr,
        xattr_blkaddr,
        uuid,
        volume_name.split(b"\0", 1)[0].decode("utf-8", "replace"),
        maxc,
    )


def _compr_cfgs(block0: bytes, algs: int, extslots: int) -> int:
    """Parse the compression config records; only LZ4 is accepted. Returns max_pclusterblks."""
    pos = COMPR_CFGS_OFFSET + 16 * extslots
    if algs & ~(1 << Z_EROFS_COMPRESSION_LZ4):
        raise FormatError(
            f"unsupported compression algorithms 0x{algs:x}", offset=EROFS_SUPER_OFFSET + 0x54, field="u1"
        )
    maxc = 1
    if algs:
        if pos + 6 > BLOCK_SIZE:
            raise FormatError(
                "LZ4 config record outside block 0", offset=EROFS_SUPER_OFFSET + 0x0D, field="sb_extslots"
            )
        length, _dist, maxc = struct.unpack_from("<HHH", block0, pos)
        if length < 4 or pos + 2 + length > BLOCK_SIZE:
            raise FormatError("bad LZ4 config record length", offset=pos, field="z_erofs_lz4_cfgs")
        if maxc > Z_EROFS_PCLUSTER_MAX_BLOCKS:
            raise FormatError(f"max_pclusterblks {maxc} > 256", offset=pos + 4, field="max_pclusterblks")
    return max(maxc, 1)


# -- inodes (docs/erofs-format.md §3) --------------------------------------------------------------


def decode_inode(nid: int, pread: Pread, sb: Superblock, image_size: int) -> Inode:
    """Decode and check the inode `nid`; `pread` reads the image."""
    off = sb.meta_blkaddr * BLOCK_SIZE + (nid << ISLOTBITS)
    if nid < 0 or off + INODE_COMPACT.size > image_size:
        raise FormatError(f"nid {nid} outside the image", offset=off, field="nid")
    head = pread(off, INODE_COMPACT.size, "inode")
    fmt = head[0] | head[1] << 8
    if fmt & ~EROFS_I_ALL:
        raise FormatError(f"nid {nid}: unsupported i_format 0x{fmt:x}", offset=off, field="i_format")
    layout = i_format_datalayout(fmt)
    if i_format_version(fmt) == EROFS_INODE_LAYOUT_EXTENDED:
        raw = pread(off, INODE_EXTENDED.size, "inode")
        _f, icount, mode, _r, size, i_u, _ino, uid, gid, mtime, _ns, nlink, _r2 = INODE_EXTENDED.unpack(raw)
        isize = INODE_EXTENDED.size
    else:
        _f, icount, mode, nlink, size, _r, i_u, _ino, uid, gid, _r2 = INODE_COMPACT.unpack(head)
        isize, mtime = INODE_COMPACT.size, sb.build_time
    kind = Kind.from_mode(mode)
    if kind is None:
        raise FormatError(f"nid {nid}: bad file type in i_mode 0{mode:o}", offset=off + 4, field="i_mode")
    if icount == 1:
        raise FormatError(f"nid {nid}: i_xattr_icount 1 is invalid", offset=off + 2, field="i_xattr_icount")
    ino = Inode(
        nid,
        off,
        kind,
        stat.S_IMODE(mode),
        layout,
        isize,
        xattr_ibody_size(icount),
        size,
        i_u,
        nlink,
        uid,
        gid,
        mtime,
    )
    _check_layout(ino, image_size)
    return ino


def _check_layout(ino: Inode, image_size: int) -> None:
    at = ino.offset
    if ino.data_offset > image_size:
        raise FormatError(f"nid {ino.nid}: xattrs run past the image end", offset=at, field="i_xattr_icount")
    if ino.kind in (Kind.CHAR, Kind.BLOCK, Kind.FIFO, Kind.SOCKET):
        return
    if ino.layout in (EROFS_INODE_COMPRESSED_FULL, EROFS_INODE_COMPRESSED_COMPACT):
        if ino.kind is not Kind.FILE:
            raise FormatError(f"nid {ino.nid}: compressed {ino.kind}", offset=at, field="i_format")
        return
    if ino.layout not in (EROFS_INODE_FLAT_PLAIN, EROFS_INODE_FLAT_INLINE):
        raise FormatError(f"nid {ino.nid}: unsupported data layout {ino.layout}", offset=at, field="i_format")
    full = ino.size // BLOCK_SIZE if ino.layout == EROFS_INODE_FLAT_INLINE else -(-ino.size // BLOCK_SIZE)
    if full and (ino.i_u == 0 or (ino.i_u + full) * BLOCK_SIZE > image_size):
        raise FormatError(
            f"nid {ino.nid}: data blocks outside the image", offset=at + 0x10, field="raw_blkaddr"
        )
    if ino.layout == EROFS_INODE_FLAT_INLINE:
        tail = ino.size - full * BLOCK_SIZE
        if ino.data_offset % BLOCK_SIZE + tail > BLOCK_SIZE or ino.data_offset + tail > image_size:
            raise FormatError(
                f"nid {ino.nid}: inline data crosses a block boundary", offset=at, field="i_size"
            )


# -- extended attributes (docs/erofs-format.md §6) -------------------------------------------------


def decode_xattr_entry(buf: bytes, pos: int, at: int, nid: int) -> tuple[tuple[str, bytes], int]:
    """The xattr entry at buf[pos] (image offset `at`) and its size with padding."""
    if pos + XATTR_ENTRY.size > len(buf):
        raise FormatError(f"nid {nid}: xattr entry header truncated", offset=at, field="i_xattr_icount")
    name_len, index, value_size = XATTR_ENTRY.unpack_from(buf, pos)
    end = pos + XATTR_ENTRY.size + name_len + value_size
    if end > len(buf):
        raise FormatError(f"nid {nid}: xattr entry runs past its area", offset=at, field="e_value_size")
    prefix = XATTR_PREFIX_BY_INDEX.get(index)
    if prefix is None:
        raise FormatError(f"nid {nid}: unknown xattr name index {index}", offset=at, field="e_name_index")
    name = prefix + os.fsdecode(buf[pos + XATTR_ENTRY.size : pos + XATTR_ENTRY.size + name_len])
    value = bytes(buf[end - value_size : end])
    return (name, value), -(-(end - pos) // XATTR_ALIGN) * XATTR_ALIGN


# -- directories (docs/erofs-format.md §5) ---------------------------------------------------------


def decode_dir_block(ino: Inode, blk: bytes, start: int) -> list[Dirent]:
    """The entries of the directory block `blk`, at byte `start` of the directory."""
    where = f"directory nid {ino.nid} block {start // BLOCK_SIZE}"
    if len(blk) < DIRENT.size:
        raise FormatError(f"{where}: truncated", offset=ino.offset, field="i_size")
    nameoff0 = DIRENT.unpack_from(blk, 0)[1]
    if nameoff0 < DIRENT.size or nameoff0 % DIRENT.size or nameoff0 >= len(blk):
        raise FormatError(f"{where}: bad nameoff {nameoff0}", offset=ino.offset, field="nameoff")
    count = nameoff0 // DIRENT.size
    heads = [DIRENT.unpack_from(blk, i * DIRENT.size) for i in range(count)]
    out = []
    for i, (nid, nameoff, ftype, _r) in enumerate(heads):
        if i + 1 < count:
            end = heads[i + 1][1]
        else:
            nul = blk.find(b"\0", nameoff)
            end = len(blk) if nul < 0 else nul
        if not nameoff0 <= nameoff < end <= len(blk) or end - nameoff > 255:
            raise FormatError(f"{where}: bad name bounds of entry {i}", offset=ino.offset, field="nameoff")
        name = blk[nameoff:end]
        if b"/" in name or b"\0" in name:
            raise FormatError(f"{where}: invalid name {name!r}", offset=ino.offset, field="name")
        out.append(Dirent(name, nid, ftype))
    return out

"""Read EROFS images (initbuild's own and mkfs.erofs 1.5 ones) defensively.

Everything read from the image is validated before it is used: offsets against the file size,
loops against the number of inodes and bytes that could exist, and formats against what the
Linux 6.1 kernel accepts. Corrupt input raises FormatError naming the offset and field; it never
raises anything else, allocates according to a forged size, or loops forever.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lz4.block

from ...errors import FormatError, InitbuildError
from ...manifest import Kind, check_dest
from ..inspect import Member
from .format import (
    BLKSZBITS,
    BLOCK_SIZE,
    CHECKSUMMED_BYTES,
    COMPR_CFGS_OFFSET,
    DIRENT,
    EROFS_FEATURE_COMPAT_SB_CHKSUM,
    EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER,
    EROFS_FEATURE_INCOMPAT_COMPR_CFGS,
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING,
    EROFS_FT_BLKDEV,
    EROFS_FT_CHRDEV,
    EROFS_FT_DIR,
    EROFS_FT_FIFO,
    EROFS_FT_REG_FILE,
    EROFS_FT_SOCK,
    EROFS_FT_SYMLINK,
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
    XATTR_IBODY_HEADER,
    XATTR_PREFIX_BY_INDEX,
    Z_EROFS_ADVISE_BIG_PCLUSTER_1,
    Z_EROFS_ADVISE_BIG_PCLUSTER_2,
    Z_EROFS_ADVISE_COMPACTED_2B,
    Z_EROFS_ADVISE_FRAGMENT_PCLUSTER,
    Z_EROFS_ADVISE_INLINE_PCLUSTER,
    Z_EROFS_ADVISE_INTERLACED_PCLUSTER,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_FULL_INDEX_ALIGN_RESERVED,
    Z_EROFS_MAP_HEADER,
    Z_EROFS_PCLUSTER_MAX_BLOCKS,
    Z_EROFS_VLE_DECOMPRESSED_INDEX,
    decode_rdev,
    erofs_crc32c,
    i_format_datalayout,
    i_format_version,
    xattr_ibody_size,
)
from .zmap import Extent, compact_index_size, decode_compact, decode_full, extents_of

READABLE_INCOMPAT = EROFS_FEATURE_INCOMPAT_ZERO_PADDING | EROFS_FEATURE_INCOMPAT_COMPR_CFGS
LZ4_MAX_RATIO = 255  # an LZ4 block cannot expand more than ~255x: bounds forged extent sizes
MAX_SYMLINK = BLOCK_SIZE

_FT_OF_KIND = {
    Kind.FILE: EROFS_FT_REG_FILE,
    Kind.DIR: EROFS_FT_DIR,
    Kind.SYMLINK: EROFS_FT_SYMLINK,
    Kind.CHAR: EROFS_FT_CHRDEV,
    Kind.BLOCK: EROFS_FT_BLKDEV,
    Kind.FIFO: EROFS_FT_FIFO,
    Kind.SOCKET: EROFS_FT_SOCK,
}


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


class ErofsReader:
    """An EROFS image file, read with os.pread; implements image.ImageReader."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise InitbuildError(f"cannot open {self.path}: {e.strerror}") from e
        self.size = os.fstat(self._fd).st_size
        self._inodes: dict[int, Inode] = {}
        self.sb = self._superblock()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ErofsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- raw access -----------------------------------------------------------------------------
    def _pread(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(f"{what} lies outside the image ({self.size} bytes)", offset=offset, field=what)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise FormatError(f"short read of {what}", offset=offset, field=what)
        return data

    def _blocks(self, blkaddr: int, count: int, what: str) -> bytes:
        if count and blkaddr == 0:
            raise FormatError(f"{what} points into block 0 (the superblock)", offset=0, field=what)
        return self._pread(blkaddr * BLOCK_SIZE, count * BLOCK_SIZE, what)

    # -- superblock (notes §2) ------------------------------------------------------------------
    def _superblock(self) -> Superblock:
        block0 = self._pread(0, BLOCK_SIZE, "superblock")
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
        if blocks * BLOCK_SIZE > self.size:
            raise FormatError(
                f"image truncated: superblock says {blocks} blocks, file has {self.size} bytes",
                offset=at + 0x24,
                field="blocks",
            )
        if meta_blkaddr >= blocks:
            raise FormatError(
                f"meta_blkaddr {meta_blkaddr} outside the image", offset=at + 0x28, field="meta_blkaddr"
            )
        maxc = 1
        if incompat & EROFS_FEATURE_INCOMPAT_COMPR_CFGS:
            maxc = self._compr_cfgs(block0, u1, extslots)
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

    def _compr_cfgs(self, block0: bytes, algs: int, extslots: int) -> int:
        """Parse the compression config records; only LZ4 is accepted. Returns max_pclusterblks."""
        pos = COMPR_CFGS_OFFSET + 16 * extslots
        if algs & ~(1 << Z_EROFS_COMPRESSION_LZ4):
            raise FormatError(
                f"unsupported compression algorithms 0x{algs:x}", offset=1024 + 0x54, field="u1"
            )
        maxc = 1
        if algs:
            if pos + 6 > BLOCK_SIZE:
                raise FormatError(
                    "LZ4 config record outside block 0", offset=1024 + 0x0D, field="sb_extslots"
                )
            length, _dist, maxc = struct.unpack_from("<HHH", block0, pos)
            if length < 4 or pos + 2 + length > BLOCK_SIZE:
                raise FormatError("bad LZ4 config record length", offset=pos, field="z_erofs_lz4_cfgs")
            if maxc > Z_EROFS_PCLUSTER_MAX_BLOCKS:
                raise FormatError(f"max_pclusterblks {maxc} > 256", offset=pos + 4, field="max_pclusterblks")
        return max(maxc, 1)

    # -- inodes (notes §3) ----------------------------------------------------------------------
    def inode(self, nid: int) -> Inode:
        """Parse and validate the inode `nid` (cached)."""
        ino = self._inodes.get(nid)
        if ino is None:
            ino = self._inodes[nid] = self._parse_inode(nid)
        return ino

    def _parse_inode(self, nid: int) -> Inode:
        off = self.sb.meta_blkaddr * BLOCK_SIZE + (nid << ISLOTBITS)
        if nid < 0 or off + INODE_COMPACT.size > self.size:
            raise FormatError(f"nid {nid} outside the image", offset=off, field="nid")
        head = self._pread(off, INODE_COMPACT.size, "inode")
        fmt = head[0] | head[1] << 8
        if fmt & ~EROFS_I_ALL:
            raise FormatError(f"nid {nid}: unsupported i_format 0x{fmt:x}", offset=off, field="i_format")
        layout = i_format_datalayout(fmt)
        if i_format_version(fmt) == EROFS_INODE_LAYOUT_EXTENDED:
            raw = self._pread(off, INODE_EXTENDED.size, "inode")
            _f, icount, mode, _r, size, i_u, _ino, uid, gid, mtime, _ns, nlink, _r2 = INODE_EXTENDED.unpack(
                raw
            )
            isize = INODE_EXTENDED.size
        else:
            _f, icount, mode, nlink, size, _r, i_u, _ino, uid, gid, _r2 = INODE_COMPACT.unpack(head)
            isize, mtime = INODE_COMPACT.size, self.sb.build_time
        kind = Kind.from_mode(mode)
        if kind is None:
            raise FormatError(f"nid {nid}: bad file type in i_mode 0{mode:o}", offset=off + 4, field="i_mode")
        if icount == 1:
            raise FormatError(
                f"nid {nid}: i_xattr_icount 1 is invalid", offset=off + 2, field="i_xattr_icount"
            )
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
        self._check_layout(ino)
        return ino

    def _check_layout(self, ino: Inode) -> None:
        at = ino.offset
        if ino.data_offset > self.size:
            raise FormatError(
                f"nid {ino.nid}: xattrs run past the image end", offset=at, field="i_xattr_icount"
            )
        if ino.kind in (Kind.CHAR, Kind.BLOCK, Kind.FIFO, Kind.SOCKET):
            return
        if ino.layout in (EROFS_INODE_COMPRESSED_FULL, EROFS_INODE_COMPRESSED_COMPACT):
            if ino.kind is not Kind.FILE:
                raise FormatError(f"nid {ino.nid}: compressed {ino.kind}", offset=at, field="i_format")
            return
        if ino.layout not in (EROFS_INODE_FLAT_PLAIN, EROFS_INODE_FLAT_INLINE):
            raise FormatError(
                f"nid {ino.nid}: unsupported data layout {ino.layout}", offset=at, field="i_format"
            )
        full = ino.size // BLOCK_SIZE if ino.layout == EROFS_INODE_FLAT_INLINE else -(-ino.size // BLOCK_SIZE)
        if full and (ino.i_u == 0 or (ino.i_u + full) * BLOCK_SIZE > self.size):
            raise FormatError(
                f"nid {ino.nid}: data blocks outside the image", offset=at + 0x10, field="raw_blkaddr"
            )
        if ino.layout == EROFS_INODE_FLAT_INLINE:
            tail = ino.size - full * BLOCK_SIZE
            if ino.data_offset % BLOCK_SIZE + tail > BLOCK_SIZE or ino.data_offset + tail > self.size:
                raise FormatError(
                    f"nid {ino.nid}: inline data crosses a block boundary", offset=at, field="i_size"
                )

    # -- extended attributes (notes §6) ---------------------------------------------------------
    def xattrs(self, ino: Inode) -> list[tuple[str, bytes]]:
        """(name, value) pairs of an inode: inline entries, then shared ones, in on-disk order."""
        if not ino.xattr_size:
            return []
        base = ino.offset + ino.inode_size
        area = self._pread(base, ino.xattr_size, "xattr area")
        shared = area[4]
        pos = XATTR_IBODY_HEADER.size + 4 * shared
        if pos > len(area):
            raise FormatError(
                f"nid {ino.nid}: h_shared_count too large", offset=base + 4, field="h_shared_count"
            )
        out = []
        while pos < len(area):
            item, size = self._xattr_entry(area, pos, base + pos, ino.nid)
            out.append(item)
            pos += size
        for k in range(shared):
            xid = int.from_bytes(area[XATTR_IBODY_HEADER.size + 4 * k :][:4], "little")
            at = self.sb.xattr_blkaddr * BLOCK_SIZE + 4 * xid
            head = self._pread(at, XATTR_ENTRY.size, "shared xattr")
            length = XATTR_ENTRY.size + head[0] + (head[2] | head[3] << 8)
            out.append(self._xattr_entry(self._pread(at, length, "shared xattr"), 0, at, ino.nid)[0])
        return out

    def _xattr_entry(self, buf: bytes, pos: int, at: int, nid: int) -> tuple[tuple[str, bytes], int]:
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

    # -- file data ------------------------------------------------------------------------------
    def data(self, ino: Inode) -> bytes:
        """The content of a FILE, SYMLINK or DIR inode."""
        if ino.layout == EROFS_INODE_FLAT_PLAIN:
            n = -(-ino.size // BLOCK_SIZE)
            return self._blocks(ino.i_u, n, "raw_blkaddr")[: ino.size] if n else b""
        if ino.layout == EROFS_INODE_FLAT_INLINE:
            full = ino.size // BLOCK_SIZE
            head = self._blocks(ino.i_u, full, "raw_blkaddr") if full else b""
            return head + self._pread(ino.data_offset, ino.size - full * BLOCK_SIZE, "inline data")
        return self._decompress(ino)

    def extents(self, ino: Inode) -> list[Extent]:
        """Decode and validate the block map of a compressed inode (notes §7)."""
        hpos = -(-ino.data_offset // 8) * 8
        h_reserved, advise, algorithm, clusterbits = Z_EROFS_MAP_HEADER.unpack(
            self._pread(hpos, Z_EROFS_MAP_HEADER.size, "z_erofs_map_header")
        )
        unsupported = (
            Z_EROFS_ADVISE_INLINE_PCLUSTER
            | Z_EROFS_ADVISE_INTERLACED_PCLUSTER
            | Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
        )
        if advise & unsupported or clusterbits or algorithm & 0xF != Z_EROFS_COMPRESSION_LZ4:
            raise FormatError(
                f"nid {ino.nid}: unsupported compression map header", offset=hpos, field="h_advise"
            )
        big = bool(advise & (Z_EROFS_ADVISE_BIG_PCLUSTER_1 | Z_EROFS_ADVISE_BIG_PCLUSTER_2))
        if big and not self.sb.feature_incompat & EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER:
            raise FormatError(
                f"nid {ino.nid}: big pcluster without the feature", offset=hpos, field="h_advise"
            )
        totalidx = -(-ino.size // BLOCK_SIZE)
        if ino.layout == EROFS_INODE_COMPRESSED_FULL:
            pos = hpos + Z_EROFS_MAP_HEADER.size + Z_EROFS_FULL_INDEX_ALIGN_RESERVED
            length = totalidx * Z_EROFS_VLE_DECOMPRESSED_INDEX.size
            entries = decode_full(self._pread(pos, length, "lcluster index"), totalidx, big, pos)
        else:
            if big and not advise & Z_EROFS_ADVISE_BIG_PCLUSTER_2:
                raise FormatError(
                    f"nid {ino.nid}: inconsistent big pcluster bits", offset=hpos, field="h_advise"
                )
            pos = hpos + Z_EROFS_MAP_HEADER.size
            use_2b = bool(advise & Z_EROFS_ADVISE_COMPACTED_2B)
            length = compact_index_size(pos, totalidx, use_2b)
            entries = decode_compact(self._pread(pos, length, "compact index"), pos, totalidx, use_2b, big)
        try:
            extents = extents_of(entries, ino.size, big)
        except FormatError as e:
            raise FormatError(f"nid {ino.nid}: {e.message}", offset=pos, field=e.field) from None
        for x in extents:
            if (
                x.blocks > self.sb.max_pclusterblks
                or x.pblk == 0
                or (x.pblk + x.blocks) * BLOCK_SIZE > self.size
            ):
                raise FormatError(
                    f"nid {ino.nid}: pcluster at block {x.pblk} is invalid", offset=pos, field="blkaddr"
                )
            if x.compressed and x.end - x.start > x.blocks * BLOCK_SIZE * LZ4_MAX_RATIO:
                raise FormatError(f"nid {ino.nid}: impossible compression ratio", offset=pos, field="blkaddr")
        return extents

    def _decompress(self, ino: Inode) -> bytes:
        out = bytearray()
        for x in self.extents(ino):
            raw = self._blocks(x.pblk, x.blocks, "pcluster")
            n = x.end - x.start
            if not x.compressed:
                out += raw[:n]
                continue
            if not self.sb.feature_incompat & EROFS_FEATURE_INCOMPAT_ZERO_PADDING:
                raise FormatError(
                    "compressed data without ZERO_PADDING is not supported", field="feature_incompat"
                )
            # the LZ4 block is right-aligned; its start is the first non-zero byte of block 1 (notes §7.6)
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
            raise FormatError(
                f"nid {ino.nid}: extents do not cover the file", offset=ino.offset, field="i_size"
            )
        return bytes(out)

    # -- directories (notes §5) -----------------------------------------------------------------
    def dirents(self, ino: Inode) -> list[Dirent]:
        """Entries of a directory, '.' and '..' included, validated per block."""
        if ino.kind is not Kind.DIR:
            raise FormatError(f"nid {ino.nid} is not a directory", offset=ino.offset, field="i_mode")
        data = self.data(ino)
        out: list[Dirent] = []
        for start in range(0, len(data), BLOCK_SIZE):
            out += self._dir_block(ino, data[start : start + BLOCK_SIZE], start)
        # the kernel binary-searches blocks by their first name: the order must be global (notes §5.3)
        for a, b in zip(out, out[1:], strict=False):
            if a.name >= b.name:
                raise FormatError(f"directory nid {ino.nid}: names out of order at {b.name!r}", field="name")
        return out

    def _dir_block(self, ino: Inode, blk: bytes, start: int) -> list[Dirent]:
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
                raise FormatError(
                    f"{where}: bad name bounds of entry {i}", offset=ino.offset, field="nameoff"
                )
            name = blk[nameoff:end]
            if b"/" in name or b"\0" in name:
                raise FormatError(f"{where}: invalid name {name!r}", offset=ino.offset, field="name")
            out.append(Dirent(name, nid, ftype))
        return out

    # -- tree walk ------------------------------------------------------------------------------
    def _walk(self) -> list[tuple[str, Inode]]:
        """(path, inode) of every name, validating '.', '..', file types and cycles."""
        root = self.inode(self.sb.root_nid)
        if root.kind is not Kind.DIR:
            raise FormatError("root is not a directory", offset=root.offset, field="root_nid")
        out = [("/", root)]
        seen_dirs = {root.nid}
        stack = [("/", root, root.nid)]
        while stack:
            path, ino, parent = stack.pop()
            dots = 0
            for d in self.dirents(ino):
                if d.name in (b".", b".."):
                    dots += 1
                    if d.nid != (ino.nid if d.name == b"." else parent):
                        raise FormatError(
                            f"{path}: wrong {d.name.decode()} entry", offset=ino.offset, field="nid"
                        )
                    continue
                child = self.inode(d.nid)
                if _FT_OF_KIND[child.kind] != d.file_type:
                    raise FormatError(
                        f"{path}: file type of {d.name!r} disagrees with its inode", field="file_type"
                    )
                cpath = ("" if path == "/" else path) + "/" + os.fsdecode(d.name)
                out.append((cpath, child))
                if child.kind is Kind.DIR:
                    if child.nid in seen_dirs:
                        raise FormatError(
                            f"{cpath}: directory linked twice (cycle)", offset=child.offset, field="nid"
                        )
                    seen_dirs.add(child.nid)
                    stack.append((cpath, child, ino.nid))
            if dots != 2:
                raise FormatError(
                    f"{path}: missing or duplicate dot entries", offset=ino.offset, field="name"
                )
        return out

    def _member(self, path: str, ino: Inode, first: str | None = None) -> Member:
        target, rdev = None, None
        kind = ino.kind
        if kind is Kind.SYMLINK:
            if not 0 < ino.size <= MAX_SYMLINK:
                raise FormatError(f"{path}: bad symlink length {ino.size}", offset=ino.offset, field="i_size")
            raw = self.data(ino)
            if b"\0" in raw:
                raise FormatError(f"{path}: NUL in symlink target", offset=ino.offset, field="data")
            target = os.fsdecode(raw)
        elif kind in (Kind.CHAR, Kind.BLOCK):
            rdev = decode_rdev(ino.i_u)
        elif kind is Kind.FILE and first is not None:
            kind, target = Kind.HARDLINK, first
        return Member(
            path=path,
            kind=kind,
            mode=ino.mode,
            uid=ino.uid,
            gid=ino.gid,
            size=ino.size if ino.kind in (Kind.FILE, Kind.SYMLINK) else 0,
            mtime=ino.mtime,
            nlink=ino.nlink,
            ino=ino.nid,
            target=target,
            rdev=rdev,
        )

    def members(self) -> Iterator[Member]:
        """Every path in canonical order (by path bytes, so parents come first); the 2nd+ names of
        a regular file are HARDLINK members pointing at the first."""
        items = self._walk()
        items.sort(key=lambda pi: os.fsencode(pi[0]))
        first: dict[int, str] = {}
        for path, ino in items:
            prior = first.setdefault(ino.nid, path) if ino.kind is Kind.FILE else path
            yield self._member(path, ino, prior if prior != path else None)

    def read(self, member: Member) -> bytes:
        """Content of a FILE/HARDLINK member, the target bytes of a SYMLINK, b"" otherwise."""
        if member.kind not in (Kind.FILE, Kind.HARDLINK, Kind.SYMLINK):
            return b""
        ino = self.inode(member.ino)
        if ino.kind not in (Kind.FILE, Kind.SYMLINK):
            raise FormatError(
                f"{member.path}: nid {member.ino} is not a file", offset=ino.offset, field="i_mode"
            )
        return self.data(ino)

    def lookup(self, path: str) -> Member:
        """The member at `path` (no symlinks followed); InitbuildError if there is none."""
        want = check_dest(path)
        ino = self.inode(self.sb.root_nid)
        if want == "/":
            return self._member("/", ino)
        for part in want.strip("/").split("/"):
            if ino.kind is not Kind.DIR:
                raise InitbuildError(f"{path}: not a directory in the image")
            name = os.fsencode(part)
            nid = next((d.nid for d in self.dirents(ino) if d.name == name), None)
            if nid is None:
                raise InitbuildError(f"{path}: no such path in the image")
            ino = self.inode(nid)
        return self._member(want, ino)

"""EROFS on-disk structures and constants, named after the kernel's fs/erofs/erofs_fs.h.

Only what a Linux 6.1 reader accepts is described here; docs/erofs-format.md explains it (cited as
"§N" of that document). All integers are little-endian. Nothing in this module does I/O.
"""

from __future__ import annotations

import stat
import struct

# -- global geometry (docs/erofs-format.md §1) -----------------------------------------------------
EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2
EROFS_SUPER_OFFSET = 1024  # the superblock starts 1 KiB into block 0 (room for a boot sector)
BLKSZBITS = 12  # 6.1 only decompresses when the block size equals PAGE_SIZE (docs/erofs-format.md §1)
BLOCK_SIZE = 1 << BLKSZBITS
EROFS_NULL_ADDR = 0xFFFFFFFF  # "no block" in raw_blkaddr
ISLOTBITS = 5  # inodes sit in 32-byte slots: iloc = meta_blkaddr * BLOCK_SIZE + nid * 32
ISLOT_SIZE = 1 << ISLOTBITS
EROFS_NAME_LEN = 255
CHECKSUMMED_BYTES = BLOCK_SIZE - EROFS_SUPER_OFFSET  # the sb checksum covers bytes 1024..4095

# -- feature bits (docs/erofs-format.md §2) --------------------------------------------------------
EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x1
EROFS_FEATURE_COMPAT_MTIME = 0x2  # informational: inode timestamps are mtimes (mkfs 1.5 sets it)
EROFS_FEATURE_INCOMPAT_ZERO_PADDING = 0x1  # a.k.a. LZ4_0PADDING: compressed data right-aligned
EROFS_FEATURE_INCOMPAT_COMPR_CFGS = 0x2  # same bit as BIG_PCLUSTER
EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER = 0x2
EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x8
EROFS_FEATURE_INCOMPAT_ZTAILPACKING = 0x10
EROFS_FEATURE_INCOMPAT_FRAGMENTS = 0x20

Z_EROFS_COMPRESSION_LZ4 = 0
LZ4_MAX_DISTANCE = 0xFFFF  # never declare less than the compressor's real window (docs/erofs-format.md §7.9)
Z_EROFS_PCLUSTER_MAX_BLOCKS = 256  # max_pclusterblks upper bound (1 MiB)

# -- superblock (docs/erofs-format.md §2): struct erofs_super_block --------------------------------
SUPERBLOCK = struct.Struct(
    "<"
    "I"  # 0x00 magic
    "I"  # 0x04 checksum (crc32c, no final xor)
    "I"  # 0x08 feature_compat
    "B"  # 0x0C blkszbits
    "B"  # 0x0D sb_extslots
    "H"  # 0x0E root_nid (16 bits!)
    "Q"  # 0x10 inos
    "Q"  # 0x18 build_time
    "I"  # 0x20 build_time_nsec
    "I"  # 0x24 blocks
    "I"  # 0x28 meta_blkaddr
    "I"  # 0x2C xattr_blkaddr
    "16s"  # 0x30 uuid
    "16s"  # 0x40 volume_name (must contain a NUL)
    "I"  # 0x50 feature_incompat
    "H"  # 0x54 u1: available_compr_algs (COMPR_CFGS) or lz4_max_distance
    "H"  # 0x56 extra_devices
    "H"  # 0x58 devt_slotoff
    "B"  # 0x5A dirblkbits (must be 0 for 6.1.192)
    "5s"  # 0x5B reserved
    "Q"  # 0x60 packed_nid
    "24s"  # 0x68 reserved2
)
assert SUPERBLOCK.size == 128
SB_CHECKSUM_OFFSET = 4  # relative to EROFS_SUPER_OFFSET

# LZ4 compression config record right after the superblock, at byte 1152 (docs/erofs-format.md §2).
# le16 record length (14), then struct z_erofs_lz4_cfgs.
COMPR_CFGS_OFFSET = EROFS_SUPER_OFFSET + SUPERBLOCK.size
Z_EROFS_LZ4_CFGS = struct.Struct(
    "<"
    "H"  # record length (payload bytes)
    "H"  # max_distance
    "H"  # max_pclusterblks
    "10s"  # reserved
)
assert Z_EROFS_LZ4_CFGS.size == 16
LZ4_CFGS_PAYLOAD = 14

# -- inodes (docs/erofs-format.md §3) --------------------------------------------------------------
EROFS_INODE_LAYOUT_COMPACT = 0
EROFS_INODE_LAYOUT_EXTENDED = 1
EROFS_INODE_FLAT_PLAIN = 0
EROFS_INODE_COMPRESSED_FULL = 1
EROFS_INODE_FLAT_INLINE = 2
EROFS_INODE_COMPRESSED_COMPACT = 3
EROFS_INODE_CHUNK_BASED = 4
EROFS_I_VERSION_BITS = 1
EROFS_I_DATALAYOUT_BIT = 1
EROFS_I_DATALAYOUT_BITS = 3
EROFS_I_ALL = 0xF  # 6.1 rejects any other i_format bit ("unsupported i_format")

INODE_COMPACT = struct.Struct(
    "<"
    "H"  # 0x00 i_format
    "H"  # 0x02 i_xattr_icount
    "H"  # 0x04 i_mode
    "H"  # 0x06 i_nlink
    "I"  # 0x08 i_size
    "I"  # 0x0C i_reserved
    "I"  # 0x10 i_u (raw_blkaddr / compressed_blocks / rdev / chunk format)
    "I"  # 0x14 i_ino
    "H"  # 0x18 i_uid
    "H"  # 0x1A i_gid
    "I"  # 0x1C i_reserved2
)
assert INODE_COMPACT.size == 32

INODE_EXTENDED = struct.Struct(
    "<"
    "H"  # 0x00 i_format
    "H"  # 0x02 i_xattr_icount
    "H"  # 0x04 i_mode
    "H"  # 0x06 i_reserved
    "Q"  # 0x08 i_size
    "I"  # 0x10 i_u
    "I"  # 0x14 i_ino
    "I"  # 0x18 i_uid
    "I"  # 0x1C i_gid
    "Q"  # 0x20 i_mtime
    "I"  # 0x28 i_mtime_nsec
    "I"  # 0x2C i_nlink
    "16s"  # 0x30 i_reserved2
)
assert INODE_EXTENDED.size == 64

COMPACT_MAX = 0xFFFF  # uid/gid/nlink limit of a compact inode
COMPACT_MAX_SIZE = 0xFFFFFFFF


def i_format(version: int, datalayout: int) -> int:
    return version | (datalayout << EROFS_I_DATALAYOUT_BIT)


def i_format_version(fmt: int) -> int:
    return fmt & ((1 << EROFS_I_VERSION_BITS) - 1)


def i_format_datalayout(fmt: int) -> int:
    return (fmt >> EROFS_I_DATALAYOUT_BIT) & ((1 << EROFS_I_DATALAYOUT_BITS) - 1)


def encode_rdev(major: int, minor: int) -> int:
    """Linux new_encode_dev(), the encoding 6.1 decodes from i_u (docs/erofs-format.md §3.5)."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_rdev(dev: int) -> tuple[int, int]:
    """Linux new_decode_dev()."""
    major = (dev & 0xFFF00) >> 8
    minor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return major, minor


# -- directories (docs/erofs-format.md §5) ---------------------------------------------------------
DIRENT = struct.Struct(
    "<"
    "Q"  # 0 nid
    "H"  # 8 nameoff (within the directory block)
    "B"  # 10 file_type (EROFS_FT_*)
    "B"  # 11 reserved
)
assert DIRENT.size == 12

EROFS_FT_UNKNOWN = 0
EROFS_FT_REG_FILE = 1
EROFS_FT_DIR = 2
EROFS_FT_CHRDEV = 3
EROFS_FT_BLKDEV = 4
EROFS_FT_FIFO = 5
EROFS_FT_SOCK = 6
EROFS_FT_SYMLINK = 7
EROFS_FT_MAX = 8
# The file type of a dirent for the S_IFMT bits of i_mode (the kernel's fs_umode_to_ftype()).
EROFS_FT_OF_S_IFMT = {
    stat.S_IFREG: EROFS_FT_REG_FILE,
    stat.S_IFDIR: EROFS_FT_DIR,
    stat.S_IFCHR: EROFS_FT_CHRDEV,
    stat.S_IFBLK: EROFS_FT_BLKDEV,
    stat.S_IFIFO: EROFS_FT_FIFO,
    stat.S_IFSOCK: EROFS_FT_SOCK,
    stat.S_IFLNK: EROFS_FT_SYMLINK,
}

# -- extended attributes (docs/erofs-format.md §6) -------------------------------------------------
XATTR_IBODY_HEADER = struct.Struct(
    "<"
    "I"  # 0 h_reserved (name filter in newer kernels; 0 is safe)
    "B"  # 4 h_shared_count
    "7s"  # 5 h_reserved2
)
assert XATTR_IBODY_HEADER.size == 12
XATTR_ENTRY = struct.Struct(
    "<"
    "B"  # 0 e_name_len
    "B"  # 1 e_name_index
    "H"  # 2 e_value_size
)
assert XATTR_ENTRY.size == 4
XATTR_ALIGN = 4

EROFS_XATTR_INDEX_USER = 1
EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2
EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3
EROFS_XATTR_INDEX_TRUSTED = 4
EROFS_XATTR_INDEX_LUSTRE = 5  # no handler in 6.1: never written
EROFS_XATTR_INDEX_SECURITY = 6
# (index, prefix, whole-name-is-the-prefix). ACL names have an empty suffix (docs/erofs-format.md §6.2).
XATTR_PREFIXES: tuple[tuple[int, str, bool], ...] = (
    (EROFS_XATTR_INDEX_USER, "user.", False),
    (EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, "system.posix_acl_access", True),
    (EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT, "system.posix_acl_default", True),
    (EROFS_XATTR_INDEX_TRUSTED, "trusted.", False),
    (EROFS_XATTR_INDEX_SECURITY, "security.", False),
)
XATTR_PREFIX_BY_INDEX = {i: p for i, p, _ in XATTR_PREFIXES}


def xattr_ibody_size(icount: int) -> int:
    """Inline xattr area size for i_xattr_icount (docs/erofs-format.md §6.1); icount 1 is invalid."""
    return 0 if icount == 0 else XATTR_IBODY_HEADER.size + 4 * (icount - 1)


# -- compressed files (docs/erofs-format.md §7) ----------------------------------------------------
Z_EROFS_MAP_HEADER = struct.Struct(
    "<"
    "I"  # 0 h_reserved1 / h_idata_size (0: no ztailpacking, no fragments)
    "H"  # 4 h_advise
    "B"  # 6 h_algorithmtype (low nibble: HEAD1, high nibble: HEAD2)
    "B"  # 7 h_clusterbits (lcluster = 4096 << (bits & 7))
)
assert Z_EROFS_MAP_HEADER.size == 8
Z_EROFS_ADVISE_COMPACTED_2B = 0x1
Z_EROFS_ADVISE_BIG_PCLUSTER_1 = 0x2
Z_EROFS_ADVISE_BIG_PCLUSTER_2 = 0x4
Z_EROFS_ADVISE_INLINE_PCLUSTER = 0x8
Z_EROFS_ADVISE_INTERLACED_PCLUSTER = 0x10
Z_EROFS_ADVISE_FRAGMENT_PCLUSTER = 0x20
# FULL indexes start at ALIGN(end, 8) + header + 8 (docs/erofs-format.md §7.2)
Z_EROFS_FULL_INDEX_ALIGN_RESERVED = 8

# struct z_erofs_vle_decompressed_index (FULL, 8 bytes per lcluster)
Z_EROFS_VLE_DECOMPRESSED_INDEX = struct.Struct(
    "<"
    "H"  # 0 di_advise (bits 0-1: lcluster type)
    "H"  # 2 di_clusterofs
    "I"  # 4 di_u: blkaddr, or le16 delta[0] + le16 delta[1]
)
assert Z_EROFS_VLE_DECOMPRESSED_INDEX.size == 8
Z_EROFS_VLE_CLUSTER_TYPE_PLAIN = 0
Z_EROFS_VLE_CLUSTER_TYPE_HEAD = 1  # HEAD1
Z_EROFS_VLE_CLUSTER_TYPE_NONHEAD = 2
Z_EROFS_VLE_CLUSTER_TYPE_HEAD2 = 3
Z_EROFS_VLE_DI_CLUSTER_TYPE_MASK = 0x3
Z_EROFS_VLE_DI_D0_CBLKCNT = 0x800  # first NONHEAD after a big-pcluster HEAD: 0x800 | blocks
COMPACT_LO_BITS = 12  # == lclusterbits for 4 KiB lclusters
COMPACT_4B_VCNT = 2  # entries per 8-byte pack
COMPACT_4B_PACK = 8
COMPACT_2B_VCNT = 16  # entries per 32-byte pack
COMPACT_2B_PACK = 32


# -- CRC32C (docs/erofs-format.md §2, checksum) ----------------------------------------------------
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def erofs_crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C as EROFS stores it: initial ~0 and *no* final xor (kernel crc32c(~0, ...))."""
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


assert erofs_crc32c(b"123456789") == 0x1CF96D7C  # standard CRC-32C 0xE3069283, not inverted

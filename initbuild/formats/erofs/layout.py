"""Pure planning of an EROFS image: inodes, directory blocks, xattr areas and metadata placement.

Nothing here reads file contents or writes bytes except small encodings (xattr areas) that
determine sizes. The writer (writer.py) feeds these plans with compression results and serialises.

Image shape chosen by initbuild (docs/erofs-format.md §8 allows any order of metadata and data):

    block 0            superblock (+ LZ4 config record)
    blocks 1..D        file data, streamed in canonical path order while compressing
    blocks D+1..M      metadata area: inode records (inode + xattrs + inline tail or block map);
                       meta_blkaddr = D+1 so the root, placed first, gets nid 0 (16-bit root_nid)
    blocks M+1..       directory blocks that are not inlined
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...errors import FormatError
from ...manifest import Entry, Kind, Manifest
from .format import (
    BLOCK_SIZE,
    COMPACT_MAX,
    COMPACT_MAX_SIZE,
    DIRENT,
    EROFS_FT_OF_S_IFMT,
    EROFS_INODE_COMPRESSED_COMPACT,
    EROFS_INODE_FLAT_INLINE,
    EROFS_INODE_FLAT_PLAIN,
    EROFS_NAME_LEN,
    INODE_COMPACT,
    INODE_EXTENDED,
    ISLOT_SIZE,
    XATTR_ALIGN,
    XATTR_ENTRY,
    XATTR_IBODY_HEADER,
    XATTR_PREFIXES,
    Z_EROFS_MAP_HEADER,
)
from .zmap import Pcluster, compact_index_size

MAX_XATTR_VALUE = 0xFFFF  # e_value_size is le16
MAX_XATTR_ICOUNT = 0xFFFF  # i_xattr_icount is le16
USE_COMPACT_2B = True  # 2-byte compact index packs, as mkfs.erofs 1.5 writes (docs/erofs-format.md §7.4)


def align(n: int, a: int) -> int:
    return -(-n // a) * a


def name_bytes(name: str) -> bytes:
    """On-disk bytes of a path component (surrogate-escaped names round-trip like os.fsencode)."""
    return os.fsencode(name)


@dataclass(slots=True)
class Node:
    """One inode: a manifest entry plus everything decided before data is written."""

    index: int  # position in canonical order; 0 is the root
    entry: Entry
    nlink: int = 1
    size: int = 0  # i_size: content bytes, dirent bytes, or symlink length
    mtime: int = 0
    extended: bool = False  # 64-byte inode (per-file mtime, big ids/sizes/nlink)
    xattrs: bytes = b""  # inline xattr area, "" when none
    dirents: list[tuple[bytes, int]] = field(default_factory=list)  # DIR: sorted (name, node index)
    dir_blocks: list[int] = field(default_factory=list)  # DIR: number of dirents in each block

    @property
    def inode_size(self) -> int:
        return INODE_EXTENDED.size if self.extended else INODE_COMPACT.size

    @property
    def file_type(self) -> int:
        return EROFS_FT_OF_S_IFMT[self.entry.kind.s_ifmt]

    def inline_tail_len(self) -> int:
        """Bytes of the last partial block if they may be stored after the inode, else 0.

        FLAT_INLINE needs inode + xattrs + tail inside one block (docs/erofs-format.md §4.2); a size that is a
        multiple of the block size never inlines.
        """
        tail = self.size % BLOCK_SIZE
        if tail and self.inode_size + len(self.xattrs) + tail <= BLOCK_SIZE:
            return tail
        return 0


def collect_nodes(manifest: Manifest, build_time: int, sizes: dict[str, int]) -> list[Node]:
    """Inodes in canonical order (root first) with nlink, dirents and inode versions decided.

    `sizes` maps FILE paths to their content size. HARDLINK entries become extra dirents (and
    nlink) of their target's inode.
    """
    manifest.check()
    entries = manifest.sorted()
    nodes: list[Node] = []
    by_path: dict[str, int] = {}
    for e in entries:
        if e.kind is Kind.HARDLINK:
            continue
        n = Node(len(nodes), e, mtime=build_time if e.mtime is None else e.mtime)
        n.xattrs = xattr_area(e)
        if e.kind is Kind.FILE:
            n.size = sizes[e.path]
        elif e.kind is Kind.SYMLINK:
            n.size = len(name_bytes(e.target or ""))
            if n.size > BLOCK_SIZE:
                raise FormatError(f"{e.path}: symlink target longer than {BLOCK_SIZE} bytes")
        by_path[e.path] = n.index
        nodes.append(n)
    assert nodes[0].entry.path == "/"
    children: dict[int, list[tuple[bytes, int]]] = {n.index: [] for n in nodes if n.entry.kind is Kind.DIR}
    for e in entries:
        if e.path == "/":
            continue
        idx = by_path[e.target] if e.kind is Kind.HARDLINK else by_path[e.path]  # type: ignore[index]
        parent = by_path[e.parent]
        children[parent].append((name_bytes(e.name), idx))
        if e.kind is Kind.HARDLINK:
            nodes[idx].nlink += 1
        elif e.kind is Kind.DIR:
            nodes[parent].nlink += 1  # each subdirectory's ".." (docs/erofs-format.md §3.6)
    for d, kids in children.items():
        node = nodes[d]
        node.nlink += 1  # "." and the parent's entry: a directory starts at 2
        parent = by_path[node.entry.parent] if d else 0
        kids += [(b".", d), (b"..", parent)]
        kids.sort()  # global bytewise order, "." and ".." included (docs/erofs-format.md §5.3)
        node.dirents = kids
        node.dir_blocks = pack_dir_blocks([name for name, _ in kids])
        node.size = dir_size([name for name, _ in kids], node.dir_blocks)
    for n in nodes:
        e = n.entry
        n.extended = (
            n.mtime != build_time
            or max(e.uid, e.gid, n.nlink) > COMPACT_MAX
            or n.size > COMPACT_MAX_SIZE
            or n.mtime < 0
        )
    return nodes


# -- directories (docs/erofs-format.md §5.2) -------------------------------------------------------


def pack_dir_blocks(names: Sequence[bytes]) -> list[int]:
    """Split sorted names into directory blocks; an entry (dirent + name) never spans two blocks."""
    counts: list[int] = []
    used = BLOCK_SIZE  # forces a first block
    for name in names:
        if not 1 <= len(name) <= EROFS_NAME_LEN:
            raise FormatError(f"directory entry name {name!r} must be 1..{EROFS_NAME_LEN} bytes")
        need = DIRENT.size + len(name)
        if used + need > BLOCK_SIZE:
            counts.append(0)
            used = 0
        counts[-1] += 1
        used += need
    return counts


def dir_size(names: Sequence[bytes], counts: Sequence[int]) -> int:
    """i_size of a directory: full blocks plus the used bytes of the last one (not rounded up)."""
    last = names[len(names) - counts[-1] :]
    return (len(counts) - 1) * BLOCK_SIZE + sum(DIRENT.size + len(n) for n in last)


# -- extended attributes (docs/erofs-format.md §6) -------------------------------------------------


def xattr_area(entry: Entry) -> bytes:
    """The inline xattr area of an entry (header + entries), or b"" when it has none."""
    if not entry.xattrs:
        return b""
    items = sorted(_xattr_key(entry.path, name) + (value,) for name, value in entry.xattrs)
    out = bytearray(XATTR_IBODY_HEADER.pack(0, 0, b""))
    for index, suffix, value in items:
        if len(value) > MAX_XATTR_VALUE:
            raise FormatError(f"{entry.path}: xattr value longer than {MAX_XATTR_VALUE} bytes")
        item = XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        out += item + bytes(align(len(item), XATTR_ALIGN) - len(item))
    if (len(out) - XATTR_IBODY_HEADER.size) // 4 + 1 > MAX_XATTR_ICOUNT:
        raise FormatError(f"{entry.path}: extended attributes too large for an inline xattr area")
    return bytes(out)


def _xattr_key(path: str, name: str) -> tuple[int, bytes]:
    for index, prefix, exact in XATTR_PREFIXES:
        if (name == prefix) if exact else (name.startswith(prefix) and len(name) > len(prefix)):
            suffix = name_bytes(name[len(prefix) :])
            if len(suffix) > EROFS_NAME_LEN:
                raise FormatError(f"{path}: xattr name {name!r} too long")
            return index, suffix
    raise FormatError(
        f"{path}: extended attribute {name!r} cannot be stored in EROFS for Linux 6.1 "
        "(only user., trusted., security. and system.posix_acl_access/default are supported)"
    )


# -- inode records and their placement in the metadata area (docs/erofs-format.md §8) --------------


def xattr_icount(xattrs: bytes) -> int:
    return 0 if not xattrs else (len(xattrs) - XATTR_IBODY_HEADER.size) // 4 + 1


def compressed_meta_offset(node: Node) -> int:
    """Offset of z_erofs_map_header inside the record: ALIGN(inode end, 8) (docs/erofs-format.md §7.2)."""
    return align(node.inode_size + len(node.xattrs), 8)


def record_size(node: Node, tail: int, totalidx: int | None, use_2b: bool) -> int:
    """Bytes of an inode record: inode + xattrs + inline tail, or + map header + compact index.

    Records start 32-byte aligned, so the compact index geometry (which depends on ebase % 32)
    is the same wherever the record lands.
    """
    base = node.inode_size + len(node.xattrs)
    if totalidx is None:
        return base + tail
    ebase = compressed_meta_offset(node) + Z_EROFS_MAP_HEADER.size
    return ebase + compact_index_size(ebase, totalidx, use_2b)


class MetaAllocator:
    """Best-fit placement of records into 4 KiB blocks, 32-byte aligned (inode slots).

    A record of up to one block never crosses a block boundary, which satisfies the inline-tail
    rule of docs/erofs-format.md §4.2 and keeps extended inodes whole. Bigger records (long block
    maps) start a fresh run of blocks. A record goes into the partly filled block with the least
    room that still holds it, among all of them (on Debian's python3.11 tree, 6% fewer metadata
    blocks than first-fit among the last 32); blocks are bucketed by free slots, so placement stays
    linear in the number of records.
    """

    SLOTS = BLOCK_SIZE // ISLOT_SIZE

    def __init__(self) -> None:
        self.nblocks = 0
        self.used: dict[int, int] = {}  # partly filled block -> used bytes
        # free[k]: blocks with exactly k free slots, the most recently filled last
        self.free: list[list[int]] = [[] for _ in range(self.SLOTS)]

    def place(self, size: int) -> int:
        """Byte offset (from the start of the metadata area) for a record of `size` bytes."""
        assert size > 0
        need = -(-size // ISLOT_SIZE)
        if need < self.SLOTS:
            for k in range(need, self.SLOTS):
                if self.free[k]:
                    block = self.free[k].pop()
                    used = self.used.pop(block)
                    self._open(block, used + need * ISLOT_SIZE)
                    return block * BLOCK_SIZE + used
        block = self.nblocks
        self.nblocks += -(-size // BLOCK_SIZE)
        self._open(self.nblocks - 1, align(size, ISLOT_SIZE) % BLOCK_SIZE)
        return block * BLOCK_SIZE

    def _open(self, block: int, used: int) -> None:
        if 0 < used < BLOCK_SIZE:
            self.used[block] = used
            self.free[(BLOCK_SIZE - used) // ISLOT_SIZE].append(block)


# -- choosing each inode's layout (docs/erofs-format.md §4.4) ---------------------------------


@dataclass(slots=True)
class Placement:
    """Where a FILE/SYMLINK inode's data went (phase 1 of the writer, data.py)."""

    layout: int = EROFS_INODE_FLAT_PLAIN
    raw_blkaddr: int = 0  # FLAT_*: first full block; COMPRESSED: first pcluster block
    blocks: int = 0  # physical blocks used in the data area
    tail: bytes = b""  # FLAT_INLINE tail
    pclusters: list[Pcluster] = field(default_factory=list)


@dataclass(slots=True)
class Record:
    """An inode record in the metadata area; raw_blkaddr and tail are set once data is placed."""

    offset: int  # from the start of the metadata area
    layout: int
    tail: bytes = b""
    raw_blkaddr: int = 0
    totalidx: int | None = None


def plan_records(nodes: list[Node], placements: dict[int, Placement]) -> tuple[list[Record], int]:
    """Choose each inode's layout and place its record; returns records and metadata blocks."""
    alloc = MetaAllocator()
    records = []
    for n in nodes:
        p = placements.get(n.index)
        totalidx = None
        tail = 0
        if p is not None and p.layout == EROFS_INODE_COMPRESSED_COMPACT:
            totalidx = -(-n.size // BLOCK_SIZE)
            layout = p.layout
        elif p is not None:
            layout, tail = p.layout, len(p.tail)
        elif n.entry.kind is Kind.DIR:
            tail = n.inline_tail_len()
            layout = EROFS_INODE_FLAT_INLINE if tail else EROFS_INODE_FLAT_PLAIN
        else:
            layout = EROFS_INODE_FLAT_PLAIN
        off = alloc.place(record_size(n, tail, totalidx, USE_COMPACT_2B))
        records.append(Record(off, layout, totalidx=totalidx))
    return records, alloc.nblocks

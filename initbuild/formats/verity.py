"""A native dm-verity hash tree (format 1, as `veritysetup format --hash-offset` writes it) for stage two.

The tree is appended to the image file itself (docs/dm-verity.md says why and where each fact comes from):

    [data: data_blocks * 4096, zero-padded] [superblock, zero-padded to 4096] [level n-1] ... [level 0]

* every data block's digest is sha256(salt || block) (hash type 1: salt first); 128 digests of 32 bytes
  fill a 4096-byte hash block exactly (both powers of two, so no per-digest padding); the last block of a
  level is zero-padded;
* level 0 hashes the data blocks, level i+1 hashes the blocks of level i, until one block remains; the
  root hash is sha256(salt || that block). One data block means no levels at all: the root hash is the
  digest of the data block itself (kernel verity_ctr(): levels counted from data_blocks - 1);
* levels are laid out top-down: the top level starts at hash_start_block, the leaves come last;
* the superblock (cryptsetup's struct verity_sb, 512 bytes) sits at the hash offset; the tree starts in
  the next hash block, so hash_start_block = hash_offset / 4096 + 1 (VERITY_hash_offset_block()).

Layout (`tree_layout`, a function of data_blocks alone) is separate from serialisation (`VeritySuperblock`)
and from the streaming writer and reader, which keep one 1 MiB chunk and one hash block in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..errors import FormatError

VERITY_SIGNATURE = b"verity\0\0"
VERITY_SB_VERSION = 1  # the only superblock version cryptsetup reads
VERITY_HASH_TYPE = 1  # "normal": salt prepended (0 is Chrome OS: salt appended)
HASH_ALGORITHM = "sha256"
DIGEST_SIZE = hashlib.sha256().digest_size
BLOCK_SIZE = 4096  # data and hash blocks alike; the kernel needs data blocks <= page size
SECTOR_SIZE = 512  # device-mapper table lengths are in 512-byte sectors
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
HASH_BITS = HASHES_PER_BLOCK.bit_length() - 1
SALT_MAX = 256  # sizeof(verity_sb.salt)
MAX_LEVELS = 63  # DM_VERITY_MAX_LEVELS
CHUNK_BLOCKS = 256  # blocks read at a time (1 MiB)
# content-derived uuids: uuid5(UUID_NAMESPACE, root hash in hex)
UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://github.com/initbuild/dm-verity")

# struct verity_sb: signature, version, hash_type, uuid, algorithm, data_block_size, hash_block_size,
# data_blocks, salt_size, _pad1[6], salt[256], _pad2[168]; packed, little-endian
SB_FORMAT = "<8sII16s32sIIQH6x256s168x"
SB_SIZE = 512
assert struct.calcsize(SB_FORMAT) == SB_SIZE
assert 1 << HASH_BITS == HASHES_PER_BLOCK and HASHES_PER_BLOCK * DIGEST_SIZE == BLOCK_SIZE
ZERO_BLOCK = bytes(BLOCK_SIZE)


@dataclass(frozen=True)
class VeritySuperblock:
    """The 512-byte verity superblock; field names as in cryptsetup's struct verity_sb."""

    uuid: bytes  # 16 raw bytes
    data_blocks: int
    salt: bytes  # salt_size is len(salt)
    algorithm: str = HASH_ALGORITHM
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE
    version: int = VERITY_SB_VERSION
    hash_type: int = VERITY_HASH_TYPE

    def pack(self) -> bytes:
        if len(self.salt) > SALT_MAX:
            raise FormatError(f"salt is {len(self.salt)} bytes, at most {SALT_MAX} fit", field="salt_size")
        return struct.pack(
            SB_FORMAT, VERITY_SIGNATURE, self.version, self.hash_type, self.uuid, self.algorithm.encode(),
            self.data_block_size, self.hash_block_size, self.data_blocks, len(self.salt), self.salt,
        )  # fmt: skip

    @classmethod
    def unpack(cls, raw: bytes, offset: int = 0) -> VeritySuperblock:
        """Parse and check a superblock read at `offset` (for error messages); only what we write passes."""
        if len(raw) < SB_SIZE:
            raise FormatError("truncated verity superblock", offset=offset)
        sig, version, hash_type, uid, alg, dbs, hbs, blocks, salt_size, salt = struct.unpack_from(
            SB_FORMAT, raw
        )
        checks = [
            ("signature", sig == VERITY_SIGNATURE, sig),
            ("version", version == VERITY_SB_VERSION, version),
            ("hash_type", hash_type == VERITY_HASH_TYPE, hash_type),
            ("algorithm", alg.rstrip(b"\0") == HASH_ALGORITHM.encode(), alg.rstrip(b"\0")),
            ("data_block_size", dbs == BLOCK_SIZE, dbs),
            ("hash_block_size", hbs == BLOCK_SIZE, hbs),
            ("salt_size", salt_size <= SALT_MAX, salt_size),
            ("data_blocks", blocks > 0, blocks),
        ]
        for name, ok, value in checks:
            if not ok:
                raise FormatError(
                    f"unsupported verity superblock: {name} is {value!r}", offset=offset, field=name
                )
        return cls(uid, blocks, salt[:salt_size])


@dataclass(frozen=True)
class TreeLayout:
    """Where everything goes, in hash blocks from the start of the file; level 0 (the leaves) first."""

    data_blocks: int
    hash_offset: int  # bytes: the superblock
    level_start: tuple[int, ...]
    level_blocks: tuple[int, ...]

    @property
    def hash_start_block(self) -> int:  # the top level: the block after the superblock
        return self.hash_offset // BLOCK_SIZE + 1

    @property
    def end(self) -> int:  # blocks in the whole file
        return self.hash_start_block + sum(self.level_blocks)


def tree_layout(data_blocks: int, hash_offset: int | None = None) -> TreeLayout:
    """The kernel's arithmetic (verity_ctr): levels until one block covers everything, top level first."""
    if data_blocks < 1:
        raise FormatError("dm-verity needs at least one data block", field="data_blocks")
    hash_offset = data_blocks * BLOCK_SIZE if hash_offset is None else hash_offset
    if hash_offset % BLOCK_SIZE or hash_offset < data_blocks * BLOCK_SIZE:
        raise FormatError("hash offset must be block-aligned and after the data", offset=hash_offset)
    levels = 0
    while (data_blocks - 1) >> (HASH_BITS * levels):
        levels += 1
    assert levels <= MAX_LEVELS
    sizes = [-(-data_blocks >> (HASH_BITS * (i + 1))) for i in range(levels)]  # ceil division
    starts = [0] * levels
    position = hash_offset // BLOCK_SIZE + 1
    for i in reversed(range(levels)):
        starts[i] = position
        position += sizes[i]
    return TreeLayout(data_blocks, hash_offset, tuple(starts), tuple(sizes))


@dataclass(frozen=True)
class VerityParams:
    """What stage one needs to map the image; the root hash must come from somewhere trusted."""

    data_blocks: int
    hash_offset: int  # bytes from the start of the file to the superblock
    salt: bytes
    root_hash: bytes
    uuid: str
    hash_algorithm: str = HASH_ALGORITHM
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE

    @property
    def hash_start_block(self) -> int:
        """In hash blocks from the start of the hash device to the top of the tree, past the superblock."""
        return tree_layout(self.data_blocks, self.hash_offset).hash_start_block

    def table(self, data_dev: str, hash_dev: str) -> str:
        """The device-mapper table line (`dmsetup create NAME --readonly --table LINE`)."""
        sectors = self.data_blocks * self.data_block_size // SECTOR_SIZE
        return (
            f"0 {sectors} verity {VERITY_HASH_TYPE} {data_dev} {hash_dev} {self.data_block_size} "
            f"{self.hash_block_size} {self.data_blocks} {self.hash_start_block} {self.hash_algorithm} "
            f"{self.root_hash.hex()} {self.salt.hex() or '-'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VERITY_HASH_TYPE,
            "hash_algorithm": self.hash_algorithm,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_blocks": self.data_blocks,
            "hash_offset": self.hash_offset,
            "hash_start_block": self.hash_start_block,
            "salt": self.salt.hex(),
            "root_hash": self.root_hash.hex(),
            "uuid": self.uuid,
        }


Image = str | os.PathLike[str] | IO[bytes]


@contextlib.contextmanager
def _opened(image: Image, mode: str) -> Iterator[IO[bytes]]:
    if isinstance(image, str | os.PathLike):
        with open(image, mode) as f:
            yield f
    else:
        yield image


def _read_at(f: IO[bytes], offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise FormatError(f"image ends early: wanted {size} bytes", offset=offset)
    return data


def _digests(f: IO[bytes], start: int, count: int, salted: Any) -> Iterator[bytes]:
    """sha256(salt || block) of `count` blocks from block `start`, read a chunk at a time."""
    for first in range(start, start + count, CHUNK_BLOCKS):
        n = min(CHUNK_BLOCKS, start + count - first)
        view = memoryview(_read_at(f, first * BLOCK_SIZE, n * BLOCK_SIZE))
        for off in range(0, n * BLOCK_SIZE, BLOCK_SIZE):
            h = salted.copy()
            h.update(view[off : off + BLOCK_SIZE])
            yield h.digest()


def _hash_blocks(digests: Iterator[bytes]) -> Iterator[bytes]:
    """Digests packed HASHES_PER_BLOCK to a block, the last block zero-padded."""
    batch: list[bytes] = []
    for d in digests:
        batch.append(d)
        if len(batch) == HASHES_PER_BLOCK:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch).ljust(BLOCK_SIZE, b"\0")


def _sha256_range(f: IO[bytes], size: int) -> bytes:
    h = hashlib.sha256()
    for off in range(0, size, CHUNK_BLOCKS * BLOCK_SIZE):
        h.update(_read_at(f, off, min(CHUNK_BLOCKS * BLOCK_SIZE, size - off)))
    return h.digest()


def derive_uuid(root_hash: bytes) -> str:
    return str(uuidlib.uuid5(UUID_NAMESPACE, root_hash.hex()))


def append_hash_tree(image: Image, *, salt: bytes | None = None) -> VerityParams:
    """Pad `image` (a path, or a seekable file open for reading and writing) to 4096 bytes and append
    the verity superblock and hash tree. The salt defaults to sha256 of the padded data, the uuid to
    one derived from the root hash, so the output is a function of the input."""
    with _opened(image, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            raise FormatError("cannot protect an empty image with dm-verity")
        data_blocks = -(-size // BLOCK_SIZE)
        if size % BLOCK_SIZE == 0 and _find_layout(f, size) is not None:
            raise FormatError("image already ends with a dm-verity hash tree", offset=size)
        if salt is not None:
            VeritySuperblock(bytes(16), data_blocks, salt).pack()  # an oversized salt: before any write
        try:
            root, salt, uid = _write_tree(f, size, data_blocks, salt)
        except BaseException:
            f.truncate(size)  # no half-protected image left behind
            raise
        return VerityParams(data_blocks, data_blocks * BLOCK_SIZE, salt, root, uid)


def _write_tree(f: IO[bytes], size: int, data_blocks: int, salt: bytes | None) -> tuple[bytes, bytes, str]:
    f.seek(size)
    f.write(bytes(data_blocks * BLOCK_SIZE - size))
    if salt is None:
        salt = _sha256_range(f, data_blocks * BLOCK_SIZE)
    layout = tree_layout(data_blocks)
    salted = hashlib.sha256(salt)
    src, count = 0, data_blocks
    for level, start in enumerate(layout.level_start):  # computed bottom-up, placed top-down
        for i, block in enumerate(_hash_blocks(_digests(f, src, count, salted))):
            f.seek((start + i) * BLOCK_SIZE)
            f.write(block)
        src, count = start, layout.level_blocks[level]
    (root,) = _digests(f, src, 1, salted)  # the top block, or the only data block when there are no levels
    uid = derive_uuid(root)
    f.seek(layout.hash_offset)
    f.write(VeritySuperblock(uuidlib.UUID(uid).bytes, data_blocks, salt).pack().ljust(BLOCK_SIZE, b"\0"))
    f.flush()
    assert f.seek(0, os.SEEK_END) == layout.end * BLOCK_SIZE
    return root, salt, uid


def _find_layout(f: IO[bytes], size: int) -> TreeLayout | None:
    """The layout whose file size is `size` (it grows strictly with data_blocks) if it has a superblock."""
    lo, hi = 1, size // BLOCK_SIZE
    while lo <= hi:
        mid = (lo + hi) // 2
        end = tree_layout(mid).end * BLOCK_SIZE
        if end == size:
            f.seek(mid * BLOCK_SIZE)
            return tree_layout(mid) if f.read(len(VERITY_SIGNATURE)) == VERITY_SIGNATURE else None
        lo, hi = (mid + 1, hi) if end < size else (lo, mid - 1)
    return None


def _check_level(f: IO[bytes], parent: int, child: int, count: int, salted: Any, what: str) -> None:
    """Each of `count` blocks from block `child` against its entry in the blocks from block `parent`."""
    block = b""
    for i, digest in enumerate(_digests(f, child, count, salted)):
        slot = i % HASHES_PER_BLOCK
        if slot == 0:
            block = _read_at(f, (parent + i // HASHES_PER_BLOCK) * BLOCK_SIZE, BLOCK_SIZE)
        if block[slot * DIGEST_SIZE : (slot + 1) * DIGEST_SIZE] != digest:
            where = (child + i) * BLOCK_SIZE
            raise FormatError(f"dm-verity: {what} block {i} does not match its hash", offset=where)
        if i == count - 1 and block[(slot + 1) * DIGEST_SIZE :] != ZERO_BLOCK[(slot + 1) * DIGEST_SIZE :]:
            where = (parent + i // HASHES_PER_BLOCK) * BLOCK_SIZE
            raise FormatError("dm-verity: padding of the last hash block is not zero", offset=where)


def verify_image(
    image: Image, root_hash: bytes | None = None, *, hash_offset: int | None = None
) -> VerityParams:
    """Re-read the superblock and tree appended by `append_hash_tree` and check every block, top-down
    as the kernel trusts them; raise FormatError naming the first bad block. Without `root_hash` the
    tree is only checked for consistency with its own top block (integrity, not authenticity)."""
    with _opened(image, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if hash_offset is None:
            found = _find_layout(f, size)
            if found is None:
                raise FormatError("no dm-verity superblock and hash tree at the end of the image")
            hash_offset = found.hash_offset
        raw = _read_at(f, hash_offset, BLOCK_SIZE)
        sb = VeritySuperblock.unpack(raw, hash_offset)
        if raw[SB_SIZE:] != ZERO_BLOCK[SB_SIZE:]:
            raise FormatError("dm-verity: superblock padding is not zero", offset=hash_offset + SB_SIZE)
        layout = tree_layout(sb.data_blocks, hash_offset)
        if size < layout.end * BLOCK_SIZE:
            raise FormatError(f"image ends early: the hash tree needs {layout.end * BLOCK_SIZE} bytes")
        salted = hashlib.sha256(sb.salt)
        levels = len(layout.level_start)
        top = layout.level_start[-1] if levels else 0
        (computed,) = _digests(f, top, 1, salted)
        if root_hash is not None and computed != root_hash:
            what = f"top hash block (level {levels - 1})" if levels else "data block 0"
            raise FormatError(f"dm-verity: {what} does not match the root hash", offset=top * BLOCK_SIZE)
        for level in reversed(range(levels)):
            child, count, what = (0, sb.data_blocks, "data")
            if level:
                child, count = layout.level_start[level - 1], layout.level_blocks[level - 1]
                what = f"level {level - 1} hash"
            _check_level(f, layout.level_start[level], child, count, salted, what)
        return VerityParams(sb.data_blocks, hash_offset, sb.salt, computed, str(uuidlib.UUID(bytes=sb.uuid)))

"""The native dm-verity hash tree against the reference: cryptsetup's `veritysetup` (format, verify, dump)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initbuild.errors import FormatError
from initbuild.formats import verity as v
from initbuild.run import have_tool, run

pytestmark = pytest.mark.skipif(
    not have_tool("veritysetup"),
    reason="veritysetup (cryptsetup-bin) is not installed: no reference to check",
)
B = v.BLOCK_SIZE


def _data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _image(tmp_path: Path, size: int, name: str = "stage2.erofs", seed: int = 1) -> Path:
    path = tmp_path / name
    path.write_bytes(_data(size, seed))
    return path


def _veritysetup(*args: object, check: bool = True) -> str:
    cp = run(["veritysetup", *map(str, args)], check=check)
    return cp.stdout.decode() + cp.stderr.decode()


def _verify(path: Path, p: v.VerityParams, root: bytes | None = None) -> int:
    """veritysetup verify with the superblock read from the file at the hash offset; its exit code."""
    root_hex = (root or p.root_hash).hex()
    argv = ["veritysetup", "verify", path, path, root_hex, f"--hash-offset={p.hash_offset}"]
    return run(argv, check=False).returncode


def _reference(tmp_path: Path, data: bytes, p: v.VerityParams) -> bytes:
    """What `veritysetup format` writes for the same padded data, salt and uuid."""
    ref = tmp_path / "reference.img"
    ref.write_bytes(data.ljust(p.hash_offset, b"\0"))
    out = _veritysetup(
        "format", ref, ref, f"--hash-offset={p.hash_offset}", f"--salt={p.salt.hex()}", f"--uuid={p.uuid}"
    )
    assert re.search(r"Root hash:\s+" + p.root_hash.hex(), out), out
    return ref.read_bytes()


SIZES = {
    "1 block": B,
    "1 byte": 1,
    "127 blocks": 127 * B,
    "128 blocks": 128 * B,
    "129 blocks": 129 * B,
    "odd, padded": 300 * B + 17,
    "3 MiB random": 3 << 20,
    "3 levels": (128 * 128 + 1) * B,
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_same_bytes_as_veritysetup_format(tmp_path: Path, size: int) -> None:
    image = _image(tmp_path, size)
    data = image.read_bytes()
    p = v.append_hash_tree(image)
    out = image.read_bytes()
    assert p.data_blocks == -(-size // B) and p.hash_offset == p.data_blocks * B
    assert out[:size] == data and out[size : p.hash_offset] == bytes(p.hash_offset - size)
    assert out == _reference(tmp_path, data, p)  # data, padding, superblock and every hash block
    assert _verify(image, p) == 0
    assert v.verify_image(image, p.root_hash) == p
    assert v.verify_image(image) == p


def test_dump_shows_the_superblock(tmp_path: Path) -> None:
    image = _image(tmp_path, 129 * B)
    p = v.append_hash_tree(image)
    dump = _veritysetup("dump", image, f"--hash-offset={p.hash_offset}")
    fields = dict(re.findall(r"^([^:\n]+):\s*(\S+)$", dump, re.M))
    assert fields["UUID"] == p.uuid
    assert fields["Hash type"] == "1"
    assert fields["Data blocks"] == "129"
    assert fields["Data block size"] == fields["Hash block size"] == "4096"
    assert fields["Hash blocks"] == "3"  # two leaf blocks and the top block
    assert fields["Hash algorithm"] == "sha256"
    assert fields["Salt"] == p.salt.hex()


def test_layout_follows_the_kernel() -> None:
    one = v.tree_layout(1)
    assert (one.level_start, one.level_blocks, one.hash_start_block, one.end) == ((), (), 2, 2)
    big = v.tree_layout(129)
    assert big.level_blocks == (2, 1) and big.level_start == (131, 130)  # top level first, leaves last
    assert big.hash_start_block == 130 and big.end == 133
    assert v.tree_layout(128 * 128 + 1).level_blocks == (129, 2, 1)
    assert v.tree_layout(129, hash_offset=200 * B).hash_start_block == 201
    with pytest.raises(FormatError):
        v.tree_layout(0)


def test_table_line(tmp_path: Path) -> None:
    image = _image(tmp_path, 129 * B)
    p = v.append_hash_tree(image, salt=bytes.fromhex("ab" * 32))
    assert p.hash_start_block == 130  # block 129 is the superblock
    assert p.table("7:0", "7:0") == (
        f"0 1032 verity 1 7:0 7:0 4096 4096 129 130 sha256 {p.root_hash.hex()} {'ab' * 32}"
    )
    assert p.to_dict()["hash_start_block"] == 130 and p.to_dict()["salt"] == "ab" * 32


def test_superblock_roundtrip_and_struct() -> None:
    assert struct.calcsize(v.SB_FORMAT) == v.SB_SIZE == 512
    sb = v.VeritySuperblock(bytes(range(16)), 1234, b"salt")
    raw = sb.pack()
    assert raw[:8] == b"verity\0\0" and raw[32:38] == b"sha256"
    assert v.VeritySuperblock.unpack(raw) == sb
    with pytest.raises(FormatError, match="hash_type"):
        v.VeritySuperblock.unpack(raw[:12] + b"\0\0\0\0" + raw[16:])


def test_reproducible_and_content_derived(tmp_path: Path) -> None:
    a, b, c = (_image(tmp_path, 200 * B + 5, n, seed) for n, seed in (("a", 1), ("b", 1), ("c", 2)))
    pa, pb, pc = (v.append_hash_tree(x) for x in (a, b, c))
    assert a.read_bytes() == b.read_bytes() and pa == pb
    assert pc.salt != pa.salt and pc.uuid != pa.uuid and pc.root_hash != pa.root_hash
    assert pa.salt == hashlib.sha256(_data(200 * B + 5).ljust(201 * B, b"\0")).digest()


def test_file_object_same_as_path(tmp_path: Path) -> None:
    image = _image(tmp_path, 50 * B + 1)
    buf = io.BytesIO(image.read_bytes())
    assert v.append_hash_tree(buf) == v.append_hash_tree(image)
    assert buf.getvalue() == image.read_bytes()
    assert v.verify_image(io.BytesIO(buf.getvalue())).root_hash == v.verify_image(image).root_hash


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


CORRUPTIONS = {  # where, in blocks of a 129-block image, and what verify_image says
    "data block 5": (5 * B + 100, "data block 5 does not match"),
    "last data block": (128 * B + 4095, "data block 128 does not match"),
    "leaf hash block": (131 * B + 7, "level 0 hash block 0 does not match"),
    "second leaf block": (132 * B, "level 0 hash block 1 does not match"),
    "top block": (130 * B + 3, "top hash block \\(level 1\\) does not match the root hash"),
    "padding of last leaf block": (132 * B + 64, "level 0 hash block 1 does not match"),
    "superblock": (129 * B + 12, "hash_type"),
}


@pytest.mark.parametrize("offset,message", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corruption_is_caught(tmp_path: Path, offset: int, message: str) -> None:
    image = _image(tmp_path, 129 * B)
    p = v.append_hash_tree(image)
    _flip(image, offset)
    assert _verify(image, p) != 0
    with pytest.raises(FormatError, match=message):
        v.verify_image(image, p.root_hash, hash_offset=p.hash_offset)


def test_padding_checked_without_root_hash(tmp_path: Path) -> None:
    image = _image(tmp_path, 129 * B)
    p = v.append_hash_tree(image)
    _flip(image, 130 * B + 2 * v.DIGEST_SIZE + 1)  # the top block holds two digests, then zeros
    assert _verify(image, p) != 0
    with pytest.raises(FormatError, match="padding of the last hash block is not zero"):
        v.verify_image(image)


def test_wrong_root_hash(tmp_path: Path) -> None:
    image = _image(tmp_path, 3 * B)
    p = v.append_hash_tree(image)
    wrong = bytes(32)
    assert _verify(image, p, root=wrong) != 0
    with pytest.raises(FormatError, match="root hash"):
        v.verify_image(image, wrong)


def test_refusals(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        v.append_hash_tree(empty)
    image = _image(tmp_path, 2 * B)
    with pytest.raises(FormatError, match="no dm-verity superblock"):
        v.verify_image(image)
    with pytest.raises(FormatError, match="salt"):
        v.append_hash_tree(image, salt=bytes(v.SALT_MAX + 1))
    assert image.stat().st_size == 2 * B  # nothing written
    v.append_hash_tree(image)
    with pytest.raises(FormatError, match="already ends with a dm-verity hash tree"):
        v.append_hash_tree(image)


def test_failure_leaves_the_image_as_it_was(tmp_path: Path) -> None:
    class DiskFull(io.BytesIO):
        def write(self, data: object) -> int:  # type: ignore[override]
            if self.tell() >= 130 * B:
                raise OSError(28, "No space left on device")
            return super().write(data)  # type: ignore[arg-type]

    original = _data(129 * B - 100)
    buf = DiskFull(original)
    with pytest.raises(OSError, match="No space"):
        v.append_hash_tree(buf)
    assert buf.getvalue() == original


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blocks=st.integers(1, 300), tail=st.sampled_from([0, 1, 4095]), salt=st.binary(min_size=0, max_size=64)
)
def test_sizes_and_salts_property(tmp_path: Path, blocks: int, tail: int, salt: bytes) -> None:
    size = max(1, (blocks - 1) * B + tail) if tail else blocks * B
    image = _image(tmp_path, size, "prop.img", seed=blocks)
    data = image.read_bytes()
    p = v.append_hash_tree(image, salt=salt)
    assert image.read_bytes() == _reference(tmp_path, data, p)
    assert v.verify_image(image, p.root_hash) == p


@pytest.mark.skipif(not have_tool("mkfs.erofs") or not have_tool("fsck.erofs"), reason="erofs-utils missing")
def test_erofs_still_readable_with_the_tree_appended(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "blob").write_bytes(_data(300_000))
    image = tmp_path / "stage2.erofs"
    run(["mkfs.erofs", "--quiet", "-T0", image, root])
    p = v.append_hash_tree(image)
    assert p.hash_offset == p.data_blocks * B < image.stat().st_size
    run(["fsck.erofs", f"--extract={tmp_path / 'out'}", image])  # the EROFS superblock bounds the fs
    assert (tmp_path / "out" / "etc" / "blob").read_bytes() == _data(300_000)


def _device_mapper_usable() -> bool:
    """Root, losetup, and the kernel's device-mapper driver (its misc device; no probing with dmsetup,
    which would create /dev/mapper/control even where the driver is missing)."""
    try:
        misc = Path("/proc/misc").read_text()
    except OSError:
        return False
    return os.geteuid() == 0 and "device-mapper" in misc and have_tool("losetup") and have_tool("dmsetup")


@pytest.mark.skipif(not _device_mapper_usable(), reason="needs root, losetup and the kernel's device-mapper")
def test_kernel_maps_it_with_our_table(tmp_path: Path) -> None:
    image = _image(tmp_path, 129 * B)
    p = v.append_hash_tree(image)
    loop = run(["losetup", "--find", "--show", "--read-only", image]).stdout.decode().strip()
    name = f"initbuild-verity-test-{os.getpid()}"
    try:
        _veritysetup("open", loop, name, loop, p.root_hash.hex(), f"--hash-offset={p.hash_offset}")
        try:
            table = run(["dmsetup", "table", name]).stdout.decode().split()
            devno = f"{os.major(os.stat(loop).st_rdev)}:{os.minor(os.stat(loop).st_rdev)}"
            assert " ".join(table[:13]) == p.table(devno, devno)
        finally:
            _veritysetup("close", name, check=False)
    finally:
        run(["losetup", "--detach", loop], check=False)

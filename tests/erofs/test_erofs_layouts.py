"""Fixed-output block maps (extents starting mid-lcluster) through the whole writer: files shaped
so that every layout case of zmap.lclusters_of occurs, checked by fsck.erofs 1.5 and the reader."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from initbuild.formats.erofs.compressor import Codec, lz4_codec, segment
from initbuild.formats.erofs.data import CHUNK_LCLUSTERS
from initbuild.formats.erofs.format import BLOCK_SIZE
from initbuild.formats.erofs.reader import ErofsReader
from initbuild.formats.erofs.writer import ErofsOptions

from .conftest import (
    BUILD_TIME,
    assert_dir_matches,
    assert_reader_matches,
    build,
    fsck_extract,
    needs_erofs_utils,
    tree_manifest,
)

pytestmark = needs_erofs_utils
RND = random.Random(42)
TEXT = b"".join(b"line %d of a fairly compressible text\n" % i for i in range(60_000))
NOISE = RND.randbytes(1 << 20)


def _default_codec() -> Codec:
    """The LZ4 codec of the default ErofsOptions (lz4hc), by INITBUILD_LZ4 (the lz4_path fixture)."""
    options = ErofsOptions()
    codec = lz4_codec(options.compression, options.level)
    assert codec is not None
    return codec


def _one_byte_tail() -> bytes:
    """Text then noise, cut so that the file ends in a 1-byte PLAIN extent."""
    codec = _default_codec()
    base = TEXT[:150_000] + NOISE[:20_000]
    for extra in range(0, 40 * BLOCK_SIZE, 97):
        data = base + NOISE[20_000 : 20_000 + extra]
        pieces = segment(data, codec, 16)
        if not pieces[-1][0].compressed and pieces[-1][0].length % BLOCK_SIZE == 1:
            return data
        # aim directly at length % 4096 == 1 for the PLAIN run after the last extent
        last = pieces[-1][0]
        if not last.compressed:
            want = base + NOISE[20_000 : 20_000 + extra + (1 - last.length) % BLOCK_SIZE]
            got = segment(want, codec, 16)
            if not got[-1][0].compressed and got[-1][0].length % BLOCK_SIZE == 1:
                return want
    raise AssertionError("no 1-byte tail shape found")


def _plain_into_last_lcluster() -> bytes:
    """Text then noise, cut so that the shifted PLAIN run's last block starts in the lcluster
    before the last one and ends at EOF in the last one."""
    codec = _default_codec()
    data = TEXT[:150_000] + NOISE[: 20 * BLOCK_SIZE]
    end = segment(data, codec, 16)[0][0].length  # the first extent, followed by PLAIN
    ofs = end % BLOCK_SIZE
    assert ofs > 1
    for cut in range(len(data) - 2 * BLOCK_SIZE, len(data)):
        if 0 < cut % BLOCK_SIZE < ofs:
            pieces = segment(data[:cut], codec, 16)
            if pieces[0][0].length == end and not pieces[-1][0].compressed:
                return data[:cut]
    raise AssertionError("no PLAIN-into-the-last-lcluster shape found")


@pytest.fixture
def layout_tree(tmp_path_factory: pytest.TempPathFactory, lz4_path: str) -> Path:
    """Shaped for the LZ4 implementation under test: where extents end depends on it."""
    root = tmp_path_factory.mktemp(f"layouts-{lz4_path}") / "src"
    root.mkdir()
    # compressed extents starting mid-lcluster, a shifted PLAIN run between them
    (root / "text-noise-text").write_bytes(TEXT[:300_000] + NOISE[:300_000] + TEXT[:200_000])
    # a shifted PLAIN run up to EOF: its last block runs into the last lcluster (EOF HEAD)
    (root / "text-noise").write_bytes(_plain_into_last_lcluster())
    (root / "one-byte-tail").write_bytes(_one_byte_tail())
    # across the 4 MiB chunk boundary: an extent ending exactly on an lcluster boundary, and a
    # shifted PLAIN run ending there with a partial block in the middle of the file
    chunk = CHUNK_LCLUSTERS * BLOCK_SIZE
    (root / "chunked-text").write_bytes((TEXT * 3)[: chunk + 300_000])
    (root / "chunked-noise").write_bytes(
        (TEXT * 3)[: chunk - 300_000] + NOISE[:300_000] + (TEXT * 3)[: 200_000 + 17]
    )
    # tiny and exact sizes around one and two lclusters
    for n in (4097, 8191, 8192, 8193, 12289):
        (root / f"text-{n}").write_bytes(TEXT[:n])
    return root


def _shapes(image: Path) -> dict[str, set[str]]:
    """Which layout cases each compressed file of the image has."""
    out: dict[str, set[str]] = {}
    with ErofsReader(image) as r:
        for m in r.members():
            ino = r.inode(m.ino)
            if ino.layout not in (1, 3):
                continue
            shapes = out.setdefault(m.path, set())
            extents = r.extents(ino)
            for x in extents:
                kind = "compressed" if x.compressed else "plain"
                if x.start % BLOCK_SIZE:
                    shapes.add(f"{kind} mid-lcluster")
                if x.compressed and x.end % BLOCK_SIZE == 0 and x.end < ino.size:
                    shapes.add("compressed ends on boundary")
                last = (ino.size - 1) // BLOCK_SIZE
                if not x.compressed and x.end == ino.size and x.start // BLOCK_SIZE < last:
                    shapes.add("plain into the last lcluster")
                if not x.compressed and x.end - x.start < BLOCK_SIZE and x.end < ino.size:
                    shapes.add("partial plain mid-file")
                if x.end - x.start == 1:
                    shapes.add("1-byte extent")
    return out


@pytest.mark.parametrize("pcluster", [65536, 16384, 4096])
def test_fixed_output_layouts(layout_tree: Path, tmp_path: Path, pcluster: int) -> None:
    manifest, sysroot = tree_manifest(layout_tree)
    image = tmp_path / "layouts.img"
    build(manifest, sysroot, image, pcluster_size=pcluster, build_time=BUILD_TIME)
    fsck_extract(image, tmp_path / "out")  # fsck 1.5 decodes every extent to its exact length
    assert_dir_matches(manifest, sysroot, tmp_path / "out", by_fsck=True)
    assert_reader_matches(manifest, sysroot, image)
    found = set().union(*_shapes(image).values())
    want = {
        "compressed mid-lcluster",
        "compressed ends on boundary",
        "plain mid-lcluster",
        "plain into the last lcluster",
        "partial plain mid-file",
    }
    if pcluster == 65536:  # the 1-byte tail file is tuned for the default pcluster
        want.add("1-byte extent")
    assert want <= found


def test_segment_is_deterministic_and_fills_pclusters(lz4_path: str) -> None:
    codec = _default_codec()
    data = TEXT[:400_000] + NOISE[:30_000] + TEXT[:100_000]
    a = segment(data, codec, 16)
    assert a == segment(bytes(data), codec, 16)
    assert sum(pc.length for pc, _ in a) == len(data)
    full = [b for pc, b in a[:-1] if pc.compressed]
    assert full and all(len(b) == 16 * BLOCK_SIZE for b in full)
    # all but the last extent leave (almost) no zero padding in their pcluster
    assert all(len(b) - len(b.lstrip(b"\0")) < 64 for b in full)

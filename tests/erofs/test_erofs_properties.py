"""Generated trees (hypothesis) and mutated images (fuzz) against fsck.erofs and the reader."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initbuild.errors import FormatError
from initbuild.formats.erofs.format import BLOCK_SIZE, EROFS_SUPER_OFFSET, SB_CHECKSUM_OFFSET, erofs_crc32c
from initbuild.formats.erofs.reader import ErofsReader
from initbuild.formats.inspect import unpack
from initbuild.manifest import Entry, Kind, Manifest
from initbuild.sysroot import Sysroot

from .conftest import (
    BUILD_TIME,
    WithoutRoot,
    assert_dir_matches,
    assert_reader_matches,
    build,
    fsck_extract,
    needs_erofs_utils,
)

NAMES = st.text(alphabet="abcXYZ._-!+~é0", min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """Mostly compressible bytes with random runs, sized around block boundaries."""
    size = draw(st.sampled_from([0, 1, 100, 4095, 4096, 4097, 8191, 8192, 12289, 40000, 70000, 140000]))
    size += draw(st.integers(-3, 3)) if size > 3 else 0
    rnd = random.Random(draw(st.integers(0, 2**32)))
    style = draw(st.sampled_from(["zeros", "text", "random", "mixed"]))
    if style == "zeros":
        return bytes(size)
    if style == "random":
        return rnd.randbytes(size)
    words = [rnd.randbytes(rnd.randint(1, 8)) if style == "mixed" else b"word%d " % i for i in range(50)]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words)
    return bytes(out[:size])


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    m = Manifest()
    dirs = ["/"]
    files: list[str] = []
    for _ in range(draw(st.integers(0, 14))):
        parent = draw(st.sampled_from(dirs))
        path = (parent.rstrip("/") + "/" + draw(NAMES)) if parent != "/" else "/" + draw(NAMES)
        if path in m:
            continue
        kind = draw(st.sampled_from([Kind.FILE, Kind.FILE, Kind.DIR, Kind.SYMLINK, Kind.HARDLINK, Kind.FIFO]))
        mode = draw(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o1777]))
        mtime = draw(st.one_of(st.none(), st.integers(0, 2**33)))
        owner = {"uid": draw(st.sampled_from([0, 1000, 70000])), "gid": draw(st.sampled_from([0, 100]))}
        if kind is Kind.HARDLINK and not files:
            kind = Kind.FILE
        if kind is Kind.FILE:
            m.add(Entry(path, kind, mode, data=draw(contents()), mtime=mtime, **owner))
            files.append(path)
        elif kind is Kind.DIR:
            m.add(Entry(path, kind, mode & 0o1777, mtime=mtime, **owner))
            dirs.append(path)
        elif kind is Kind.SYMLINK:
            m.add(Entry(path, kind, 0o777, target="x" * draw(st.sampled_from([1, 60, 3900, 4095])), **owner))
        elif kind is Kind.HARDLINK:
            # the reader names the inode after its first path in canonical order, like from_tree()
            target = draw(st.sampled_from(files))
            if target.encode() < path.encode():
                m.add(Entry(path, kind, 0o644, target=target))
        else:
            m.add(Entry(path, kind, 0o644, mtime=mtime))
    # hard links inherit their file's metadata in the image
    for p, e in list(m.entries.items()):
        if e.kind is Kind.HARDLINK and e.target:
            t = m[e.target]
            m.entries[p] = Entry(p, Kind.HARDLINK, t.mode, t.uid, t.gid, target=t.path, mtime=t.mtime)
    return m


@needs_erofs_utils
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    manifest=manifests(),
    compression=st.sampled_from(["lz4hc", "lz4", "none"]),
    pcluster=st.sampled_from([4096, 16384, 65536]),
)
def test_generated_trees(
    tmp_path_factory: pytest.TempPathFactory, manifest: Manifest, compression: str, pcluster: int
) -> None:
    tmp = tmp_path_factory.mktemp("gen")
    sysroot = Sysroot(tmp)
    image = tmp / "gen.img"
    build(
        manifest,
        sysroot,
        image,
        compression=compression,
        pcluster_size=pcluster,
        build_time=BUILD_TIME,
        level=4,
    )
    fsck_extract(image, tmp / "out")
    assert_dir_matches(manifest, sysroot, tmp / "out", by_fsck=True)
    assert_reader_matches(manifest, sysroot, image)


# -- fuzzing ----------------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _fuzz_source() -> Manifest:
    rnd = random.Random(7)
    m = Manifest()
    m.add(Entry("/etc/passwd", Kind.FILE, 0o644, data=b"root:x:0:0:root:/root:/bin/sh\n" * 30))
    m.add(Entry("/usr/lib/big", Kind.FILE, 0o755, data=b"".join(b"%d, " % i for i in range(40000))))
    m.add(Entry("/usr/lib/rand", Kind.FILE, 0o644, data=rnd.randbytes(9000)))
    m.add(Entry("/usr/lib/link", Kind.HARDLINK, 0o755, target="/usr/lib/big"))
    m.add(Entry("/bin/sh", Kind.SYMLINK, 0o777, target="../usr/lib/big"))
    m.add(Entry("/dev/null", Kind.CHAR, 0o666, rdev=(1, 3)))
    for i in range(200):
        m.add(
            Entry(
                f"/many/f{i:03d}", Kind.FILE, 0o644, data=b"%d" % i, mtime=i, xattrs=(("user.i", b"%d" % i),)
            )
        )
    return m


def _mutations(image: bytes, meta_start: int, rnd: random.Random) -> Iterator[tuple[str, bytes]]:
    """Truncations and byte/word corruptions aimed at every region, checksum fixed up or not."""
    size = len(image)
    regions = {
        "superblock": (EROFS_SUPER_OFFSET, EROFS_SUPER_OFFSET + 160),
        "metadata": (meta_start, size),
        "data": (BLOCK_SIZE, meta_start),
    }
    while True:
        kind = rnd.choice(["truncate", "flip", "flip", "word", "word", "zero-block"])
        if kind == "truncate":
            yield kind, image[: rnd.randrange(size)]
            continue
        region = rnd.choice(list(regions))
        lo, hi = regions[region]
        buf = bytearray(image)
        if kind == "zero-block":
            at = rnd.randrange(lo, hi) // BLOCK_SIZE * BLOCK_SIZE
            buf[at : at + BLOCK_SIZE] = bytes(BLOCK_SIZE)
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(lo, hi - 4)
            if kind == "word":
                buf[at : at + 4] = rnd.choice(
                    [0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rnd.getrandbits(32)]
                ).to_bytes(4, "little")
            else:
                buf[at] ^= 1 << rnd.randrange(8)
        if rnd.random() < 0.8:  # get past the checksum to the deeper checks
            crc_at = EROFS_SUPER_OFFSET + SB_CHECKSUM_OFFSET
            buf[crc_at : crc_at + 4] = bytes(4)
            crc = erofs_crc32c(bytes(buf[EROFS_SUPER_OFFSET:BLOCK_SIZE]))
            buf[crc_at : crc_at + 4] = crc.to_bytes(4, "little")
        yield f"{kind}:{region}", bytes(buf)


@pytest.mark.parametrize("compression", ["lz4hc", "none"])
def test_fuzzed_images_raise_only_format_error(tmp_path: Path, compression: str) -> None:
    """600 mutants per compression: reading every member either works or raises FormatError,
    within a time bound; unpack never writes outside its target."""
    source = tmp_path / "clean.img"
    build(_fuzz_source(), Sysroot(tmp_path), source, compression=compression, pcluster_size=16384)
    clean = source.read_bytes()
    with ErofsReader(source) as r:
        meta_start = r.sb.meta_blkaddr * BLOCK_SIZE
    rnd = random.Random(f"fuzz-{compression}")
    outcomes: dict[str, int] = {}
    mutants = _mutations(clean, meta_start, rnd)
    for case in range(600):
        what, data = next(mutants)
        path = tmp_path / "m.img"
        path.write_bytes(data)
        try:
            with time_limit(5), ErofsReader(path) as r:
                for m in r.members():
                    r.read(m)
                if case % 10 == 0:
                    box = tmp_path / f"box{case}"
                    box.mkdir()
                    try:
                        unpack(WithoutRoot(r), box / "out")
                    finally:
                        assert os.listdir(box) == ["out"] or not (box / "out").exists()
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except FormatError:
            outcomes["FormatError"] = outcomes.get("FormatError", 0) + 1
        except Hang:
            pytest.fail(f"case {case} ({what}) did not finish in 5 s")
        except Exception as e:  # noqa: BLE001 - any other exception is the bug we look for
            pytest.fail(f"case {case} ({what}) raised {type(e).__name__}: {e}")
    # the mutants must reach deep enough to be rejected, and some must still read fine
    assert outcomes.get("FormatError", 0) > 100 and outcomes.get("ok", 0) > 20, outcomes

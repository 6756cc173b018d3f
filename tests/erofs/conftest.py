"""EROFS test helpers: an edge-case source tree, image building, fsck.erofs and tree comparison."""

from __future__ import annotations

import os
import random
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from initbuild import run
from initbuild.formats.erofs.compressor import LZ4_PATH_ENV, lz4_codec
from initbuild.formats.erofs.reader import ErofsReader
from initbuild.formats.erofs.writer import ErofsOptions, ErofsStats, write_erofs
from initbuild.formats.member import Member
from initbuild.manifest import Kind, Manifest, from_tree, open_entry
from initbuild.sysroot import Sysroot

IS_ROOT = os.geteuid() == 0
BUILD_TIME = 1_700_000_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


needs_erofs_utils = pytest.mark.skipif(
    not (run.have_tool("fsck.erofs") and run.have_tool("dump.erofs")), reason="erofs-utils not installed"
)


@pytest.fixture(params=["native", "python"])
def lz4_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both implementations of fixed-output LZ4 (compressor.lz4_codec): the system's liblz4 and the
    python-lz4 emulation."""
    monkeypatch.setenv(LZ4_PATH_ENV, request.param)
    return str(request.param)


def build(manifest: Manifest, sysroot: Sysroot, image: Path, **options: object) -> ErofsStats:
    with open(image, "wb") as f:
        return write_erofs(manifest, sysroot, f, ErofsOptions(**options))  # type: ignore[arg-type]


def fsck_extract(image: Path, dest: Path | None = None) -> str:
    """Run fsck.erofs --extract; fail on a non-zero exit *or* any <E> line (fsck exits 0 on a bad
    superblock checksum, docs/erofs-format.md §9)."""
    argv = ["fsck.erofs", f"--extract={dest}" if dest else "--extract", str(image)]
    cp = run.run(argv, check=False)
    out = (cp.stdout + cp.stderr).decode(errors="replace")
    assert cp.returncode == 0 and "<E>" not in out, f"fsck.erofs failed ({cp.returncode}):\n{out}"
    return out


def dump_super(image: Path) -> dict[str, str]:
    out = run.run(["dump.erofs", "-s", str(image)]).stdout.decode()
    info = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def assert_dir_matches(manifest: Manifest, sysroot: Sysroot, root: Path, *, by_fsck: bool = False) -> None:
    """The extracted tree at `root` holds exactly the manifest: types, modes, bytes, targets, rdev.

    fsck.erofs 1.5 restores owners when run as root, but chown()s after chmod(), which clears
    set-user/group-ID bits of regular files: those two bits are not compared for its output.
    image.unpack() keeps modes but does not chown.
    """
    owners = by_fsck and IS_ROOT
    found = {"/"}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            found.add("/" + (n if rel == "." else f"{rel}/{n}"))
    expected = set(manifest.entries)
    # fsck.erofs 1.5 does not create sockets; unpack() skips them and devices without root
    skipped = {
        p
        for p in expected - found
        if manifest[p].kind is Kind.SOCKET or manifest[p].kind in (Kind.CHAR, Kind.BLOCK) and not IS_ROOT
    }
    assert found == expected - skipped
    for path in sorted(found):
        e = manifest[path]
        host = root / path.lstrip("/")
        st = os.lstat(host)
        kind = Kind.FILE if e.kind is Kind.HARDLINK else e.kind
        assert Kind.from_mode(st.st_mode) == kind, path
        if kind is not Kind.SYMLINK:
            mode = manifest[e.target].mode if e.kind is Kind.HARDLINK and e.target else e.mode
            ignore = stat.S_ISUID | stat.S_ISGID if by_fsck and kind is not Kind.DIR else 0
            assert stat.S_IMODE(st.st_mode) & ~ignore == mode & ~ignore, (path, oct(st.st_mode), oct(mode))
        if owners and kind is not Kind.SYMLINK:
            assert (st.st_uid, st.st_gid) == (e.uid, e.gid), path
        if kind is Kind.FILE:
            src = manifest[e.target] if e.kind is Kind.HARDLINK and e.target else e
            with open_entry(src, sysroot) as f:
                assert host.read_bytes() == f.read(), path
        elif kind is Kind.SYMLINK:
            assert os.readlink(host) == e.target, path
        elif kind in (Kind.CHAR, Kind.BLOCK):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == e.rdev, path


def assert_reader_matches(
    manifest: Manifest, sysroot: Sysroot, image: Path, build_time: int = BUILD_TIME
) -> None:
    """ErofsReader reproduces the manifest: every path, kind, metadata field and byte."""
    with ErofsReader(image) as r:
        members = list(r.members())
        assert [m.path for m in members] == [e.path for e in manifest.sorted()]
        nlinks: dict[str, int] = {}
        for e in manifest.entries.values():
            if e.kind is Kind.HARDLINK and e.target:
                nlinks[e.target] = nlinks.get(e.target, 1) + 1
        for m in members:
            e = manifest[m.path]
            assert m.kind is e.kind, m.path
            assert (m.mode, m.uid, m.gid) == (e.mode, e.uid, e.gid), m.path
            assert m.mtime == (build_time if e.mtime is None else e.mtime), m.path
            if e.kind is Kind.FILE:
                with open_entry(e, sysroot) as f:
                    assert r.read(m) == f.read(), m.path
                assert m.nlink == nlinks.get(e.path, 1), m.path
            elif e.kind is Kind.HARDLINK:
                assert m.target == e.target, m.path
                assert r.read(m) == r.read(r.lookup(e.target or "")), m.path
            elif e.kind is Kind.SYMLINK:
                assert m.target == e.target, m.path
            elif e.kind in (Kind.CHAR, Kind.BLOCK):
                assert m.rdev == e.rdev, m.path
            elif e.kind is Kind.DIR:
                subdirs = sum(
                    1
                    for x in manifest.entries.values()
                    if x.kind is Kind.DIR and x.parent == e.path and x.path != "/"
                )
                assert m.nlink == 2 + subdirs, m.path
            assert sorted(r.xattrs(r.inode(m.ino))) == sorted(e.xattrs), m.path


class WithoutRoot:
    """ImageReader adapter that drops the "/" member.

    initbuild.image.unpack() (commit 648ec6f) raises "refusing to unpack ... outside" for the root
    member itself (_check_parents(root, root) walks above root); reported to the image.py owner.
    """

    def __init__(self, reader: ErofsReader):
        self.reader = reader

    def members(self) -> Iterator[Member]:
        return (m for m in self.reader.members() if m.path != "/")

    def read(self, member: Member) -> bytes:
        return self.reader.read(member)


def _tuned_file(options: ErofsOptions, lclusters: int, seed: int) -> bytes:
    """A file that is one segment whose LZ4 output is an exact multiple of 4096 bytes: the
    compressed data then has no zero padding at all (boundary case of docs/erofs-format.md §7.6)."""
    codec = lz4_codec(options.compression, options.level)
    assert codec is not None
    compress = codec.compress  # python-lz4 and liblz4 give the same block when the input fits
    noise = random.Random(seed).randbytes(lclusters * 4096)
    size, target = lclusters * 4096, 3 * 4096

    def clen(k: int) -> int:
        return len(compress(memoryview(noise[:k] + bytes(size - k))))

    k = target - 64
    for _ in range(20):  # random bytes cost ~1 output byte each: converge on the target length
        k += target - clen(k)
    for j in range(k - 64, k + 64):
        if clen(j) == target:
            return noise[:j] + bytes(size - j)
    raise AssertionError("could not tune a boundary file")


def make_edge_tree(root: Path) -> None:
    """Every layout and naming corner the writer has to get right."""
    rnd = random.Random(1234)
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "one").write_bytes(b"x")
    for n in (4095, 4096, 4097, 8192, 12288 + 7):
        (root / f"size{n}").write_bytes(rnd.randbytes(n))
    (root / "text4097").write_bytes((b"hello erofs " * 400)[:4097])
    (root / "random-200k").write_bytes(rnd.randbytes(200_000))
    (root / "zeros-1m").write_bytes(bytes(1 << 20))
    (root / "text-3m").write_bytes(
        b"".join(b"line %d of a compressible text file\n" % i for i in range(90_000))
    )
    half = rnd.randbytes(40_000)
    (root / "mixed").write_bytes(half + bytes(300_000) + half + (b"abc" * 50_000))
    (root / "boundary-lz4hc").write_bytes(_tuned_file(ErofsOptions(), 8, 1))
    (root / "boundary-lz4").write_bytes(_tuned_file(ErofsOptions(compression="lz4"), 8, 2))
    (root / ("n" * 255)).write_bytes(b"long name")
    for name in ("!a", "-b", "+c", ",d", "Zed", "~tilde", "été", ".hidden", "..dots"):
        (root / name).write_bytes(name.encode())
    big = root / "bigdir"
    big.mkdir()
    for i in range(3000):
        (big / f"entry-{i:05d}-{'x' * (i % 40)}").write_bytes(b"%d" % i if i % 7 else b"")
    deep = root
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"deep")
    (root / "emptydir").mkdir()
    (root / "links").mkdir()
    (root / "links" / "target").write_bytes(b"linked content " * 1000)
    os.link(root / "links" / "target", root / "hardlink-1")
    os.link(root / "links" / "target", root / "d0" / "hardlink-2")
    os.symlink("links/target", root / "symlink")
    os.symlink("/absolute/dangling", root / "dangling")
    os.symlink("t" * 4000, root / "long-symlink")  # inline only with a compact inode
    os.symlink("u" * 4095, root / "longest-symlink")  # never fits inline: FLAT_PLAIN
    os.mkfifo(root / "fifo")
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    try:
        os.chdir(root)  # socket paths are limited to 108 bytes
        s.bind("socket")
    finally:
        os.chdir(cwd)
        s.close()
    modes = root / "modes"
    modes.mkdir()
    for mode in (0o4755, 0o2711, 0o1777, 0o000, 0o600):
        p = modes / f"m{mode:04o}"
        p.write_bytes(b"m")
        os.chmod(p, mode)
    sticky = root / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    if IS_ROOT:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.mknod(root / "nvme", stat.S_IFBLK | 0o660, os.makedev(259, 300))
        os.chown(root / "one", 70000, 70001)  # forces an extended inode
        os.chown(root / "modes", 1000, 100)


@pytest.fixture(scope="session")
def edge_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge") / "src"
    make_edge_tree(root)
    return root


@pytest.fixture(scope="session")
def kernel_tree() -> Path:
    """An installed module tree of plain .ko files (6.1's; 6.12's .ko.xz would not compress again)."""
    trees = sorted(
        p
        for p in Path("/lib/modules").glob("*")
        if (p / "kernel").is_dir() and next((p / "kernel").rglob("*.ko"), None) is not None
    )
    if not trees:
        pytest.skip("no kernel module tree with uncompressed .ko files installed")
    return trees[0]


def tree_manifest(src: Path) -> tuple[Manifest, Sysroot]:
    sysroot = Sysroot(src)
    return from_tree(sysroot), sysroot

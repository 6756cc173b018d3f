"""Images written by initbuild checked by fsck.erofs 1.5, dump.erofs and initbuild's own reader."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from initbuild.errors import ConfigError
from initbuild.formats.erofs import lz4native
from initbuild.formats.erofs.compressor import LZ4_PATH_ENV, PYTHON_PATH
from initbuild.formats.erofs.format import BLOCK_SIZE
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
    dump_super,
    fsck_extract,
    needs_erofs_utils,
    tree_manifest,
)

pytestmark = needs_erofs_utils
COMPRESSIONS = ["lz4hc", "lz4", "none"]
NATIVE = lz4native.load()


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_edge_tree_fsck_extract(edge_tree: Path, tmp_path: Path, compression: str, lz4_path: str) -> None:
    manifest, sysroot = tree_manifest(edge_tree)
    image = tmp_path / "edge.img"
    stats = build(manifest, sysroot, image, compression=compression, build_time=BUILD_TIME)
    fsck_extract(image, tmp_path / "out")
    assert_dir_matches(manifest, sysroot, tmp_path / "out", by_fsck=True)
    assert image.stat().st_size == stats.bytes == stats.blocks * BLOCK_SIZE
    if compression == "none":
        assert stats.compressed_files == 0
        assert stats.compressor == ""
    else:  # text, zeros, mixed, the boundary files, the hard-linked file...
        assert stats.compressed_files >= 6
        assert stats.compressor == (PYTHON_PATH if lz4_path == "python" else f"{NATIVE.name} (fixed-output)")


def test_native_lz4_is_used_when_present(
    edge_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian has liblz4 >= 1.9.3 (apt and systemd need it): the default is the native path, and
    requiring it where it is missing or too old is a located config error."""
    monkeypatch.delenv(LZ4_PATH_ENV, raising=False)
    manifest, sysroot = tree_manifest(edge_tree)
    stats = build(manifest, sysroot, tmp_path / "edge.img")
    assert stats.compressor.startswith("liblz4 1.9.") or stats.compressor.startswith("liblz4 1.1")
    monkeypatch.setattr(lz4native, "MIN_VERSION", 10_00_00_00)
    assert lz4native.load() is None
    assert build(manifest, sysroot, tmp_path / "old.img").compressor == PYTHON_PATH
    monkeypatch.setenv(LZ4_PATH_ENV, "native")
    with pytest.raises(ConfigError, match="older than 1.9.3"):
        build(manifest, sysroot, tmp_path / "none.img")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_edge_tree_reader_and_unpack(edge_tree: Path, tmp_path: Path, compression: str) -> None:
    manifest, sysroot = tree_manifest(edge_tree)
    image = tmp_path / "edge.img"
    build(manifest, sysroot, image, compression=compression, build_time=BUILD_TIME)
    assert_reader_matches(manifest, sysroot, image)
    with ErofsReader(image) as r:
        unpack(WithoutRoot(r), tmp_path / "unpacked")
    assert_dir_matches(manifest, sysroot, tmp_path / "unpacked")
    assert (
        os.stat(tmp_path / "unpacked" / "hardlink-1").st_ino
        == os.stat(tmp_path / "unpacked/links/target").st_ino
    )


@pytest.mark.parametrize("compression", ["lz4hc", "none"])
def test_dump_reports_features_and_counts(edge_tree: Path, tmp_path: Path, compression: str) -> None:
    manifest, sysroot = tree_manifest(edge_tree)
    image = tmp_path / "edge.img"
    stats = build(manifest, sysroot, image, compression=compression, volume_name="initbuild-test")
    info = dump_super(image)
    inodes = sum(1 for e in manifest.entries.values() if e.kind is not Kind.HARDLINK)
    assert int(info["Filesystem blocks"]) == stats.blocks == image.stat().st_size // BLOCK_SIZE
    assert int(info["Filesystem inode count"]) == inodes == stats.inodes
    assert info["Filesystem root nid"] == "0"
    features = set(info["Filesystem features"].split())
    expected = {"sb_csum", "mtime"} | ({"0padding", "big_pcluster"} if compression != "none" else set())
    assert features == expected
    assert info["Filesystem UUID"] == stats.uuid


def test_reproducible(edge_tree: Path, tmp_path: Path) -> None:
    manifest, sysroot = tree_manifest(edge_tree)
    digests = set()
    for i, workers in enumerate((1, 3)):
        image = tmp_path / f"{i}.img"
        build(manifest, sysroot, image, workers=workers, build_time=BUILD_TIME)
        digests.add(hashlib.sha256(image.read_bytes()).hexdigest())
    assert len(digests) == 1
    # a different build time changes the content-derived UUID, and only block 0 and inodes
    build(manifest, sysroot, tmp_path / "other.img", build_time=BUILD_TIME + 1)
    assert hashlib.sha256((tmp_path / "other.img").read_bytes()).hexdigest() not in digests


def test_compact_inodes_and_xattrs(tmp_path: Path) -> None:
    """Fixed timestamps give 32-byte inodes everywhere; xattrs of every supported namespace."""
    acl = bytes.fromhex("0200000001000600ffffffff04000400ffffffff20000400ffffffff")
    m = Manifest()
    m.add(Entry("/etc", Kind.DIR, 0o755, xattrs=(("trusted.overlay.opaque", b"y"),)))
    m.add(
        Entry(
            "/etc/conf",
            Kind.FILE,
            0o644,
            data=b"x" * 10000,
            xattrs=(
                ("user.comment", b"hello"),
                ("security.selinux", b"system_u:object_r:etc_t:s0\0"),
                ("system.posix_acl_access", acl),
                ("user." + "n" * 200, b"v" * 3000),
            ),
        )
    )
    m.add(Entry("/etc/sub", Kind.DIR, 0o755, xattrs=(("system.posix_acl_default", acl),)))
    m.add(
        Entry("/bin/sh", Kind.SYMLINK, 0o777, target="busybox", xattrs=(("security.capability", b"\1" * 20),))
    )
    m.add(Entry("/dev/console", Kind.CHAR, 0o600, rdev=(5, 1)))
    sysroot = Sysroot(tmp_path)
    image = tmp_path / "x.img"
    build(m, sysroot, image, build_time=BUILD_TIME)
    fsck_extract(image, tmp_path / "out")
    assert_reader_matches(m, sysroot, image)
    with ErofsReader(image) as r:
        assert all(r.inode(mem.ino).inode_size == 32 for mem in r.members())


def test_unsupported_xattr_prefix_names_the_path(tmp_path: Path) -> None:
    from initbuild.errors import FormatError

    m = Manifest()
    m.add(Entry("/f", Kind.FILE, 0o644, data=b"", xattrs=(("lustre.thing", b"1"),)))
    with pytest.raises(FormatError, match="/f: extended attribute 'lustre.thing'"):
        build(m, Sysroot(tmp_path), tmp_path / "x.img")


def test_pcluster_sizes(edge_tree: Path, tmp_path: Path) -> None:
    """1-block pclusters (CBLKCNT=1 everywhere) and 1 MiB pclusters both check out."""
    manifest, sysroot = tree_manifest(edge_tree)
    for size in (4096, 1 << 20):
        image = tmp_path / f"p{size}.img"
        stats = build(manifest, sysroot, image, pcluster_size=size)
        assert 1 <= stats.max_pcluster_blocks <= size // BLOCK_SIZE
        fsck_extract(image)
        assert_reader_matches(manifest, sysroot, image, build_time=0)


def test_reader_reads_mkfs_images(edge_tree: Path, tmp_path: Path) -> None:
    """The reader is checked against mkfs.erofs 1.5 output too (fixed-output extents, 2B packs)."""
    from initbuild import run

    # mkfs.erofs 1.5 fails ("Could not format the device") on a 255-byte name: leave it out
    src = tmp_path / "src"
    run.run(["cp", "-a", str(edge_tree), str(src)])
    (src / ("n" * 255)).unlink()
    manifest, sysroot = tree_manifest(src)
    for opts in ([], ["-zlz4hc"], ["-zlz4hc", "-C65536"], ["-zlz4"]):
        image = tmp_path / "mkfs.img"
        run.run(["mkfs.erofs", "-T0", *opts, str(image), str(src)])
        with ErofsReader(image) as r:
            got = {m.path: m for m in r.members()}
            assert set(got) == set(manifest.entries)
            for path, e in manifest.entries.items():
                if e.kind is Kind.FILE:
                    assert r.read(got[path]) == sysroot.read_bytes(e.source or ""), (opts, path)


@pytest.mark.slow
def test_kernel_module_tree(kernel_tree: Path, tmp_path: Path) -> None:
    manifest, sysroot = tree_manifest(kernel_tree)
    image = tmp_path / "modules.img"
    stats = build(manifest, sysroot, image, level=9)
    assert stats.compressed_files > 0.9 * stats.files
    fsck_extract(image, tmp_path / "out")
    assert_dir_matches(manifest, sysroot, tmp_path / "out", by_fsck=True)
    assert_reader_matches(manifest, sysroot, image, build_time=0)

"""End-to-end builds from the host (no VM): reproducibility, GNU cpio as oracle, outputs contract."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from oracles import CLI_DECOMPRESS

from initbuild.build import build
from initbuild.config import load_profile, load_profile_text
from initbuild.errors import ConfigError
from initbuild.formats.compress import Compression, detect
from initbuild.formats.cpio import CpioReader
from initbuild.formats.inspect import Member
from initbuild.manifest import Kind
from initbuild.profile import Mode
from initbuild.run import run


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _outputs(d: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(d.iterdir()) if p.name != "build.json"}


def _build(outdir: Path, mode: str = "initoverlayfs", extra: str = "") -> Path:
    profile = load_profile_text(f"mode: {mode}\n{extra}", "test.yaml")
    build(profile, outdir, force=True)
    return outdir


@pytest.mark.parametrize("epoch", [None, "1700000000"])
@pytest.mark.parametrize("mode", ["plain", "initoverlayfs"])
def test_builds_are_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, epoch: str | None
) -> None:
    if epoch is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    a = _outputs(_build(tmp_path / "a", mode))
    b = _outputs(_build(tmp_path / "b", mode))
    assert a == b
    assert len(a) == (1 if mode == "plain" else 3)


def test_source_date_epoch_is_the_timestamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    out = _build(tmp_path / "o", "plain")
    members = list(CpioReader(next(out.glob("initramfs-*.img"))).members())
    assert {m.mtime for m in members} == {1234567890}


def _cpio_extract(image: Path, dest: Path) -> None:
    """Decompress with the reference CLI for the format, then extract with GNU cpio."""
    raw = image.read_bytes()
    comp = detect(raw)
    data = run(CLI_DECOMPRESS[comp], input=raw).stdout if comp not in (None, Compression.NONE) else raw
    dest.mkdir()
    run(["cpio", "-idv", "--no-absolute-filenames", "--quiet"], input=data, cwd=dest)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_gnu_cpio_extracts_the_manifest(tmp_path: Path, compression: str) -> None:
    from initbuild.build import collect, make_plan

    profile = load_profile_text(
        f"mode: plain\ncompression: {compression}\nearly_microcode: false\n", "t.yaml"
    )
    build(profile, tmp_path / "out", force=True)
    _cpio_extract(next((tmp_path / "out").glob("initramfs-*.img")), tmp_path / "x")
    plan, sysroot = make_plan(profile)
    manifest = collect(plan, sysroot).stage2.manifest
    root = tmp_path / "x"
    seen = {"/" + p.relative_to(root).as_posix() for p in root.rglob("*")} | {"/"}
    assert seen == set(manifest.entries)
    for e in manifest.sorted():
        p = root / e.path.lstrip("/")
        st = os.lstat(p)
        assert stat.S_IMODE(st.st_mode) == e.mode, e.path
        if e.kind is Kind.FILE:
            want = e.data if e.data is not None else sysroot.read_bytes(e.source or "")
            assert p.read_bytes() == want, e.path
        elif e.kind is Kind.SYMLINK:
            assert os.readlink(p) == e.target, e.path
        elif e.kind is Kind.DIR:
            assert stat.S_ISDIR(st.st_mode), e.path
        elif e.kind is Kind.CHAR:
            assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == e.rdev, e.path


def test_outputs_are_refused_without_force_and_no_temp_files_remain(tmp_path: Path) -> None:
    profile = load_profile(None)
    out = tmp_path / "o"
    report = build(profile, out)
    before = _outputs(out)
    with pytest.raises(ConfigError, match="already exist"):
        build(profile, out)
    assert _outputs(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    data = json.loads((out / "build.json").read_text())
    assert data["kernel"] == report.kver
    for o in data["outputs"]:
        assert _sha(out / o["path"]) == o["sha256"] and (out / o["path"]).stat().st_size == o["size"]
    assert {o["kind"] for o in data["outputs"]} == {"initramfs", "stage2", "conf"}
    assert any(t["step"] == "total" for t in data["timings"])


def _initoverlayfs_read_conf(text: str) -> dict[str, str]:
    """initoverlayfs's reader (config-parser.h): a line is `key<space>value`; the key must be followed
    by whitespace; the value starts after the whitespace and loses exactly its last character (the
    newline). Unknown lines are ignored."""
    keys = ("bootfs", "bootfs_hint", "bootfstype", "fs", "fstype")
    out = {}
    for line in text.splitlines(keepends=True):
        for k in keys:
            if len(line) > len(k) and line[len(k)].isspace() and line.startswith(k):
                i = len(k)
                while line[i].isspace():
                    i += 1
                out[k] = line[i:][:-1]
    return out


def test_initoverlayfs_conf_reads_back_the_way_initoverlayfs_reads_it(tmp_path: Path, kver: str) -> None:
    extra = "overlay:\n  bootfs: UUID=1234-abcd\n  bootfs_hint: /dev/vda1\n  bootfstype: vfat\n"
    out = _build(tmp_path / "o", "initoverlayfs", extra)
    conf = (out / "initoverlayfs.conf").read_text()
    assert conf.endswith("\n") and not any(line != line.rstrip() for line in conf.splitlines())
    got = _initoverlayfs_read_conf(conf)
    assert got == {
        "bootfs": "UUID=1234-abcd",
        "bootfs_hint": "/dev/vda1",
        "bootfstype": "vfat",
        "fs": f"/initoverlayfs-{kver}.img",
        "fstype": "erofs",
    }
    # the same bytes are inside stage one
    stage1 = CpioReader(out / f"initramfs-{kver}.img")
    member = next(m for m in stage1.members() if m.path == "/etc/initoverlayfs.conf")
    assert stage1.read(member).decode() == conf


def _tree(members: list[Member], read: object) -> dict[str, tuple[object, ...]]:
    out = {}
    for m in members:
        content = hashlib.sha256(read(m)).hexdigest() if m.kind is Kind.FILE else None  # type: ignore[operator]
        out[m.path] = (
            m.kind if m.kind is not Kind.HARDLINK else Kind.FILE,
            m.mode,
            m.size,
            m.target,
            m.rdev,
            m.uid,
            m.gid,
            content,
        )
    return out


def test_stage_two_tree_equals_the_plain_tree(tmp_path: Path, kver: str) -> None:
    from initbuild.formats.erofs.reader import ErofsReader

    plain = _build(tmp_path / "plain", "plain", "early_microcode: false\n")
    split = _build(tmp_path / "split", "initoverlayfs")
    cpio = CpioReader(plain / f"initramfs-{kver}.img")
    erofs = ErofsReader(split / f"initoverlayfs-{kver}.img")
    a = _tree(list(cpio.members()), cpio.read)
    b = _tree(list(erofs.members()), erofs.read)
    assert a == b
    assert "/init" in a and "/usr/bin/busybox" in a


def test_stage_one_holds_only_what_stage_one_needs(tmp_path: Path, kver: str) -> None:
    out = _build(tmp_path / "o", "initoverlayfs")
    stage1 = out / f"initramfs-{kver}.img"
    assert stage1.stat().st_size <= 2_000_000
    paths = {m.path for m in CpioReader(stage1).members()}
    kos = {p.rsplit("/", 1)[-1] for p in paths if p.endswith(".ko")}
    assert {"erofs.ko", "overlay.ko", "loop.ko", "virtio_blk.ko"} <= kos
    assert "/init" in paths and "/etc/initoverlayfs.conf" in paths
    assert not any("/hooks/" in p for p in paths)  # stage two's hooks stay in stage two


def test_default_profile_is_initoverlayfs() -> None:
    assert load_profile(None).mode is Mode.INITOVERLAYFS

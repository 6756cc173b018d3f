"""End-to-end builds from the host (no VM): reproducibility, GNU cpio as oracle, outputs contract."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest
from oracles import CLI_DECOMPRESS

from initbuild.build import Collected, build, collect, make_plan
from initbuild.config import load_profile, load_profile_text
from initbuild.errors import ConfigError
from initbuild.formats.compress import Compression, detect
from initbuild.formats.cpio.reader import CpioReader
from initbuild.formats.inspect import open_image, unpack
from initbuild.formats.member import Member
from initbuild.manifest import Kind
from initbuild.profile import HostOnly, Mode
from initbuild.resolve.kmod import KernelModules
from initbuild.resources import module_dirs
from initbuild.run import have_tool, run
from initbuild.sysroot import Sysroot, strip_compression


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _outputs(d: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(d.iterdir()) if p.name != "build.json"}


def _build(outdir: Path, kver: str, mode: str = "initoverlayfs", extra: str = "") -> Path:
    profile = load_profile_text(f"mode: {mode}\nkernel: {kver}\nhostonly: no\n{extra}", "test.yaml")
    build(profile, outdir, force=True)
    return outdir


@pytest.mark.parametrize("epoch", [None, "1700000000"])
@pytest.mark.parametrize("mode", ["plain", "initoverlayfs"])
def test_builds_are_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, epoch: str | None, kver: str
) -> None:
    if epoch is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    a = _outputs(_build(tmp_path / "a", kver, mode))
    b = _outputs(_build(tmp_path / "b", kver, mode))
    assert a == b
    assert len(a) == (1 if mode == "plain" else 3)


def test_source_date_epoch_is_the_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kver: str
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    out = _build(tmp_path / "o", kver, "plain")
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
def test_gnu_cpio_extracts_the_manifest(tmp_path: Path, compression: str, kver: str) -> None:
    profile = load_profile_text(
        f"mode: plain\nkernel: {kver}\nhostonly: no\ncompression: {compression}\nearly_microcode: false\n",
        "t.yaml",
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
            if e.data is not None:
                want = e.data
            else:  # a kernel module of 6.12 is its .ko.xz decompressed
                assert e.source is not None
                want = sysroot.read_decompressed(e.source) if e.decompress else sysroot.read_bytes(e.source)
            assert p.read_bytes() == want, e.path
        elif e.kind is Kind.SYMLINK:
            assert os.readlink(p) == e.target, e.path
        elif e.kind is Kind.DIR:
            assert stat.S_ISDIR(st.st_mode), e.path
        elif e.kind is Kind.CHAR:
            assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == e.rdev, e.path


def test_outputs_are_refused_without_force_and_no_temp_files_remain(tmp_path: Path, kver: str) -> None:
    profile = load_profile(None, {"kernel": kver, "hostonly": HostOnly.NO})
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
    out = _build(tmp_path / "o", kver, "initoverlayfs", extra)
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

    plain = _build(tmp_path / "plain", kver, "plain", "early_microcode: false\n")
    split = _build(tmp_path / "split", kver, "initoverlayfs")
    cpio = CpioReader(plain / f"initramfs-{kver}.img")
    erofs = ErofsReader(split / f"initoverlayfs-{kver}.img")
    a = _tree(list(cpio.members()), cpio.read)
    b = _tree(list(erofs.members()), erofs.read)
    assert a == b
    assert "/init" in a and "/usr/bin/busybox" in a


def test_stage_one_holds_only_what_stage_one_needs(tmp_path: Path, kver: str) -> None:
    out = _build(tmp_path / "o", kver, "initoverlayfs")
    stage1 = out / f"initramfs-{kver}.img"
    assert stage1.stat().st_size <= 2_500_000  # 6.12's: 2.25 MB (bigger modules, stored decompressed)
    paths = {m.path for m in CpioReader(stage1).members()}
    kos = {p.rsplit("/", 1)[-1] for p in paths if p.endswith(".ko")}
    assert {"erofs.ko", "overlay.ko", "virtio_blk.ko"} <= kos
    # an image file is attached through a loop device, or mounted by the file-backed mount program
    assert "loop.ko" in kos or "/usr/lib/initbuild/mount-file" in paths
    assert "/init" in paths and "/etc/initoverlayfs.conf" in paths
    assert not any("/hooks/" in p for p in paths)  # stage two's hooks stay in stage two


def test_default_profile_is_initoverlayfs() -> None:
    assert load_profile(None).mode is Mode.INITOVERLAYFS


# -- kernel modules are stored decompressed (Linux 6.12 ships .ko.xz) -------------------------------
FIXTURES = Path(__file__).resolve().parent / "modules_fixtures"
COMPRESSED_MODULE = (".ko.xz", ".ko.zst", ".ko.gz")


@pytest.fixture(scope="module")
def built_modules(tmp_path_factory: pytest.TempPathFactory, kver: str) -> dict[str, object]:
    """One initoverlayfs and one plain build of `kver`, with the binary module indexes in stage two."""
    out = tmp_path_factory.mktemp("modules")
    text = f"kernel: {kver}\nhostonly: no\nmodules: [binindex]\n"
    dirs = [*module_dirs(), FIXTURES / "binindex"]
    result: dict[str, object] = {}
    for mode in ("initoverlayfs", "plain"):
        profile = load_profile_text(f"mode: {mode}\n{text}", "test.yaml")
        build(profile, out / mode, force=True, modules_dirs=dirs)
        plan, sysroot = make_plan(profile, modules_dirs=dirs)
        result[mode] = collect(plan, sysroot)
    result["images"] = {
        "stage one": out / "initoverlayfs" / f"initramfs-{kver}.img",
        "stage two": out / "initoverlayfs" / f"initoverlayfs-{kver}.img",
        "plain": out / "plain" / f"initramfs-{kver}.img",
    }
    return result


def test_images_hold_kernel_modules_decompressed(built_modules: dict[str, object], kver: str) -> None:
    """No manifest and no image holds a compressed module: each is its source decompressed (the xz,
    zstd or gzip CLI is the oracle), named .ko, and the module indexes and /init name the .ko files."""
    manifests = []
    for mode in ("initoverlayfs", "plain"):
        col = built_modules[mode]
        assert isinstance(col, Collected)
        manifests += [col.stage2.manifest] + ([col.stage1.manifest] if col.stage1 else [])
    sources = {}
    for manifest in manifests:
        kos = [e for e in manifest.entries.values() if e.path.endswith(".ko")]
        assert kos and not [e.path for e in manifest.entries.values() if e.path.endswith(COMPRESSED_MODULE)]
        sources.update({e.path: e for e in kos})
    images = built_modules["images"]
    assert isinstance(images, dict)
    for what, image in images.items():
        reader = open_image(image)
        members = {m.path: m for m in reader.members()}
        assert not [p for p in members if p.endswith(COMPRESSED_MODULE)], what
        kos = [m for m in members.values() if m.path.endswith(".ko")]
        assert len(kos) >= 3, what
        for m in kos:
            entry = sources[m.path]
            assert entry.source is not None
            want = Path(entry.source).read_bytes()
            if entry.source.endswith((".xz", ".zst", ".gz")):
                assert entry.decompress
                want = run(CLI_DECOMPRESS[detect(want)], input=want).stdout  # xz -dc, zstd -dc, gzip -dc
            assert reader.read(m) == want, (what, m.path)
        assert reader.read(m).startswith(b"\x7fELF")
        for index in [p for p in members if p.endswith("/modules.dep")]:
            text = reader.read(members[index]).decode()
            assert ".ko:" in text and not any(s in text for s in COMPRESSED_MODULE), (what, index)
        # the driver table of /init: every module path it insmods is a .ko of the image
        init = reader.read(members["/init"]).decode()
        paths = set(re.findall(rf"/lib/modules/{re.escape(kver)}/[^\s'\"]*\.ko[.a-z]*", init))
        assert paths, what
        for p in paths:
            assert p.endswith(".ko"), (what, p)
            assert p in members or p.replace("/lib/", "/usr/lib/", 1) in members, (what, p)


@pytest.mark.skipif(not have_tool("modprobe") or not have_tool("depmod"), reason="kmod is not installed")
def test_kmod_modprobe_in_stage_two_resolves_like_the_installed_tree(
    built_modules: dict[str, object], kver: str, tmp_path: Path
) -> None:
    """kmod's modprobe reads only the binary indexes: over an unpacked stage two it resolves every
    module of the image as `modprobe -S KVER` does over the installed tree (the oracle): the same
    modules and builtins, the module asked for last. Independent modules may come in another order
    (depmod sorts the subset on its own), but each after its dependencies."""
    images = built_modules["images"]
    assert isinstance(images, dict)
    root = tmp_path / "root"
    unpack(open_image(images["stage two"]), root)
    dep = (
        next(root.glob(f"*/lib/modules/{kver}/modules.dep"), None) or root / f"lib/modules/{kver}/modules.dep"
    )
    assert {"modules.dep.bin", "modules.alias.bin", "modules.symbols.bin"} <= {
        p.name for p in dep.parent.iterdir()
    }
    names = [
        line.split(":")[0].rsplit("/", 1)[-1].removesuffix(".ko") for line in dep.read_text().splitlines()
    ]
    kmods = KernelModules(Sysroot("/"), kver)
    compared = 0
    for name in [*names, "fs-ext4", "virtio:d00000002v00001AF4"]:
        oracle = run(["modprobe", "-S", kver, "--show-depends", name], check=False)
        ours = run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", name], check=False)
        assert ours.returncode == oracle.returncode, (name, ours.stderr)
        if oracle.returncode:
            continue
        want = [strip_compression(line.strip()) for line in oracle.stdout.decode().splitlines()]
        got = [line.strip().replace(str(root), "", 1) for line in ours.stdout.decode().splitlines()]
        assert sorted(got) == sorted(want) and got[-1:] == want[-1:], name
        loaded: set[str] = set()
        for line in got:  # a load order: every module after its dependencies
            if line.startswith("insmod "):
                mod = kmods.kmod(Path(line.split()[1]).name.removesuffix(".ko"))
                assert set(mod.deps) <= loaded, (name, mod.name)
                loaded.add(mod.name)
        compared += 1
    assert compared >= 10, compared


@pytest.mark.parametrize("path", ["native", "python"])
def test_build_json_says_which_lz4_wrote_stage_two(
    tmp_path: Path, kver: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native fixed-output LZ4 (system liblz4 through ctypes) or the python-lz4 emulation: both
    write valid images, and build.json records which one ran."""
    from initbuild.formats.erofs import lz4native

    if path == "native" and lz4native.load() is None:
        pytest.skip("no usable system liblz4 (liblz4-1 >= 1.9.3)")
    monkeypatch.setenv("INITBUILD_LZ4", path)
    out = _build(tmp_path / "out", kver)
    report = json.loads((out / "build.json").read_text())
    expected = "liblz4" if path == "native" else "python-lz4"
    assert report["stage2_compressor"].startswith(expected), report

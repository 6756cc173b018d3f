"""stage2.verity and the UKI output, built from the host (no VM): cryptsetup's veritysetup, sbverify and
the PE reader are the oracles; the boots are tests/vm/test_verity.py.

A verity build writes stage two, appends its hash tree, and only then collects stage one, which bakes
in the root hash (/etc/initbuild/verity.conf), the device-mapper program and requests, and dm-mod and
dm-verity; build.json records the tree. Two builds are byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from initbuild.build import OutputKind, build, pid1_files, shared_files
from initbuild.config import load_profile_text
from initbuild.errors import ConfigError, ResolveError
from initbuild.formats import uki
from initbuild.formats.cpio.reader import CpioReader
from initbuild.formats.inspect import find, open_image
from initbuild.formats.verity import verify_image
from initbuild.manifest import Entry, Kind, Manifest
from initbuild.run import have_tool

CLI = [sys.executable, "-m", "initbuild"]
VERITY = "stage2: {verity: true}\n"
needs_veritysetup = pytest.mark.skipif(not have_tool("veritysetup"), reason="cryptsetup-bin not installed")
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
needs_stub = pytest.mark.skipif(not STUB.exists(), reason="systemd-boot-efi not installed")


def _build(outdir: Path, kver: str, extra: str = VERITY) -> dict[str, object]:
    build(load_profile_text(f"kernel: {kver}\nhostonly: no\n{extra}", "test.yaml"), outdir, force=True)
    data: dict[str, object] = json.loads((outdir / "build.json").read_text())
    return data


def _path(outdir: Path, report: dict[str, object], kind: str) -> Path:
    outputs = report["outputs"]
    assert isinstance(outputs, list)
    return outdir / next(o["path"] for o in outputs if o["kind"] == kind)


def _veritysetup_verify(image: Path, v: dict[str, object]) -> subprocess.CompletedProcess[str]:
    argv = [
        "veritysetup",
        "verify",
        str(image),
        str(image),
        str(v["root_hash"]),
        f"--hash-offset={v['hash_offset']}",
    ]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def verity_build(tmp_path_factory: pytest.TempPathFactory, kver: str) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("verity") / "out"
    return out, _build(out, kver)


@needs_veritysetup
def test_veritysetup_accepts_the_tree_and_the_recorded_root_hash(
    verity_build: tuple[Path, dict[str, object]],
) -> None:
    out, report = verity_build
    v = report["verity"]
    assert isinstance(v, dict)
    image = _path(out, report, "stage2")
    cp = _veritysetup_verify(image, v)
    assert cp.returncode == 0, cp.stderr
    assert v["hash_offset"] == v["data_blocks"] * 4096 and v["hash_start_block"] == v["data_blocks"] + 1
    verify_image(image, bytes.fromhex(str(v["root_hash"])))  # our own reader agrees
    # another root hash is refused: the oracle really checks it
    assert _veritysetup_verify(image, {**v, "root_hash": "00" * 32}).returncode != 0


def test_stage_one_carries_the_root_hash_and_the_means_to_use_it(
    verity_build: tuple[Path, dict[str, object]], kver: str
) -> None:
    out, report = verity_build
    v = report["verity"]
    assert isinstance(v, dict)
    stage1 = open_image(_path(out, report, "initramfs"))
    conf = dict(
        line.split(" ", 1)
        for line in stage1.read(find(stage1, "/etc/initbuild/verity.conf")).decode().splitlines()
        if line and not line.startswith("#")
    )
    assert conf["roothash"] == v["root_hash"] and conf["salt"] == v["salt"]
    assert (
        int(conf["data_blocks"]) == v["data_blocks"]
        and int(conf["hash_start_block"]) == v["hash_start_block"]
    )
    assert conf["preread"] == "/init /usr/bin/busybox"  # stage two's PID 1: its script and its shell
    # ... whose shell stage one holds too (the same sysroot file): it binds its own copy over it
    assert stage1.read(find(stage1, "/etc/initbuild/shared")) == b"/usr/bin/busybox\n"
    paths = {m.path for m in stage1.members()}
    assert {
        "/usr/lib/initbuild/dm-ioctl",
        "/usr/lib/initbuild/dm/create",
        "/usr/lib/initbuild/dm/load",
    } <= paths
    names = {os.path.basename(p).split(".")[0] for p in paths if ".ko" in p}
    assert {"dm-mod", "dm-verity", "loop"} <= names
    assert "/usr/lib/initbuild/mount-file" not in paths  # a file-backed mount cannot be verified
    assert "attach loop+verity\n" in (out / "initoverlayfs.conf").read_text()


def test_verity_builds_are_byte_identical_and_the_salt_can_be_given(tmp_path: Path, kver: str) -> None:
    def outputs(d: Path) -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.name != "build.json"
        }

    a, b = _build(tmp_path / "a", kver), _build(tmp_path / "b", kver)
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b") and a["verity"] == b["verity"]
    salted = _build(tmp_path / "c", kver, "stage2: {verity: true, verity_salt: 'c0ffee'}\n")
    assert isinstance(salted["verity"], dict) and salted["verity"]["salt"] == "c0ffee"
    assert salted["verity"]["root_hash"] != a["verity"]["root_hash"]  # type: ignore[index]
    plain = _build(tmp_path / "d", kver, "")
    assert "verity" not in plain
    assert "verity.conf" not in " ".join(
        m.path for m in open_image(_path(tmp_path / "d", plain, "initramfs")).members()
    )


@needs_veritysetup
def test_a_250_mb_stage_two(tmp_path: Path, kver: str) -> None:
    """A three-level tree (61k data blocks): veritysetup accepts it; the build says what the tree cost."""
    payload = tmp_path / "payload"
    payload.mkdir()
    rng = hashlib.sha256(b"initbuild")
    for i in range(25):  # 25 x 10 MB of incompressible data
        with open(payload / f"blob{i:02d}", "wb") as f:
            for _ in range(10 * 1024 * 1024 // 32 // 1024):
                chunk = b"".join((rng := hashlib.sha256(rng.digest())).digest() for _ in range(1024))
                f.write(chunk)
    extra = f"stage2: {{verity: true, compression: none}}\nfiles: [{{source: {payload}, dest: /payload}}]\n"
    report = _build(tmp_path / "out", kver, extra)
    v = report["verity"]
    assert isinstance(v, dict) and int(str(v["data_blocks"])) * 4096 > 250_000_000
    cp = _veritysetup_verify(_path(tmp_path / "out", report, "stage2"), v)
    assert cp.returncode == 0, cp.stderr
    steps = [t["step"] for t in report["timings"]]  # type: ignore[attr-defined]
    assert "appending the dm-verity hash tree to stage two" in steps


# -- profile errors -------------------------------------------------------------------------------


def test_verity_on_a_kernel_without_dm_verity_is_a_located_error(tmp_path: Path) -> None:
    from test_kernel_checks import KVER, _plan, _sysroot

    root = _sysroot(tmp_path, ("CONFIG_DM_VERITY=",))
    profile = tmp_path / "p.yaml"
    profile.write_text("mode: initoverlayfs\nstage2:\n  verity: true\n")
    cp = _plan(root, profile)
    assert cp.returncode == 2, cp.stderr
    assert f"{profile}:3:11: stage2.verity: kernel {KVER} has no dm-verity (CONFIG_DM_VERITY" in cp.stderr
    profile.write_text("mode: initoverlayfs\nstage2:\n  verity: false\n")
    assert _plan(root, profile).returncode == 0


def test_omitting_the_verity_module_never_builds_an_unverified_stage_two(kver: str) -> None:
    from initbuild.build import make_plan

    with pytest.raises(ConfigError, match="no 'verity' module"):
        make_plan(
            load_profile_text(f"kernel: {kver}\nhostonly: no\nomit_modules: [verity]\n{VERITY}", "p.yaml")
        )


# -- the stage-two files PID 1 runs from ----------------------------------------------------------


def test_pid1_files_follow_the_images_symlinks() -> None:
    m = Manifest()
    m.add(Entry("/init", Kind.FILE, 0o755, data=b"#!/bin/sh\necho\n"))
    m.add(Entry("/bin", Kind.SYMLINK, 0o777, target="usr/bin"))
    m.add(Entry("/usr/bin/sh", Kind.SYMLINK, 0o777, target="../lib/../bin/busybox"))
    m.add(Entry("/usr/bin/busybox", Kind.FILE, 0o755, data=b"\x7fELF"))
    assert pid1_files(m) == ("/init", "/usr/bin/busybox")
    assert m.resolve("/bin/sh") == "/usr/bin/busybox" and m.resolve("/bin") is None
    loop = Manifest()
    loop.add(Entry("/init", Kind.SYMLINK, 0o777, target="/init"))
    assert pid1_files(loop) == ()


def test_shared_files_only_the_same_sysroot_file_at_the_same_path() -> None:
    def stage(busybox: Entry, link: bool = True) -> Manifest:
        m = Manifest()
        m.add(Entry("/init", Kind.FILE, 0o755, data=b"#!/bin/sh\necho\n"))
        if link:
            m.add(Entry("/bin", Kind.SYMLINK, 0o777, target="usr/bin"))
            m.add(Entry("/usr/bin/sh", Kind.SYMLINK, 0o777, target="busybox"))
        m.add(busybox)
        return m

    def bb(source: str | None = "/usr/bin/busybox", data: bytes | None = None) -> Entry:
        return Entry("/usr/bin/busybox", Kind.FILE, 0o755, source=source, data=data)

    two = stage(bb())
    assert shared_files(stage(bb()), two) == ("/usr/bin/busybox",)
    assert shared_files(stage(bb("/usr/lib/other/busybox")), two) == ()  # another file
    assert shared_files(stage(bb(None, b"\x7fELF")), two) == ()  # generated, not the sysroot's
    alone = Manifest()
    alone.add(Entry("/init", Kind.FILE, 0o755, data=b"#!/bin/sh\n"))
    assert shared_files(alone, two) == ()  # stage one has no busybox


# -- the Unified Kernel Image ---------------------------------------------------------------------


@needs_stub
def test_uki_output_holds_stub_kernel_stage_one_and_cmdline(tmp_path: Path, kver: str) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(f"kernel: {kver}\nhostonly: no\n{VERITY}uki: {{cmdline: 'root=LABEL=root ro'}}\n")
    out = tmp_path / "out"
    cp = subprocess.run(
        [*CLI, "-q", "build", str(profile), "--uki", "-o", str(out)], capture_output=True, text=True
    )
    assert cp.returncode == 0, cp.stderr
    report = json.loads((out / "build.json").read_text())
    efi = _path(out, report, OutputKind.UKI)
    assert efi.name == f"initbuild-{kver}.efi"
    data = efi.read_bytes()
    stage1 = _path(out, report, "initramfs").read_bytes()
    assert uki.extract_section(data, ".initrd") == stage1
    assert uki.extract_section(data, ".linux") == Path(f"/boot/vmlinuz-{kver}").read_bytes()
    assert uki.extract_section(data, ".cmdline") == b"root=LABEL=root ro"
    assert uki.extract_section(data, ".uname") == kver.encode()
    assert uki.extract_section(data, ".osrel") == Path("/etc/os-release").read_bytes()
    # `initbuild ls` lists the sections, then the embedded stage one with its baked root hash
    ls = subprocess.run([*CLI, "ls", str(efi)], capture_output=True, text=True, check=True).stdout
    assert ls.startswith("Unified Kernel Image, ") and "  .initrd " in ls and "  .linux " in ls
    assert " /etc/initbuild/verity.conf\n" in ls and " /init\n" in ls
    js = json.loads(subprocess.run([*CLI, "ls", "--json", str(efi)], capture_output=True, check=True).stdout)
    assert [s["name"] for s in js["sections"]][-2:] == [".initrd", ".linux"]
    assert {m["path"] for m in js["initrd"]} == {
        m.path for m in CpioReader(_path(out, report, "initramfs")).members()
    }
    # reproducible
    again = tmp_path / "again"
    subprocess.run(
        [*CLI, "-q", "build", str(profile), "--uki", "-o", str(again)], check=True, capture_output=True
    )
    assert (again / efi.name).read_bytes() == data


@needs_stub
@pytest.mark.skipif(
    not (have_tool("sbsign") and have_tool("sbverify") and have_tool("openssl")), reason="sbsigntool"
)
def test_uki_signed_with_the_profiles_key(tmp_path: Path, kver: str) -> None:
    key, cert = tmp_path / "db.key", tmp_path / "db.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=initbuild test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    out = tmp_path / "out"
    extra = f"{VERITY}uki: {{enabled: true, key: {key}, cert: {cert}}}\n"
    report = _build(out, kver, extra)
    efi = _path(out, report, "uki")
    cp = subprocess.run(["sbverify", "--cert", str(cert), str(efi)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert next(o for o in report["outputs"] if o["kind"] == "uki")["compression"] == "signed"  # type: ignore[union-attr]
    assert uki.extract_section(efi.read_bytes(), ".initrd") == _path(out, report, "initramfs").read_bytes()


def test_uki_without_its_stub_is_a_located_error(tmp_path: Path, kver: str) -> None:
    text = f"kernel: {kver}\nuki:\n  enabled: true\n  stub: /nonexistent/linuxx64.efi.stub\n"
    with pytest.raises(
        ResolveError, match="uki: the UEFI stub /nonexistent/linuxx64.efi.stub is not in"
    ) as e:
        build(load_profile_text(text, "p.yaml"), tmp_path / "out", force=True)
    assert e.value.location is not None and e.value.location.line == 4
    assert not (tmp_path / "out" / f"initbuild-{kver}.efi").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_salt_longer_than_the_superblock_holds() -> None:
    with pytest.raises(ConfigError, match=r"stage2.verity_salt: 257 bytes is too long \(at most 256\)"):
        load_profile_text(f"stage2: {{verity: true, verity_salt: '{'ab' * 257}'}}\n", "p.yaml")

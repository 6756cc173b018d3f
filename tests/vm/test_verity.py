"""Authenticated stage two under QEMU, on each installed kernel: dm-verity and the Unified Kernel Image.

stage2.verity appends a hash tree to stage two and bakes its root hash into stage one, which maps the
image through dm-verity (modules.d/25verity) before mounting it. The kernel is the oracle: a verified
boot reaches the real root; one flipped byte in stage two's data (inside /init, which stage two's
PID 1 runs), in its metadata (the EROFS superblock) or in the hash tree ends in
`initbuild: FATAL: stage two failed verification (...)` within 10 guest seconds, powered off by the
panic policy, with no kernel panic. Those boots run under -icount from virtio-pmem disks, as
test_boot.py's failure boots do. A UKI (systemd-stub + kernel + stage one + .cmdline) boots under
OVMF to the real root with the command line it carries.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from initbuild.boot.disks import make_ext4, make_root_tree
from initbuild.boot.harness import PMEM_ALIGN, VM, Disk, boot, marker
from initbuild.formats.erofs.reader import ErofsReader
from initbuild.formats.inspect import open_image

from .conftest import kernel_option
from .test_boot import (
    OVERLAY,
    PMEM,
    ROOT_ARGS,
    ROOT_UUID,
    Built,
    _assert_diagnosed,
    _assert_reached_real_root,
    _boot,
    _fail_boot,
)
from .test_boot import _build as build_profile

pytestmark = pytest.mark.vm

VERITY = OVERLAY.format(compression="lz4") + "stage2: {verity: true}\n"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
VERIFY_FAILED = (
    r"FATAL: stage two failed verification \(device-mapper: verity: [0-9:]+: {kind} block \d+ is corrupted\)"
)


def _verity(built: Built) -> dict[str, int | str]:
    data: dict[str, int | str] = json.loads((built.outdir / "build.json").read_text())["verity"]
    return data


def _assert_verified_attach(res_console: str) -> None:
    assert "stage two verified by dm-verity: /dev/dm-0 over /dev/loop0" in res_console
    assert "(loop+verity)" in res_console and "stage two mounted (attach=loop+verity)" in res_console
    assert "attach=file" not in res_console  # 6.12 mounts files, but a file cannot be verified


@pytest.fixture(scope="module")
def verity_overlay(tmp_path_factory: pytest.TempPathFactory, kver: str) -> Built:
    return build_profile(tmp_path_factory.mktemp("verity") / "out", VERITY, kver)


def test_verified_boot_reaches_the_real_root(
    tmp_path: Path, kver: str, kernel: Path, verity_overlay: Built, log_dir: Path
) -> None:
    tree = make_root_tree(tmp_path / "rootfs")
    image = verity_overlay.path("stage2")
    shutil.copy(image, tree / "boot" / image.name)
    disk = make_ext4(tree, tmp_path / "root.img", label="root")
    roothash = _verity(verity_overlay)["root_hash"]
    args = f"{ROOT_ARGS} initbuild.roothash={roothash}"  # pinned on the command line too: the same hash
    res = _boot(kernel, verity_overlay.path("initramfs"), args, log_dir, "verity", disks=(Disk(disk),))
    _assert_reached_real_root(res)
    _assert_verified_attach(res.console)
    assert f"root hash {roothash}" in res.console
    assert "FATAL" not in res.console and "is corrupted" not in res.console, res.explain()
    assert "stage two runs stage one's /usr/bin/busybox" in res.console, res.explain()
    # the conf says so too (6.12 included, whose kernel would mount the file without a loop device)
    conf = (verity_overlay.outdir / "initoverlayfs.conf").read_text()
    assert "attach loop+verity\n" in conf
    stage_one = [m.path for m in open_image(verity_overlay.path("initramfs")).members()]
    assert "/usr/lib/initbuild/mount-file" not in stage_one
    if kernel_option(kver, "CONFIG_EROFS_FS_BACKED_BY_FILE") == "y":
        assert "initbuild: attach=file" not in res.console


# -- tampering: a diagnosis within 10 guest seconds, no panic, no silent success -------------------


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _init_data(image: Path) -> int:
    """A byte inside the data of stage two's /init, the script its PID 1 runs (stage one reads it
    through dm-verity before handing over). PID 1's program itself, busybox, is stage one's own copy
    (ib_share): stage two's is never read, so a flipped byte there changes nothing."""
    with ErofsReader(image) as r:
        init = r.lookup("/init")
        text = r.read(init)
        where = image.read_bytes().find(text[:512])  # stored as is (plain or inline)
        if where >= 0:
            return where + min(100, len(text) - 1)
        extents = r.extents(r.inode(init.ino))
        return extents[0].pblk * 4096 + 100


TAMPER: dict[str, tuple[str, Callable[[Path, dict[str, int | str]], int]]] = {
    # what is flipped: (the block kind the kernel names, where)
    "data": ("data", lambda image, v: _init_data(image)),
    "metadata": ("data", lambda image, v: 1024 + 8),  # the EROFS superblock (dm-verity data block 0)
    "hash-tree": ("metadata", lambda image, v: int(v["hash_start_block"]) * 4096 + 5),  # top hash block
}


@pytest.fixture(scope="module")
def verity_pmem(tmp_path_factory: pytest.TempPathFactory, kver: str) -> Built:
    return build_profile(tmp_path_factory.mktemp("verity-pmem") / "out", VERITY + PMEM, kver)


@pytest.fixture(scope="module")
def tampered_disk(tmp_path_factory: pytest.TempPathFactory, verity_pmem: Built) -> Path:
    """The real root on a virtio-pmem disk, with stage two and one tampered copy per TAMPER case."""
    tree = make_root_tree(tmp_path_factory.mktemp("rootfs-verity"))
    image = verity_pmem.path("stage2")
    v = _verity(verity_pmem)
    shutil.copy(image, tree / "boot" / image.name)
    for name, (_, where) in TAMPER.items():
        copy = tree / "boot" / f"{name}.img"
        shutil.copy(image, copy)
        offset = where(image, v)
        assert offset < int(v["hash_offset"]) or name == "hash-tree"
        _flip(copy, offset)
    disk = tmp_path_factory.mktemp("disk-verity") / "root.img"
    return make_ext4(tree, disk, label="root", uuid=ROOT_UUID, align=PMEM_ALIGN)


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_stage_two_is_diagnosed(
    case: str, kernel: Path, verity_pmem: Built, tampered_disk: Path, log_dir: Path
) -> None:
    kind = TAMPER[case][0]
    extra = f"initbuild.fs=/boot/{case}.img"
    res = _fail_boot(kernel, verity_pmem.path("initramfs"), extra, tampered_disk, log_dir, f"verity-{case}")
    _assert_diagnosed(res, VERIFY_FAILED.format(kind=kind))
    assert "switching to stage two" not in res.console, res.explain()  # stopped before handing over
    assert "real-root" not in res.markers, res.explain()


def test_roothash_on_the_command_line_must_match(
    kernel: Path, verity_pmem: Built, tampered_disk: Path, log_dir: Path
) -> None:
    """initbuild.roothash= pins stage two (e.g. from a signed UKI's .cmdline): another hash stops the boot."""
    wrong = "ab" * 32
    res = _fail_boot(
        kernel, verity_pmem.path("initramfs"), f"initbuild.roothash={wrong}", tampered_disk, log_dir,
        "verity-roothash",
    )  # fmt: skip
    baked = _verity(verity_pmem)["root_hash"]
    _assert_diagnosed(
        res, rf"initbuild.roothash={wrong} is not the root hash of stage two baked into stage one \({baked}\)"
    )


# -- the Unified Kernel Image ----------------------------------------------------------------------


@pytest.mark.skipif(not (OVMF.exists() and STUB.exists()), reason="needs ovmf and systemd-boot-efi")
def test_uki_boots_under_ovmf_to_the_real_root(
    tmp_path: Path, kver: str, kernel: Path, log_dir: Path
) -> None:
    """systemd-stub starts the kernel with stage one from .initrd and the command line from .cmdline
    (QEMU gets no -append): the whole chain, with the root hash pinned on the signed command line."""
    probe = build_profile(tmp_path / "probe", VERITY, kver)
    roothash = _verity(probe)["root_hash"]
    cmdline = f"console=ttyS0 panic=-1 {ROOT_ARGS} initbuild.roothash={roothash}"
    built = build_profile(tmp_path / "out", VERITY + f'uki: {{enabled: true, cmdline: "{cmdline}"}}\n', kver)
    assert _verity(built)["root_hash"] == roothash  # reproducible: the pinned hash is the built one
    tree = make_root_tree(tmp_path / "rootfs")
    image = built.path("stage2")
    shutil.copy(image, tree / "boot" / image.name)
    disk = make_ext4(tree, tmp_path / "root.img", label="root")
    vm = VM(
        kernel=built.path("uki"),
        bios=OVMF,
        machine="q35",
        disks=(Disk(disk),),
        timeout=600,
        expect=(marker("real-root"),),
    )
    res = boot(vm, log_path=log_dir / f"uki-{kver}.log")
    assert "-append" not in res.argv and "-bios" in res.argv
    _assert_reached_real_root(res)
    _assert_verified_attach(res.console)
    assert f"Kernel command line: {cmdline}" in res.console, res.explain()

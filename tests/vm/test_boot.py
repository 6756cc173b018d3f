"""Boot what initbuild builds under QEMU: the kernel is the oracle.

Plain initramfs (issue: foundation): kernel -> /init -> the test module's marker.
initoverlayfs (issue: split boot): kernel -> stage one -> stage two (EROFS + overlay) -> real root,
whose /sbin/init prints the final marker; bootfs by LABEL and UUID, stage two on its own disk,
lz4 and zstd stage one. Failure cases must name what failed, with no kernel panic, within 10 s of
guest time: those boots run under -icount from virtio-pmem disks, where guest time counts
instructions and no host I/O latency leaks in, so the bound holds on any host, however busy.

Every test runs on each installed kernel (tests/vm/conftest.py) and waits for the exact marker it
asserts (harness.marker), never for the first marker that appears.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from initbuild.boot.disks import make_ext4, make_root_tree, partitioned_disk
from initbuild.boot.harness import PMEM_ALIGN, VM, BootResult, Disk, boot, marker
from initbuild.build import BuildReport, build
from initbuild.config import load_profile_text
from initbuild.formats.inspect import open_image
from initbuild.resources import shipped_modules_dir

from .conftest import kernel_option

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
ROOT_UUID = "6a1b2c3d-0000-4000-8000-00000000beef"
FAIL_TIMEOUT = 10.0  # guest seconds within which a failure must be diagnosed


@dataclass
class Built:
    outdir: Path
    report: BuildReport

    def path(self, kind: str) -> Path:
        return self.outdir / self.report.output(kind).path


def _build(outdir: Path, text: str, kver: str, *, modules_dirs: list[Path] | None = None) -> Built:
    profile = load_profile_text(f"kernel: {kver}\nhostonly: no\n{text}", str(outdir / "profile.yaml"))
    report = build(profile, outdir, force=True, modules_dirs=modules_dirs)
    return Built(outdir, report)


PLAIN = """
mode: plain
modules: [test]
compression: {compression}
"""

OVERLAY = """
mode: initoverlayfs
modules: [test]
compression: {compression}
overlay:
  bootfs: LABEL=root
  bootfstype: ext4
  fs: /boot/initoverlayfs-{{kver}}.img
  timeout: 5
"""


def _boot(
    kernel: Path,
    initrd: Path,
    append: str,
    log_dir: Path,
    name: str,
    *,
    until: str = "real-root",
    **kw: object,
) -> BootResult:
    """Boot until the marker `until` (the one the test asserts) has been printed."""
    vm = VM(kernel=kernel, initrd=initrd, append=append, timeout=300, expect=(marker(until),), **kw)  # type: ignore[arg-type]
    name = f"{name}-{kernel.name.removeprefix('vmlinuz-')}"
    return boot(vm, log_path=log_dir / f"{name}.log")


# -- plain initramfs -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_plain_initramfs_boots_to_test_marker(
    tmp_path: Path, kver: str, kernel: Path, log_dir: Path, compression: str
) -> None:
    built = _build(tmp_path / "out", PLAIN.format(compression=compression), kver)
    res = _boot(
        kernel,
        built.path("initramfs"),
        "initbuild.test=plain initbuild.panic=poweroff",
        log_dir,
        f"plain-{compression}",
        until="stage-two-plain",
    )
    assert res.ok, res.explain()
    assert "stage-two-plain" in res.markers, res.explain()
    assert "initbuild: [" in res.console or "stage two started (plain initramfs)" in res.console
    assert "Initramfs unpacking failed" not in res.console, res.explain()


def test_profile_cmdline_is_baked_in(tmp_path: Path, kver: str, kernel: Path, log_dir: Path) -> None:
    # regression: /etc/cmdline.d/*.conf was globbed under `set -f` and never read
    text = PLAIN.format(compression="lz4") + 'cmdline: "initbuild.test=baked initbuild.panic=poweroff"\n'
    built = _build(tmp_path / "out", text, kver)
    res = _boot(kernel, built.path("initramfs"), "", log_dir, "plain-baked", until="stage-two-baked")
    assert res.ok and "stage-two-baked" in res.markers, res.explain()


# -- initoverlayfs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory, kver: str) -> Built:
    return _build(tmp_path_factory.mktemp("overlay") / "out", OVERLAY.format(compression="lz4"), kver)


@pytest.fixture(scope="module")
def root_disk(tmp_path_factory: pytest.TempPathFactory, overlay: Built) -> Path:
    """One ext4 disk: the real root, with the stage-two image under /boot."""
    tree = make_root_tree(tmp_path_factory.mktemp("rootfs"))
    shutil.copy(overlay.path("stage2"), tree / "boot" / overlay.path("stage2").name)
    shutil.copy(overlay.path("stage2"), tree / "boot" / "corrupt.img")
    with open(tree / "boot" / "corrupt.img", "r+b") as f:
        f.seek(1024)
        f.write(b"\0" * 128)  # wipe the EROFS superblock
    return make_ext4(tree, tmp_path_factory.mktemp("disk") / "root.img", label="root", uuid=ROOT_UUID)


ROOT_ARGS = "root=LABEL=root rootfstype=ext4 initbuild.panic=poweroff"


def _boot_overlay(
    kernel: Path, overlay: Built, disk: Path, log_dir: Path, name: str, args: str, **kw: object
) -> BootResult:
    """Boot the shared initoverlayfs image from one virtio disk."""
    return _boot(kernel, overlay.path("initramfs"), args, log_dir, name, disks=(Disk(disk),), **kw)


def _assert_reached_real_root(res: BootResult) -> None:
    assert res.ok, res.explain()
    assert "real-root" in res.markers, res.explain()
    order = [s for _, s in res.steps()]
    assert any(s.startswith("stage one started") for s in order), res.explain()
    assert any(s.startswith("stage two started over initoverlayfs") for s in order), res.explain()
    assert any(s.startswith("switching to the real root") for s in order), res.explain()


def test_initoverlayfs_bootfs_by_label(
    kver: str, kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    args = f"{ROOT_ARGS} initbuild.marker=1"
    res = _boot_overlay(kernel, overlay, root_disk, log_dir, "overlay-label", args)
    _assert_reached_real_root(res)
    _assert_attach_as_the_kernel_allows(kver, overlay, res)
    # initbuild.marker: stage two reported itself, before the real root did
    assert "stage-two" in res.markers and res.markers["stage-two"][0] <= res.markers["real-root"][0]


def _root_block_devices(res: BootResult) -> list[str]:
    lines = [line for line in res.console.splitlines() if line.startswith("initbuild-root: block devices:")]
    assert lines, res.explain()
    return lines[-1].split(":", 2)[2].split()


def _assert_attach_as_the_kernel_allows(kver: str, built: Built, res: BootResult) -> None:
    """A kernel that mounts EROFS from a file (CONFIG_EROFS_FS_BACKED_BY_FILE, 6.12) gets stage two
    without any loop device: no loop.ko in stage one and no /sys/block/loop* in the booted system.
    Older kernels attach the image file through a loop device."""
    stage_one = [m.path for m in open_image(built.path("initramfs")).members()]
    if kernel_option(kver, "CONFIG_EROFS_FS_BACKED_BY_FILE") == "y":
        assert "attach=file" in res.console, res.explain()
        assert not [p for p in stage_one if p.endswith(("/loop.ko", "/loop.ko.xz"))], stage_one
        assert not [d for d in _root_block_devices(res) if d.startswith("loop")], res.explain()
    else:
        assert "(loop)" in res.console or "attach=loop" in res.console, res.explain()


def test_initbuild_drivers_all_loads_every_driver(
    kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    args = f"{ROOT_ARGS} initbuild.drivers=all initbuild.debug"
    res = _boot_overlay(kernel, overlay, root_disk, log_dir, "overlay-all", args)
    _assert_reached_real_root(res)
    # no SCSI device exists on this machine: only "all" loads the SCSI stack
    assert "loaded scsi_mod" in res.console and "loaded vfat" in res.console


def test_detection_loads_only_what_the_machine_needs(
    kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    args = f"{ROOT_ARGS} initbuild.debug"
    res = _boot_overlay(kernel, overlay, root_disk, log_dir, "overlay-detect", args)
    _assert_reached_real_root(res)
    assert "loaded virtio_blk" in res.console and "loaded erofs" in res.console
    assert "loaded scsi_mod" not in res.console and "loaded vfat" not in res.console
    # the CPU-accelerated module-signature hash (modules.d/05modsign) is the first module loaded
    loaded = [
        line.split("initbuild: ", 1)[1] for line in res.console.splitlines() if "initbuild: loaded " in line
    ]
    assert loaded and loaded[0].startswith("loaded sha256_ssse3 (first"), loaded[:3]


def test_q35_machine_boots_the_same_image(
    kver: str, kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    """The harness's q35 machine (PCIe, ICH9): the same image reaches the real root through the same
    virtio drivers, and virtio_pci no longer pays i440fx's AML interrupt-routing loop."""
    args = f"{ROOT_ARGS} initbuild.debug"
    res = _boot_overlay(kernel, overlay, root_disk, log_dir, "overlay-q35", args, machine="q35")
    _assert_reached_real_root(res)
    assert "-machine q35" in res.command()
    assert "loaded erofs" in res.console
    if kernel_option(kver, "CONFIG_VIRTIO_PCI") == "m":  # 6.12 builds it in
        assert "loaded virtio_pci" in res.console, res.explain()


@pytest.mark.parametrize("table", ["gpt", "mbr"])
def test_initoverlayfs_by_partuuid_and_partlabel(
    table: str, tmp_path: Path, kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    """bootfs and root named by partition (disks.partitioned_disk writes the table; the kernel parses
    it): GPT by PARTLABEL and PARTUUID (a GUID), MBR by PARTUUID (disk signature-partition)."""
    disk = tmp_path / f"{table}.img"
    guid = "f00dcafe-1234-4abc-8def-0123456789ab"
    partuuid = partitioned_disk(
        root_disk, disk, table=table, part_guid=guid, part_label="ib-root", disk_id=""
    )
    bootfs = "PARTLABEL=ib-root" if table == "gpt" else f"PARTUUID={partuuid.upper()}"
    args = f"root=PARTUUID={partuuid} rootfstype=ext4 initbuild.panic=poweroff initbuild.bootfs={bootfs}"
    res = _boot_overlay(kernel, overlay, disk, log_dir, f"overlay-{table}", args)
    _assert_reached_real_root(res)
    assert partuuid == (guid if table == "gpt" else "1b2c3d4e-01")
    assert f"bootfs {bootfs} is /dev/vda1" in res.console, res.explain()
    assert f"root PARTUUID={partuuid} (/dev/vda1) mounted" in res.console, res.explain()


UDEV = (
    OVERLAY.format(compression="lz4").replace("modules: [test]", "modules: [test, udev]")
    + """
drivers: [virtio_rng]
"""
)


def test_udev_in_stage_two(tmp_path: Path, kver: str, kernel: Path, log_dir: Path) -> None:
    """modules.d/40udev: udevd makes /dev/disk/by-label (the root is named through it) and loads the
    driver of a device /init leaves alone (virtio-rng) through libkmod and the binary indexes."""
    built = _build(tmp_path / "out", UDEV, kver)
    tree = make_root_tree(tmp_path / "rootfs")
    shutil.copy(built.path("stage2"), tree / "boot" / built.path("stage2").name)
    disk = make_ext4(tree, tmp_path / "root.img", label="root")
    args = "root=/dev/disk/by-label/root rootfstype=ext4 initbuild.panic=poweroff"
    res = _boot(
        kernel, built.path("initramfs"), args, log_dir, "overlay-udev", disks=(Disk(disk),),
        devices=("virtio-rng-pci",),
    )  # fmt: skip
    _assert_reached_real_root(res)
    settled = [s for _, s in res.steps() if s.startswith("udev settled")]
    assert settled and "virtio_rng" in settled[0].split(":", 1)[1].split(), res.explain()
    assert "root /dev/disk/by-label/root (/dev/disk/by-label/root) mounted" in res.console, res.explain()
    assert "systemd-udevd did not start" not in res.console


def test_cpu_without_the_accelerated_hash(
    kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    """On a CPU without SSSE3 (qemu64) the CPU modalias matches none of sha256_ssse3's aliases: /init
    does not try it, not even with initbuild.drivers=all, and boots as before."""
    args = f"{ROOT_ARGS} initbuild.debug initbuild.drivers=all"
    res = _boot_overlay(kernel, overlay, root_disk, log_dir, "overlay-qemu64", args, cpu="qemu64")
    _assert_reached_real_root(res)
    assert "-cpu qemu64" in res.command()
    assert "loaded sha256_ssse3" not in res.console and "cannot load sha256_ssse3" not in res.console
    assert "loaded erofs" in res.console and "loaded scsi_mod" in res.console


@pytest.mark.parametrize("mode", ["initoverlayfs", "plain"])
def test_systemd_in_stage_two(mode: str, tmp_path: Path, kver: str, kernel: Path, log_dir: Path) -> None:
    """modules.d/45systemd: stage two hands over to systemd, which mounts root= through its fstab
    generator (by label, through udev) and switch-roots to the real root's init: over the overlay
    (initoverlayfs), or out of the initramfs it then empties (plain)."""
    profile = OVERLAY.format(compression="lz4").replace("modules: [test]", "modules: [systemd]")
    built = _build(tmp_path / "out", profile.replace("mode: initoverlayfs", f"mode: {mode}"), kver)
    tree = make_root_tree(tmp_path / "rootfs")
    if mode == "initoverlayfs":
        shutil.copy(built.path("stage2"), tree / "boot" / built.path("stage2").name)
    disk = make_ext4(tree, tmp_path / "root.img", label="root")
    args = "root=LABEL=root rootfstype=ext4 initbuild.panic=poweroff"
    res = _boot(kernel, built.path("initramfs"), args, log_dir, f"{mode}-systemd", disks=(Disk(disk),))
    assert res.ok and "real-root" in res.markers, res.explain()
    assert "handing stage two over to /usr/lib/systemd/systemd" in res.console, res.explain()
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", res.console)  # systemd colours its status lines
    assert "Reached target initrd-switch-root.target" in plain, res.explain()
    assert "emergency" not in plain.lower(), res.explain()


def test_systemd_module_with_the_shell_init_kept(
    tmp_path: Path, kver: str, kernel: Path, root_disk: Path, log_dir: Path
) -> None:
    """initbuild.stage2init=shell: the systemd image boots through stage two's own script instead."""
    profile = PLAIN.format(compression="lz4").replace("modules: [test]", "modules: [systemd]")
    built = _build(tmp_path / "out", profile, kver)
    args = f"{ROOT_ARGS} initbuild.stage2init=shell"
    res = _boot(
        kernel, built.path("initramfs"), args, log_dir, "plain-systemd-shell", disks=(Disk(root_disk),)
    )
    assert res.ok and "real-root" in res.markers, res.explain()
    assert "handing stage two over" not in res.console, res.explain()
    assert any(s.startswith("switching to the real root") for _, s in res.steps()), res.explain()


def test_initoverlayfs_bootfs_by_uuid(kernel: Path, overlay: Built, root_disk: Path, log_dir: Path) -> None:
    args = f"{ROOT_ARGS} initbuild.bootfs=UUID={ROOT_UUID}"
    res = _boot_overlay(kernel, overlay, root_disk, log_dir, "overlay-uuid", args)
    _assert_reached_real_root(res)
    assert f"bootfs UUID={ROOT_UUID} is /dev/vda" in res.console


def test_initoverlayfs_stage_two_on_its_own_disk(
    kernel: Path, overlay: Built, root_disk: Path, log_dir: Path
) -> None:
    args = f"{ROOT_ARGS} initbuild.bootfs=/dev/vdb initbuild.attach=direct"
    disks = (Disk(root_disk), Disk(overlay.path("stage2")))
    res = _boot(kernel, overlay.path("initramfs"), args, log_dir, "overlay-direct", disks=disks)
    _assert_reached_real_root(res)
    assert "(direct)" in res.console and "loop" not in " ".join(s for _, s in res.steps())


def test_initoverlayfs_zstd_stage_one(
    tmp_path: Path, kver: str, kernel: Path, root_disk: Path, log_dir: Path
) -> None:
    built = _build(tmp_path / "out", OVERLAY.format(compression="zstd"), kver)
    res = _boot(kernel, built.path("initramfs"), ROOT_ARGS, log_dir, "overlay-zstd", disks=(Disk(root_disk),))
    _assert_reached_real_root(res)


# -- failures: a diagnosis on the console, no panic, no silent hang --------------------------------
#
# These boots assert a bound in guest time, so they run where guest time is deterministic: -icount
# (guest time counts instructions) with virtio-pmem disks (reads are memory accesses: no host I/O
# latency for the idle guest to skip over, as a virtio-blk request would let it).

PMEM = "boot_drivers: [virtio_pmem, nd_pmem]\n"


@pytest.fixture(scope="module")
def overlay_pmem(tmp_path_factory: pytest.TempPathFactory, kver: str) -> Built:
    return _build(
        tmp_path_factory.mktemp("overlay-pmem") / "out", OVERLAY.format(compression="lz4") + PMEM, kver
    )


@pytest.fixture(scope="module")
def pmem_root_disk(tmp_path_factory: pytest.TempPathFactory, overlay_pmem: Built) -> Path:
    """The real root on a virtio-pmem disk, with the stage-two image and a corrupt copy under /boot."""
    tree = make_root_tree(tmp_path_factory.mktemp("rootfs-pmem"))
    image = overlay_pmem.path("stage2")
    shutil.copy(image, tree / "boot" / image.name)
    shutil.copy(image, tree / "boot" / "corrupt.img")
    with open(tree / "boot" / "corrupt.img", "r+b") as f:
        f.seek(1024)
        f.write(b"\0" * 128)  # wipe the EROFS superblock
    disk = tmp_path_factory.mktemp("disk-pmem") / "root.img"
    return make_ext4(tree, disk, label="root", uuid=ROOT_UUID, align=PMEM_ALIGN)


def _assert_diagnosed(res: BootResult, pattern: str) -> None:
    assert "-icount" in res.command(), "a guest-time bound is only checked under -icount"
    assert not res.panicked, res.explain()
    assert not res.timed_out, res.explain()
    fatal = [line for line in res.console.splitlines() if "initbuild: [" in line and "FATAL:" in line]
    assert fatal, res.explain()
    assert re.search(pattern, fatal[0]), f"{fatal[0]!r} does not match {pattern!r}\n{res.explain()}"
    m = re.search(r"initbuild: \[([\d.]+)\] FATAL", fatal[0])
    assert m and float(m.group(1)) < FAIL_TIMEOUT, fatal[0]
    assert "Power down" in res.console, res.explain()  # initbuild.panic=poweroff was obeyed


def _fail_boot(kernel: Path, initrd: Path, extra: str, disk: Path, log_dir: Path, name: str) -> BootResult:
    vm = VM(
        kernel=kernel,
        initrd=initrd,
        append=f"{ROOT_ARGS} {extra}",
        disks=(Disk(disk, kind="pmem"),),
        accel="tcg",
        icount=True,
        timeout=300,
        expect=("reboot: Power down",),
    )
    return boot(vm, log_path=log_dir / f"{name}-{kernel.name.removeprefix('vmlinuz-')}.log")


@pytest.mark.parametrize(
    ("image", "diagnosis"),
    [
        ("missing", r"stage two image /boot/missing\.img not found on LABEL=root \(ext4\)"),
        (
            "corrupt",
            r"cannot mount stage two image /boot/corrupt\.img on LABEL=root \(erofs\): "
            r".*cannot find valid erofs superblock",
        ),
    ],
)
def test_failure_stage_two_image(
    image: str, diagnosis: str, kernel: Path, overlay_pmem: Built, pmem_root_disk: Path, log_dir: Path
) -> None:
    """A stage-two image that is not on the bootfs, or whose superblock is wiped."""
    extra = f"initbuild.fs=/boot/{image}.img"
    initrd = overlay_pmem.path("initramfs")
    res = _fail_boot(kernel, initrd, extra, pmem_root_disk, log_dir, f"fail-{image}")
    _assert_diagnosed(res, diagnosis)


def test_failure_bootfs_never_appears(
    kernel: Path, overlay_pmem: Built, pmem_root_disk: Path, log_dir: Path
) -> None:
    extra = "initbuild.bootfs=UUID=00000000-1111-2222-3333-444444444444 initbuild.timeout=2"
    initrd = overlay_pmem.path("initramfs")
    res = _fail_boot(kernel, initrd, extra, pmem_root_disk, log_dir, "fail-nobootfs")
    _assert_diagnosed(
        res,
        r"bootfs UUID=00000000-1111-2222-3333-444444444444 did not appear within 2s "
        r"\(block devices: pmem0; drivers loaded: .*nd_pmem",
    )
    # the wait rescans buses with no devices (scsi): their unmatched globs must not spam the console
    assert "can't open" not in res.console, res.explain()


def test_failure_stage_two_init_missing(
    tmp_path: Path, kver: str, kernel: Path, pmem_root_disk: Path, log_dir: Path
) -> None:
    """A module names a stage-two init the image lacks: /init says so instead of letting a failed exec
    end PID 1 (a kernel panic)."""
    built = _build(
        tmp_path / "out",
        PLAIN.format(compression="lz4").replace("modules: [test]", "modules: [badinit]") + PMEM,
        kver,
        modules_dirs=[shipped_modules_dir(), HERE / "modules_badinit"],
    )
    res = _fail_boot(kernel, built.path("initramfs"), "", pmem_root_disk, log_dir, "fail-stage2init")
    _assert_diagnosed(res, r"stage two's init /usr/lib/nothing/init is missing or not executable")


def test_failure_driver_missing_from_stage_one(
    tmp_path: Path, kver: str, kernel: Path, pmem_root_disk: Path, log_dir: Path
) -> None:
    # No driver for the boot disk (virtio-pmem, virtio device 0x1b): it never shows up, and the
    # message says what is there.
    built = _build(
        tmp_path / "out",
        OVERLAY.format(compression="lz4"),
        kver,
        modules_dirs=[shipped_modules_dir(), HERE / "modules_nodisk"],
    )
    initrd = built.path("initramfs")
    res = _fail_boot(kernel, initrd, "initbuild.timeout=2", pmem_root_disk, log_dir, "fail-nodriver")
    _assert_diagnosed(
        res,
        r"bootfs LABEL=root did not appear within 2s \(block devices: none; drivers loaded: .*; "
        r"storage devices no driver in the image claims: .*virtio:d0000001B",
    )


def test_failure_overlay_unsupported(
    tmp_path: Path, kver: str, kernel: Path, pmem_root_disk: Path, log_dir: Path
) -> None:
    built = _build(
        tmp_path / "out",
        OVERLAY.format(compression="lz4") + PMEM,
        kver,
        modules_dirs=[shipped_modules_dir(), HERE / "modules_nooverlay"],
    )
    res = _fail_boot(kernel, built.path("initramfs"), "", pmem_root_disk, log_dir, "fail-nooverlay")
    _assert_diagnosed(
        res, r"cannot mount the overlay on /sysroot: .*overlay filesystem not supported by this kernel"
    )

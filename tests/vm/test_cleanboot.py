"""A clean boot (issue 11, point 3): what the console of an initbuild boot must not show, and what it must.

Three boots per installed kernel:
- busybox stage two, the root (vda) and the bootfs holding stage two's image (vdb) named with no
  filesystem type: both types are read from the superblocks (no "Can't open blockdev", no vfat
  driver loaded to probe), the root is checked by fsck before it is mounted, and at the real root
  nothing of the initrd is left: no erofs, overlay or tmpfs of stage one in /proc/mounts, no loop
  device bound to a file;
- systemd stage two with stage two's image on the root filesystem itself: no "Failed to find module"
  (autofs4), the root check left to the real system (stage one holds that filesystem), and again
  nothing of the initrd left under the real root (systemd's switch-root detaches the overlay);
- the first image on a root whose fsck finds errors it cannot fix: /init stops with the message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from initbuild.boot.disks import make_ext4, make_root_tree
from initbuild.boot.harness import VM, BootResult, Disk, boot, marker
from initbuild.build import build
from initbuild.config import load_profile_text

pytestmark = pytest.mark.vm

# hostonly: no: nothing of the machine running the tests (its root's type, its fstab) may be baked in;
# these boots check what /init detects by itself
BUSYBOX = """
mode: initoverlayfs
hostonly: no
modules: [fsck]
overlay:
  bootfs: LABEL=boot
  bootfstype: auto
  fs: /initoverlayfs-{kver}.img
  timeout: 5
"""

SYSTEMD = """
mode: initoverlayfs
hostonly: no
modules: [systemd, fsck]
overlay:
  bootfs: LABEL=root
  bootfstype: auto
  fs: /boot/initoverlayfs-{kver}.img
  timeout: 5
"""

# no rootfstype=: the type comes from the superblock
ARGS = "root=LABEL=root ro initbuild.panic=poweroff"
INITRD_FSTYPES = ("erofs", "overlay")


def _build(outdir: Path, text: str, kver: str) -> tuple[Path, Path]:
    profile = load_profile_text(f"kernel: {kver}\n{text}", str(outdir / "profile.yaml"))
    report = build(profile, outdir, force=True)
    return outdir / report.output("initramfs").path, outdir / report.output("stage2").path


def _boot(
    kernel: Path, initrd: Path, disks: tuple[Path, ...], args: str, log_dir: Path, name: str, until: str
) -> BootResult:
    vm = VM(
        kernel=kernel,
        initrd=initrd,
        append=args,
        disks=tuple(Disk(d, readonly=False) for d in disks),  # fsck may write
        timeout=400,
        expect=(until,),
    )
    return boot(vm, log_path=log_dir / f"{name}-{kernel.name.removeprefix('vmlinuz-')}.log")


def _plain(console: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", console)  # systemd colours its status lines


def _root_line(res: BootResult, what: str) -> list[str]:
    """The words of the test root's `initbuild-root: WHAT:` line (disks.ROOT_INIT)."""
    lines = [ln for ln in res.console.splitlines() if ln.startswith(f"initbuild-root: {what}:")]
    assert lines, res.explain()
    return lines[-1].split(":", 2)[2].split()


def _assert_nothing_of_the_initrd_left(res: BootResult) -> None:
    mounts = _root_line(res, "mounts")  # type:dir
    assert "ext4:/" in mounts, mounts
    assert not [m for m in mounts if m.split(":")[0] in INITRD_FSTYPES], mounts
    assert not [m for m in mounts if m.split(":", 1)[1].startswith(("/run/initoverlayfs", "/boot"))], mounts
    assert _root_line(res, "bound loop devices") == [], res.explain()


@pytest.fixture(scope="module")
def busybox_images(tmp_path_factory: pytest.TempPathFactory, kver: str) -> tuple[Path, Path, Path]:
    """(stage one, root disk, bootfs disk with stage two's image)."""
    base = tmp_path_factory.mktemp("clean-busybox")
    initrd, stage2 = _build(base / "out", BUSYBOX, kver)
    root = make_ext4(make_root_tree(base / "root"), base / "root.img", label="root")
    (base / "bootfs").mkdir()
    shutil.copy(stage2, base / "bootfs" / stage2.name)
    bootfs = make_ext4(base / "bootfs", base / "bootfs.img", label="boot")
    return initrd, root, bootfs


def test_busybox_stage_two_boots_clean(
    kernel: Path, busybox_images: tuple[Path, Path, Path], log_dir: Path
) -> None:
    initrd, root, bootfs = busybox_images
    res = _boot(
        kernel,
        initrd,
        (root, bootfs),
        f"{ARGS} initbuild.debug",
        log_dir,
        "clean-busybox",
        marker("real-root"),
    )
    assert res.ok and "real-root" in res.markers, res.explain()
    steps = [s for _, s in res.steps()]
    assert "bootfs LABEL=boot (/dev/vdb): ext4 filesystem (detected from its superblock)" in steps, (
        res.explain()
    )
    assert "root LABEL=root (/dev/vda): ext4 filesystem (detected from its superblock)" in steps, (
        res.explain()
    )
    assert "Can't open blockdev" not in res.console, res.explain()
    assert "loaded vfat" not in res.console and "loaded fat" not in res.console, res.explain()
    # the fstab check (modules.d/50fsck, forced here: the build host's fstab may ask for none)
    assert "checking root /dev/vda (ext4) as /etc/fstab asks" in steps, res.explain()
    assert "root /dev/vda checked: clean" in steps, res.explain()
    assert "root: clean," in res.console, res.explain()  # e2fsck's own line (it names the fs by label)
    i_check = steps.index("root /dev/vda checked: clean")
    assert i_check < next(
        i for i, s in enumerate(steps) if s.startswith("root LABEL=root (/dev/vda) mounted")
    )
    assert "stage two detached: the real root is / (pivot_root)" in steps, res.explain()
    _assert_nothing_of_the_initrd_left(res)


def test_fsck_failure_stops_with_the_message(
    tmp_path: Path, kernel: Path, busybox_images: tuple[Path, Path, Path], log_dir: Path
) -> None:
    """A root whose check finds what `fsck -a` must not fix alone (a cleared root inode): exit status
    4, and /init stops (here: powers off) saying so instead of mounting it."""
    initrd, root, bootfs = busybox_images
    broken = tmp_path / "broken.img"
    shutil.copy(root, broken)
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
    for req in ("clri <2>", "ssv state 2"):  # clear the root directory's inode; mark the fs as having errors
        subprocess.run([debugfs, "-w", "-R", req, str(broken)], check=True, capture_output=True)
    res = _boot(kernel, initrd, (broken, bootfs), ARGS, log_dir, "clean-fsck-fails", "reboot: Power down")
    assert not res.panicked and not res.timed_out, res.explain()
    fatal = [ln for ln in res.console.splitlines() if "initbuild: [" in ln and "FATAL:" in ln]
    assert fatal, res.explain()
    assert re.search(
        r"FATAL: checking root /dev/vda \(ext4\) failed: fsck exit status 4, errors left uncorrected",
        fatal[0],
    ), fatal[0]
    assert "UNEXPECTED INCONSISTENCY" in res.console, res.explain()  # e2fsck -p's own words
    assert "real-root" not in res.markers and "mounted ro" not in res.console


def test_systemd_stage_two_boots_clean(tmp_path: Path, kver: str, kernel: Path, log_dir: Path) -> None:
    initrd, stage2 = _build(tmp_path / "out", SYSTEMD, kver)
    tree = make_root_tree(tmp_path / "root")
    shutil.copy(stage2, tree / "boot" / stage2.name)
    root = make_ext4(tree, tmp_path / "root.img", label="root")
    res = _boot(kernel, initrd, (root,), ARGS, log_dir, "clean-systemd", marker("real-root"))
    assert res.ok and "real-root" in res.markers, res.explain()
    plain = _plain(res.console)
    assert "Failed to find module" not in plain, res.explain()
    assert "Can't open blockdev" not in plain, res.explain()
    assert "bootfs LABEL=root (/dev/vda): ext4 filesystem (detected from its superblock)" in plain
    assert "Reached target initrd-switch-root.target" in plain, res.explain()
    # stage one holds the root's filesystem: systemd-fsck leaves it to the real system (50fsck's drop-in)
    assert "root LABEL=root (/dev/vda) holds stage two (mounted by stage one)" in plain, res.explain()
    assert "fsck failed" not in plain and "emergency" not in plain.lower(), res.explain()
    _assert_nothing_of_the_initrd_left(res)

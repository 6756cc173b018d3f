"""A host-aware build boots a Debian-like layout with nothing about disks on the command line but root=.

The sysroot is a small tree made of this machine's busybox-static and the kernel's modules, with an
/etc/fstab naming the root by UUID (a stock Debian install: /boot on the root filesystem). The profile
names nothing about disks (hostonly: yes, every overlay key auto): stage one must find stage two at
/boot/initoverlayfs-KVER.img on the filesystem with that UUID, and stage two must mount the root
with the type fstab gives. The kernel command line is Debian GRUB's: `root=UUID=... ro`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from initbuild.boot.disks import make_ext4, make_root_tree
from initbuild.boot.harness import VM, Disk, boot, marker
from initbuild.build import build
from initbuild.config import load_profile_text

pytestmark = pytest.mark.vm

ROOT_UUID = "3c1f0e2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
BUSYBOX = "/bin/busybox"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def debian_like_sysroot(root: Path, kver: str) -> Path:
    """usr-merged: /usr/bin/busybox (static), the kernel and its modules, and a stock Debian fstab."""
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / "modules").mkdir(parents=True)
    for name in ("bin", "lib", "sbin"):
        os.symlink(f"usr/{name}", root / name)
    (root / "usr" / "sbin").mkdir()
    shutil.copy2(os.path.realpath(BUSYBOX), root / "usr" / "bin" / "busybox")
    shutil.copytree(f"/lib/modules/{kver}", root / "usr/lib/modules" / kver, copy_function=_link_or_copy)
    (root / "boot").mkdir()
    for f in (f"vmlinuz-{kver}", f"config-{kver}"):
        if os.path.exists(f"/boot/{f}"):
            _link_or_copy(f"/boot/{f}", str(root / "boot" / f))
    (root / "etc").mkdir()
    (root / "etc" / "fstab").write_text(
        "# /etc/fstab: static file system information.\n"
        f"UUID={ROOT_UUID} /               ext4    errors=remount-ro 0       1\n"
        "/swapfile none swap sw 0 0\n"
    )
    return root


def test_hostonly_build_boots_with_only_root_uuid_on_the_command_line(
    tmp_path: Path, kver: str, kernel: Path, log_dir: Path
) -> None:
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    sysroot = debian_like_sysroot(tmp_path / "sysroot", kver)
    out = tmp_path / "out"
    profile = load_profile_text(
        f"kernel: {kver}\nsysroot: {sysroot}\nhostonly: yes\nmode: initoverlayfs\n", str(tmp_path / "p.yaml")
    )
    report = build(profile, out, force=True)
    host = report.host
    assert host is not None and host["mode"] == "host", host
    assert host["resolved"]["overlay.bootfs"] == f"UUID={ROOT_UUID}"
    assert host["resolved"]["overlay.fs"] == "/boot/initoverlayfs-{kver}.img"
    conf = (out / "initoverlayfs.conf").read_text()
    assert f"bootfs UUID={ROOT_UUID}\n" in conf and f"fs /boot/initoverlayfs-{kver}.img\n" in conf

    # the root disk: stage two next to the kernel, inside the root filesystem with that UUID
    tree = make_root_tree(tmp_path / "rootfs")
    stage2 = out / report.output("stage2").path
    shutil.copy(stage2, tree / "boot" / stage2.name)
    disk = make_ext4(tree, tmp_path / "root.img", uuid=ROOT_UUID)
    vm = VM(
        kernel=kernel,
        initrd=out / report.output("initramfs").path,
        append=f"root=UUID={ROOT_UUID} ro",
        disks=(Disk(disk),),
        timeout=300,
        expect=(marker("real-root"),),
    )
    res = boot(vm, log_path=log_dir / f"hostonly-{kver}.log")
    assert res.ok and "real-root" in res.markers, res.explain()
    steps = [s for _, s in res.steps()]
    assert any(s.startswith("stage two started over initoverlayfs") for s in steps), res.explain()
    # rootfstype=ext4 was baked in: stage two mounts the root with its type instead of probing others
    assert "Can't open blockdev" not in res.console, res.explain()

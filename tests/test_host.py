"""Host-aware builds (resolve/host.py): detection from fake target trees, resolution, the CLI, a build.

Every tree here is a temporary directory: its etc/fstab, and for the "running system" cases its own
proc/self/mountinfo, proc/cmdline, dev/disk/by-uuid and sys/ (read through the Sysroot, as on /).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_config import FAKE_KVER, make_fake_sysroot

from initbuild import run
from initbuild.config import load_profile_text
from initbuild.errors import ConfigError
from initbuild.formats.inspect import find, open_image
from initbuild.profile import GENERIC_BOOTFS, GENERIC_FS, HostOnly, Profile
from initbuild.resolve.host import (
    HostInfo,
    cmdline_defaults,
    detect_host,
    parse_fstab,
    parse_mountinfo,
    resolve_profile,
    rootflags,
)
from initbuild.sysroot import Sysroot

CLI = [sys.executable, "-m", "initbuild"]
KVER = "9.0.0-host"
ROOT_UUID = "0a1b2c3d-1111-4222-8333-444455556666"
BOOT_UUID = "9f8e7d6c-2222-4333-8444-555566667777"
EFI_UUID = "ABCD-1234"
DEBIAN_FSTAB = f"""# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>

UUID={ROOT_UUID} /               ext4    errors=remount-ro 0       1
UUID=1234-5678-swap none            swap    sw              0       0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
tmpfs /tmp tmpfs defaults 0 0
"""
# what the fake kernel's modules.alias knows (the storage drivers of a virtio and an NVMe machine)
MODULES_DEP = """kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/fs/xfs/xfs.ko:
"""
MODULES_ALIAS = """alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias fs-xfs xfs
"""
VIRTIO_PCI = "/sys/devices/pci0000:00/0000:00:04.0"
NVME_PCI = "/sys/devices/pci0000:00/0000:00:05.0"


def write(root: Path, path: str, text: str) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def link(root: Path, path: str, target: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)


def tree(tmp_path: Path, fstab: str | None = DEBIAN_FSTAB) -> Path:
    root = tmp_path / "root"
    write(root, f"/lib/modules/{KVER}/modules.dep", MODULES_DEP)
    write(root, f"/lib/modules/{KVER}/modules.alias", MODULES_ALIAS)
    write(root, f"/boot/vmlinuz-{KVER}", "")
    if fstab is not None:
        write(root, "/etc/fstab", fstab)
    return root


def profile(text: str = "") -> Profile:
    return load_profile_text(f"kernel: {KVER}\n{text}", "p.yaml")


def detect(root: Path, text: str = "", outdir: str | Path | None = None, running: bool = False) -> HostInfo:
    return detect_host(profile(text), Sysroot(root), KVER, outdir, running=running)


# -- parsing -------------------------------------------------------------------------------------


def test_fstab_parsing_comments_blanks_swap_escapes_and_missing_fields() -> None:
    text = DEBIAN_FSTAB + "LABEL=data\t/srv/my\\040data  xfs noatime  # trailing comment\n#UUID=x /y ext4\n"
    entries = parse_fstab(text, "/etc/fstab")
    assert [(e.spec, e.mountpoint, e.fstype, e.passno) for e in entries] == [
        (f"UUID={ROOT_UUID}", "/", "ext4", 1),
        ("/dev/sr0", "/media/cdrom0", "udf,iso9660", 0),
        ("tmpfs", "/tmp", "tmpfs", 0),
        ("LABEL=data", "/srv/my data", "xfs", 0),
    ]
    assert entries[0].where == "/etc/fstab:5" and entries[-1].options == "noatime"


def test_mountinfo_parsing_optional_fields_and_escapes() -> None:
    text = (
        "27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n"
        "40 27 254:2 /sub /mnt/a\\040b rw master:2 propagate_from:1 - vfat /dev/vda2 rw\n"
        "41 27 0:44 / /run rw - tmpfs tmpfs rw\n"
    )
    got = parse_mountinfo(text, "mi")
    assert [(m.devno, m.root, m.mountpoint, m.fstype, m.spec) for m in got] == [
        ("254:1", "/", "/", "ext4", "/dev/vda1"),
        ("254:2", "/sub", "/mnt/a b", "vfat", "/dev/vda2"),
        ("0:44", "/", "/run", "tmpfs", "tmpfs"),
    ]


def test_rootflags_keep_only_filesystem_options() -> None:
    assert (
        rootflags("defaults,errors=remount-ro,noatime,x-systemd.growfs,nofail,ro,discard")
        == "noatime,discard"
    )
    assert rootflags("defaults") == ""


# -- another sysroot: its /etc/fstab ------------------------------------------------------------


def test_stock_debian_boot_on_root(tmp_path: Path) -> None:
    """/boot on the root filesystem: stage two at /boot/initoverlayfs-KVER.img inside it."""
    root = tree(tmp_path)
    info = detect(root)
    fstab = f"{root}/etc/fstab:5"
    assert (
        info.bootfs is not None and info.bootfs.value == f"UUID={ROOT_UUID}" and fstab in info.bootfs.source
    )
    assert info.bootfstype is not None and info.bootfstype.value == "ext4"
    assert info.fs is not None and info.fs.value == "/boot/initoverlayfs-{kver}.img"
    assert (
        info.root is not None
        and info.root.value == f"UUID={ROOT_UUID}"
        and info.root.source.startswith(fstab)
    )
    assert info.rootflags is None and info.root_passno is not None and info.root_passno.value == "1"
    assert cmdline_defaults(info) == f"root=UUID={ROOT_UUID} rootfstype=ext4"
    assert info.boot_drivers == () and "another sysroot has no sysfs" in " ".join(info.notes)
    resolved, warning = resolve_profile(profile(), info)
    assert warning == ""
    ov = resolved.overlay
    assert (ov.bootfs, ov.bootfstype, ov.fs) == (
        f"UUID={ROOT_UUID}",
        "ext4",
        "/boot/initoverlayfs-{kver}.img",
    )
    assert resolved.cmdline == f"root=UUID={ROOT_UUID} rootfstype=ext4"


def test_separate_boot_partition(tmp_path: Path) -> None:
    root = tree(tmp_path, DEBIAN_FSTAB + f"UUID={BOOT_UUID} /boot ext2 defaults 0 2\n")
    info = detect(root)
    assert (info.bootfs and info.bootfs.value, info.bootfs_mount) == (f"UUID={BOOT_UUID}", "/boot")
    assert info.bootfstype is not None and info.bootfstype.value == "ext2"
    assert info.fs is not None and info.fs.value == "/initoverlayfs-{kver}.img"
    assert info.root is not None and info.root.value == f"UUID={ROOT_UUID}"  # the root is still /


def test_efi_partition_holds_the_image_only_when_the_output_is_there(tmp_path: Path) -> None:
    root = tree(tmp_path, DEBIAN_FSTAB + f"UUID={EFI_UUID} /boot/efi vfat umask=0077 0 1\n")
    assert detect(root).bootfs == detect(root, outdir="out").bootfs  # relative output: /boot, on /
    info = detect(root, outdir=root / "boot/efi/EFI/Linux")
    assert info.bootfs is not None and info.bootfs.value == f"UUID={EFI_UUID}"
    assert info.bootfstype is not None and info.bootfstype.value == "vfat"
    assert info.fs is not None and info.fs.value == "/EFI/Linux/initoverlayfs-{kver}.img"
    assert info.image is not None and "inside the sysroot" in info.image.source
    # an output directory outside the sysroot is not where the target finds it: /boot
    assert detect(root, outdir=tmp_path / "elsewhere").fs == detect(root).fs


def test_label_specs_options_and_no_fsck(tmp_path: Path) -> None:
    root = tree(
        tmp_path, "LABEL=root / xfs noatime,x-systemd.growfs,defaults 0 0\nLABEL=boot /boot ext4 rw 0 2\n"
    )
    info = detect(root)
    assert info.bootfs is not None and info.bootfs.value == "LABEL=boot"
    assert cmdline_defaults(info) == "root=LABEL=root rootfstype=xfs rootflags=noatime"
    assert [f.value for f in info.drivers] == ["xfs"]  # the root's filesystem, a module: stage two
    resolved, _ = resolve_profile(profile(), info)
    assert "xfs" in resolved.drivers


def test_escaped_mountpoint(tmp_path: Path) -> None:
    root = tree(tmp_path, DEBIAN_FSTAB + f"UUID={BOOT_UUID} /srv/my\\040boot ext4 defaults 0 2\n")
    info = detect(root, outdir=root / "srv/my boot/images")
    assert info.bootfs is not None and info.bootfs.value == f"UUID={BOOT_UUID}"
    assert info.fs is not None and info.fs.value == "/images/initoverlayfs-{kver}.img"


def test_pseudo_filesystem_is_no_boot_filesystem(tmp_path: Path) -> None:
    info = detect(tree(tmp_path), outdir=tmp_path / "root/tmp/out")
    assert info.bootfs is None and "tmpfs on /tmp is not a block device" in info.missing[0]


def test_no_fstab_auto_is_generic_with_a_warning_and_yes_is_an_error(tmp_path: Path) -> None:
    root = tree(tmp_path, fstab=None)
    info = detect(root)
    assert info.bootfs is None and f"no {root}/etc/fstab" in info.missing[0]
    resolved, warning = resolve_profile(profile(), info)
    assert (resolved.overlay.bootfs, resolved.overlay.fs) == (GENERIC_BOOTFS, GENERIC_FS)
    assert resolved.cmdline == "" and f"no {root}/etc/fstab" in warning and "--generic" in warning
    p = profile("hostonly: yes\n")
    with pytest.raises(ConfigError, match=f"hostonly: yes: cannot find .*no {root}/etc/fstab") as e:
        resolve_profile(p, detect_host(p, Sysroot(root), KVER))
    assert e.value.location is not None and e.value.location.line == 2


def test_no_root_entry(tmp_path: Path) -> None:
    info = detect(tree(tmp_path, f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n"))
    assert info.bootfs is not None and info.root is None
    assert any("no root= on the boot command line" in m for m in info.missing)


def test_pinned_keys_win(tmp_path: Path) -> None:
    root = tree(tmp_path)
    # bootfs pinned to another filesystem: the detected type and path are not its; generic values
    p = profile("overlay: {bootfs: LABEL=mine}\n")
    resolved, warning = resolve_profile(p, detect_host(p, Sysroot(root), KVER))
    assert (resolved.overlay.bootfs, resolved.overlay.bootfstype, resolved.overlay.fs) == (
        "LABEL=mine", "auto", GENERIC_FS,
    )  # fmt: skip
    assert warning == "" and "rootfstype=ext4" in resolved.cmdline  # still host mode for the root
    # fs and type pinned, bootfs detected; the profile's cmdline comes after the defaults (it wins)
    p = profile("overlay: {fs: /x.img, bootfstype: ext3}\ncmdline: rootfstype=ext3\n")
    resolved, _ = resolve_profile(p, detect_host(p, Sysroot(root), KVER))
    assert (resolved.overlay.bootfs, resolved.overlay.bootfstype, resolved.overlay.fs) == (
        f"UUID={ROOT_UUID}", "ext3", "/x.img",
    )  # fmt: skip
    assert resolved.cmdline.endswith("rootfstype=ext4 rootfstype=ext3")


def test_generic_reads_nothing(tmp_path: Path) -> None:
    p = profile("hostonly: no\n")
    info = detect_host(p, Sysroot(tree(tmp_path)), KVER)
    assert info == HostInfo(HostOnly.NO)
    resolved, warning = resolve_profile(p, info)
    assert (resolved.overlay.bootfs, resolved.overlay.fs, resolved.cmdline, warning) == (
        GENERIC_BOOTFS, GENERIC_FS, "", "",
    )  # fmt: skip


# -- the running system: mountinfo, the boot command line, by-uuid links, sysfs ---------------------


def virtio_machine(root: Path, cmdline: str = "BOOT_IMAGE=/vmlinuz ro quiet") -> None:
    """/ on /dev/vda1: a partition of a virtio-blk disk behind a virtio PCI device (bound to the
    built-in virtio-pci driver of the running kernel: no module link, so its modalias is matched)."""
    write(root, "/proc/self/mountinfo", "22 27 0:21 / /proc rw - proc proc rw\n"
          "27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n")  # fmt: skip
    write(root, "/proc/cmdline", cmdline + "\n")
    link(root, f"/dev/disk/by-uuid/{ROOT_UUID}", "../../vda1")
    link(root, "/sys/dev/block/254:1", f"../..{VIRTIO_PCI[4:]}/virtio1/block/vda/vda1")
    write(root, f"{VIRTIO_PCI}/virtio1/block/vda/vda1/partition", "1\n")
    link(root, f"{VIRTIO_PCI}/virtio1/block/vda/device", "../../../virtio1")
    write(root, f"{VIRTIO_PCI}/virtio1/modalias", "virtio:d00000002v00001AF4\n")
    link(root, f"{VIRTIO_PCI}/virtio1/driver", "../../../../bus/virtio/drivers/virtio_blk")
    link(root, "/sys/bus/virtio/drivers/virtio_blk/module", "../../../../module/virtio_blk")
    write(root, f"{VIRTIO_PCI}/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n")
    link(root, f"{VIRTIO_PCI}/driver", "../../../bus/pci/drivers/virtio-pci")
    (root / "sys/bus/pci/drivers/virtio-pci").mkdir(parents=True)
    (root / "sys/module/virtio_blk").mkdir(parents=True)


def test_running_system_virtio_from_mountinfo_by_uuid_and_sysfs(tmp_path: Path) -> None:
    root = tree(tmp_path, fstab="# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")
    virtio_machine(root)
    info = detect(root, running=True)
    assert info.bootfs is not None and info.bootfs.value == f"UUID={ROOT_UUID}"
    assert "/proc/self/mountinfo:2: / on /dev/vda1" in info.bootfs.source
    assert f"/dev/disk/by-uuid/{ROOT_UUID}" in info.bootfs.source
    assert info.fs is not None and info.fs.value == "/boot/initoverlayfs-{kver}.img"
    assert info.root is not None and info.root.value == f"UUID={ROOT_UUID}"  # from the mounted /
    assert info.rootfstype is not None and info.rootfstype.source.startswith("/proc/self/mountinfo:2")
    drivers = {f.value: f.source for f in info.boot_drivers}
    assert list(drivers) == ["virtio_blk", "virtio_pci"]
    assert "virtio:d00000002v00001AF4" in drivers["virtio_blk"] and VIRTIO_PCI in drivers["virtio_pci"]
    resolved, _ = resolve_profile(profile("boot_drivers: [nvme]\n"), info)
    assert resolved.boot_drivers == ("nvme", "virtio_blk", "virtio_pci")


def test_running_system_cmdline_root_wins_over_fstab(tmp_path: Path) -> None:
    root = tree(tmp_path, DEBIAN_FSTAB.replace("errors=remount-ro", "noatime,errors=remount-ro"))
    virtio_machine(root, cmdline="BOOT_IMAGE=/boot/vmlinuz root=/dev/vda1 ro rootflags=data=journal -- x")
    info = detect(root, running=True)
    assert info.root is not None and info.root.value == "/dev/vda1" and info.root_on_cmdline
    assert info.rootflags is not None and info.rootflags.value == "data=journal"
    assert info.rootfstype is not None and info.rootfstype.source.startswith(f"{root}/etc/fstab:5")
    # root= and rootflags= are on the boot command line already: only the type is baked
    assert cmdline_defaults(info) == "rootfstype=ext4"


def test_running_system_without_uuid_link_uses_the_fstab_entry(tmp_path: Path) -> None:
    root = tree(tmp_path, "LABEL=rootfs / ext4 defaults 0 1\n")
    virtio_machine(root)
    (root / f"dev/disk/by-uuid/{ROOT_UUID}").unlink()
    info = detect(root, running=True)
    assert info.bootfs is not None and info.bootfs.value == "LABEL=rootfs"
    assert info.bootfs.source.endswith(f"{root}/etc/fstab:1")
    (root / "etc/fstab").write_text("/dev/vda1 / ext4 defaults 0 1\n")  # names no UUID or LABEL
    info = detect(root, running=True)
    assert info.bootfs is None and "no UUID for /dev/vda1 (mounted on /" in info.missing[0]


def test_running_system_output_on_tmpfs(tmp_path: Path) -> None:
    root = tree(tmp_path)
    virtio_machine(root)
    with open(root / "proc/self/mountinfo", "a") as f:
        f.write("41 27 0:44 / /tmp rw,nosuid - tmpfs tmpfs rw\n")
    info = detect(root, outdir=root / "tmp/out", running=True)
    assert info.bootfs is None and "/tmp is tmpfs (tmpfs), not a block device" in info.missing[0]
    assert info.root is not None and info.root.value == f"UUID={ROOT_UUID}"  # fstab's /


def test_running_system_nvme(tmp_path: Path) -> None:
    root = tree(tmp_path, fstab=None)
    write(root, "/proc/self/mountinfo", "27 1 259:1 / / rw - xfs /dev/nvme0n1p1 rw\n")
    link(root, f"/dev/disk/by-uuid/{ROOT_UUID}", "../../nvme0n1p1")
    nvme0 = f"{NVME_PCI}/nvme/nvme0"
    link(root, "/sys/dev/block/259:1", f"../..{nvme0[4:]}/nvme0n1/nvme0n1p1")
    write(root, f"{nvme0}/nvme0n1/nvme0n1p1/partition", "1\n")
    link(root, f"{nvme0}/nvme0n1/device", "../../nvme0")
    write(root, f"{NVME_PCI}/modalias", "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02\n")
    link(root, f"{NVME_PCI}/driver", "../../../bus/pci/drivers/nvme")
    link(root, "/sys/bus/pci/drivers/nvme/module", "../../../../module/nvme")
    (root / "sys/module/nvme").mkdir(parents=True)
    info = detect(root, running=True)
    assert [f.value for f in info.boot_drivers] == ["nvme", "xfs"]  # the disk, bootfs's filesystem
    assert info.root_passno is None


# -- the command line and a real build ------------------------------------------------------------


def ib(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run.run([*CLI, *args], check=False)


def fake(tmp_path: Path, fstab: str | None = DEBIAN_FSTAB) -> Path:
    """A tree the shipped modules can build from (test_config's), with this fstab."""
    root = make_fake_sysroot(tmp_path / "fake")
    if fstab is not None:
        write(root, "/etc/fstab", fstab)
    return root


def test_plan_prints_what_it_detected_and_from_where(tmp_path: Path) -> None:
    root = fake(tmp_path)
    cp = ib("plan", "--sysroot", str(root))
    out = cp.stdout.decode()
    assert f"host build: bootfs UUID={ROOT_UUID} (ext4), fs /boot/initoverlayfs-{{kver}}.img" in out
    assert f"bootfs: UUID={ROOT_UUID}  ({root}/etc/fstab:5: /)" in out
    assert f"cmdline defaults: root=UUID={ROOT_UUID} rootfstype=ext4" in out
    cp = ib("plan", "--json", "--sysroot", str(root))
    host = json.loads(cp.stdout)["host"]
    assert host["mode"] == "host" and host["detected"]["root_passno"] == {
        "value": "1", "source": f"{root}/etc/fstab:5: / pass 1",
    }  # fmt: skip
    cp = ib("plan", "--json", "--generic", "--sysroot", str(root))
    host = json.loads(cp.stdout)["host"]
    assert host["mode"] == "generic" and host["resolved"]["overlay.bootfs"] == GENERIC_BOOTFS
    assert host["detected"] == {} and host["resolved"]["cmdline"] == ""


def test_hostonly_flag_without_fstab_is_a_usage_error(tmp_path: Path) -> None:
    root = fake(tmp_path, fstab=None)
    cp = ib("plan", "--hostonly", "--sysroot", str(root))
    err = cp.stderr.decode()
    assert (
        cp.returncode == 2
        and f"hostonly: yes: cannot find the boot filesystem (holding /boot): no {root}/etc/fstab" in err
    )
    cp = ib("plan", "--sysroot", str(root))
    assert cp.returncode == 0 and "warning: hostonly: auto: building generic images" in cp.stderr.decode()
    prof = write(tmp_path, "p.yaml", "# a host-only profile\nhostonly: yes\n")
    cp = ib("plan", str(prof), "--sysroot", str(root))
    assert cp.returncode == 2 and f"{prof}:2:" in cp.stderr.decode()


def test_a_build_bakes_the_resolved_values(tmp_path: Path) -> None:
    """A real build of a fake tree: stage one's initoverlayfs.conf names the detected filesystem and
    path, stage two's command-line defaults the root, build.json records what came from where."""
    root = fake(tmp_path)
    out = tmp_path / "out"
    cp = ib("build", "--sysroot", str(root), "-o", str(out), "-q")
    assert cp.returncode == 0, cp.stderr.decode()
    conf = (out / "initoverlayfs.conf").read_text()
    assert f"\nbootfs UUID={ROOT_UUID}\nbootfstype ext4\nfs /boot/initoverlayfs-{FAKE_KVER}.img\n" in conf
    assert "\n# Host-aware build: " in conf
    stage2 = open_image(out / f"initoverlayfs-{FAKE_KVER}.img")
    baked = stage2.read(find(stage2, "/etc/cmdline.d/50-profile.conf")).decode()
    assert baked.strip() == f"root=UUID={ROOT_UUID} rootfstype=ext4"
    report = json.loads((out / "build.json").read_text())["host"]
    assert report["mode"] == "host" and report["detected"]["bootfs"]["source"] == f"{root}/etc/fstab:5: /"
    # --generic: today's defaults
    cp = ib("build", "--generic", "--sysroot", str(root), "-o", str(out), "-q", "--force")
    conf = (out / "initoverlayfs.conf").read_text()
    assert f"\nbootfs {GENERIC_BOOTFS}\nbootfstype auto\nfs /initoverlayfs-{FAKE_KVER}.img\n" in conf
    assert "\n# Generic build: " in conf


def test_debian_postinst_hook_places_stage_two_where_it_publishes_it(tmp_path: Path) -> None:
    """The hook builds into a staging directory under the boot directory, then renames: --boot-dir
    makes overlay.fs name the final place (/boot/...), not the staging directory."""
    from initbuild.resources import kernel_hook

    root = fake(tmp_path)
    wrapper = write(tmp_path, "initbuild", f'#!/bin/sh\nexec {sys.executable} -m initbuild "$@"\n')
    wrapper.chmod(0o755)
    env = {
        "INITBUILD": str(wrapper),
        "INITBUILD_SYSROOT": str(root),
        "INITBUILD_BOOT_DIR": str(root / "boot"),
    }
    hook = ["sh", str(kernel_hook("debian-postinst")), FAKE_KVER, f"/boot/vmlinuz-{FAKE_KVER}"]
    cp = run.run(hook, env=env, check=False)
    assert cp.returncode == 0, cp.stderr.decode()
    conf = (root / "boot" / f"initoverlayfs-{FAKE_KVER}.conf").read_text()
    assert f"\nbootfs UUID={ROOT_UUID}\nbootfstype ext4\nfs /boot/initoverlayfs-{FAKE_KVER}.img\n" in conf
    assert (root / "boot" / f"initoverlayfs-{FAKE_KVER}.img").is_file()

"""A real Debian system booted by initbuild (issue #11 point 5).

A Debian bookworm root made with mmdebstrap (the minimal `apt` variant with systemd, udev, kmod,
e2fsprogs and busybox-static; the host's kernel and modules copied in), /etc/fstab by UUID and /boot on
the root filesystem as Debian installs them, built with `initbuild build --sysroot` as initoverlayfs
with the systemd module (stage two at /boot/initoverlayfs-KVER.img inside the root filesystem), booted
to multi-user.target. The command line is Debian's without its `root=UUID=...` (just `ro quiet`): the
root comes from the image's host-aware defaults (the tree's fstab), which systemd's fstab generator
cannot see, so stage two writes sysroot.mount itself (qemu/realroot.py boots every variant with
root= as GRUB writes it). The measuring unit of
qemu/realroot.py (initbuild/boot/debroot.py) reports the failed units after multi-user.target and
powers the machine off; the test waits for the power-off, never for a time.

One kernel, chosen explicitly: bookworm's own series (6.1) when installed, else the oldest (a boot
takes ~80 s of host time; qemu/realroot.py --kernel 6.12 covers the other). It runs under -icount
although it times nothing: with `sleep=off` the guest skips its idle waits, and a systemd boot under
plain TCG took 110 s of host time against 80 s with icount on the same loaded 2-core machine.

Skipped only when Debian's archive cannot be reached and no cached root exists (the root is cached
under ~/.cache/initbuild/realroot, or $INITBUILD_CACHE).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from initbuild.boot import debroot as dr
from initbuild.boot.harness import PMEM_ALIGN, VM, BootResult, Disk, boot
from initbuild.resolve.kernels import host_kernels
from initbuild.run import run
from initbuild.sysroot import Sysroot

pytestmark = pytest.mark.vm
KVERS = host_kernels(Sysroot("/"))  # oldest first, as tests/conftest.py lists them
KVER = next((k for k in KVERS if k.startswith("6.1.")), KVERS[0] if KVERS else None)


@pytest.fixture(scope="module")
def debian_root() -> Path:
    """The cached mmdebstrap tree of the CI root (made on first use: about a minute)."""
    spec = dr.ci_spec()
    cached = dr.cache_root() / spec.key() / "complete.json"
    if not cached.exists() and (why := dr.registry_reachable()):
        pytest.skip(f"Debian's package archive is needed to make the root: {why}")
    tree, _ = dr.make_root(spec, log=lambda _msg: None)
    return tree


@pytest.fixture(scope="module")
def booted(debian_root: Path, tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> BootResult:
    """One boot of the root built with initoverlayfs + the systemd module."""
    if KVER is None:
        pytest.skip("no kernel installed (apt-get install linux-image-cloud-amd64)")
    kver = KVER
    work = tmp_path_factory.mktemp("realroot")
    tree = dr.copy_tree(debian_root, work / "tree")
    dr.configure(tree)
    dr.add_host_kernel(tree, kver)
    dr.install_bench_units(tree)
    image = "initoverlayfs-{kver}.img"
    profile = work / "profile.yaml"
    profile.write_text(
        dr.profile_text("CI boot", "initoverlayfs", kver, systemd=True, stage2_image=image)
        + "panic: poweroff\n"  # a stage-one failure ends the boot instead of waiting in a shell
    )
    out = work / "out"
    run(
        [
            sys.executable,
            "-m",
            "initbuild",
            "build",
            str(profile),
            "--sysroot",
            str(tree),
            "-o",
            str(out),
            "-q",
        ]
    )
    (tree / "boot" / image.format(kver=kver)).write_bytes((out / image.format(kver=kver)).read_bytes())
    disk = dr.make_disk(tree, work / "root.img", align=PMEM_ALIGN, extra_mb=128)
    vm = VM(
        kernel=tree / "boot" / f"vmlinuz-{kver}",
        initrd=out / f"initramfs-{kver}.img",
        append="ro quiet",  # no root=: stage two's sysroot.mount from the image's defaults
        memory_mb=1024,
        disks=(Disk(disk, kind="pmem"),),
        accel="tcg",
        icount=True,
        timeout=900,
        expect=(dr.POWER_DOWN,),
    )
    return boot(vm, log_path=log_dir / f"realroot-{kver}.log")


def test_real_debian_reaches_multi_user(booted: BootResult) -> None:
    r = dr.read_boot(booted.console)
    assert r.reached, f"no `initbuild-marker: {dr.UP_MARKER}` line\n{booted.explain()}"
    assert r.initrd_systemd, "stage two's systemd never said 'Running in initrd'"
    assert r.switch_unit is not None, "the real root's first unit never ran"
    assert r.failed_units == 0, f"failed units: {r.failed}\n{booted.explain()}"


def test_real_debian_powers_off_cleanly(booted: BootResult) -> None:
    r = dr.read_boot(booted.console)
    assert r.powered_down, f"no '{dr.POWER_DOWN}'\n{booted.explain()}"
    # the warnings a user saw on the console of initbuild's boots and not on initramfs-tools' (issue #11)
    seen = {w: n for w, n in r.warnings.items() if n}
    assert not seen, f"console warnings {seen}\n{booted.explain()}"


def test_real_debian_root_from_the_image_defaults(booted: BootResult) -> None:
    assert "sysroot.mount written from the image's defaults" in booted.console, booted.explain()

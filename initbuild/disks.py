"""Disk images for boot tests and benchmarks, built without root (mkfs.ext4 -d).

A "real root" here is a tiny busybox tree whose /sbin/init prints the final marker (uptime and
MemAvailable, like the test module) and powers off: the end of kernel -> stage one -> stage two
-> real root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .run import find_tool, run

ROOT_INIT = """#!/bin/sh
# The real root's init, made by initbuild.disks for boot tests: report and power off.
export PATH=/bin
read -r up idle < /proc/uptime
mem=$(sed -n 's/^MemAvailable: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo)
line="initbuild-marker: {name} uptime=$up memavailable_kb=$mem"
echo "<2>$line" > /dev/kmsg
echo "$line" > /dev/console
{extra}
sync
poweroff -f
"""


def make_root_tree(
    dest: Path, *, marker: str = "real-root", extra: str = "", busybox: str = "/bin/busybox"
) -> Path:
    """A minimal root: busybox, /sbin/init printing `marker`, and the usual mount points."""
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "boot", "etc"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(busybox), dest / "bin" / "busybox")
    for applet in ("sh", "sed", "cat", "sync", "poweroff", "dmesg", "grep", "mount", "ls"):
        os.symlink("busybox", dest / "bin" / applet)
    init = dest / "sbin" / "init"
    init.write_text(ROOT_INIT.format(name=marker, extra=extra))
    init.chmod(0o755)
    return dest


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def make_ext4(
    src: Path,
    image: Path,
    *,
    label: str = "",
    uuid: str | None = None,
    extra_mb: int = 16,
    align: int = 1 << 20,
) -> Path:
    """An ext4 image holding `src` (mkfs.ext4 -d: no root, no loop device)."""
    mkfs = find_tool("mkfs.ext4", reason="build test disks", hint="apt-get install e2fsprogs")
    size = dir_size(src) * 5 // 4 + extra_mb * (1 << 20)
    size = -(-size // align) * align
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    argv = [mkfs, "-q", "-F", "-t", "ext4", "-d", str(src), "-E", "root_owner=0:0", "-b", "4096"]
    if label:
        argv += ["-L", label]
    if uuid:
        argv += ["-U", uuid]
    run([*argv, str(image)], env={"E2FSPROGS_FAKE_TIME": "1700000000"})
    return image


def pad_to(image: Path, align: int) -> Path:
    """Grow a file to a multiple of `align` (virtio-pmem wants 2 MiB)."""
    size = image.stat().st_size
    if size % align:
        with open(image, "r+b") as f:
            f.truncate(size + align - size % align)
    return image

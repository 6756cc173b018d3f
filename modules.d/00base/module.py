"""Base userspace: one busybox, else the host's tools.

busybox-static needs no shared library at all; Debian's dynamic `busybox` (what initramfs-tools pulls
in) brings only libc, libresolv and the dynamic loader (the ELF closure of add_binary): on a Debian
bookworm tree stage one is 1.85 MB with busybox-static, 2.34 MB with the dynamic busybox, and 9.26 MB
with neither (the host's sh, util-linux, coreutils and kmod with their libraries).
"""

import posixpath

# The commands the generated /init scripts and hooks run. Keep in sync with templates/*.sh.
APPLETS = (
    "sh",
    "find",
    "sort",
    "sha256sum",
    "less",
    "mount",
    "umount",
    "switch_root",
    "chroot",
    "insmod",
    "modprobe",
    "losetup",
    "findfs",
    "mkdir",
    "cat",
    "echo",
    "sleep",
    "grep",
    "sed",
    "awk",
    "cut",
    "tr",
    "od",
    "dd",
    "readlink",
    "basename",
    "dirname",
    "uname",
    "dmesg",
    "poweroff",
    "reboot",
    "setsid",
    "cttyhack",
    "ls",
    "ln",
    "rm",
    "cp",
    "mv",
    "printf",
    "test",
    "[",
    "true",
    "false",
    "sync",
    "stat",
    "head",
    "tail",
    "wc",
    "ps",
    "kill",
    "env",
    "lsmod",
    "mknod",
    "chmod",
)
# Without busybox: the same commands from util-linux, coreutils and kmod on the host (busybox's
# console helper has no host equivalent). Only these three are required; the rest when present.
BUSYBOX_ONLY = ("cttyhack",)
HOST_REQUIRED = ("sh", "mount", "switch_root")
HOST_TOOLS = tuple(a for a in APPLETS if a not in BUSYBOX_ONLY)


def check(ctx):
    if ctx.find_binary("busybox") or ctx.find_binary("sh"):
        return None  # keep module.yaml's check: include
    return 1, "neither busybox nor sh found in the sysroot"


def install(ctx):
    if ctx.find_binary("busybox"):
        path = ctx.add_binary("busybox")
        # Applet links sit next to the real busybox file, pointing at it by a relative name.
        bindir = posixpath.dirname(ctx.canon(ctx.sysroot.resolve(path)))
        for applet in APPLETS:
            ctx.add_symlink(f"{bindir}/{applet}", "busybox")
        return
    for tool in HOST_TOOLS:
        ctx.add_binary(tool, optional=tool not in HOST_REQUIRED)

"""systemd in stage two: the initrd's own service manager, as dracut's systemd modules set it up.

Stage two's /init hands over to systemd at once (/etc/initbuild/stage2-init). systemd finds
/etc/initrd-release and runs initrd.target: udev settles the devices, systemd-fstab-generator turns
root=/rootfstype=/rootflags= into sysroot.mount, and initrd-switch-root.service moves /sysroot to /
and executes the real root's init. Over initoverlayfs
/ is the overlay (not the initramfs), so systemd moves the new root over it without deleting anything.
"""

SYSTEMD = "/usr/lib/systemd/systemd"
UNIT_DIR = "/usr/lib/systemd/system"

# The units of an initrd boot; each is copied when the sysroot has it.
UNITS = (
    # targets
    "initrd.target", "initrd-fs.target", "initrd-root-device.target", "initrd-root-fs.target",
    "initrd-switch-root.target", "initrd-usr-fs.target", "sysinit.target", "basic.target",
    "local-fs-pre.target", "local-fs.target", "swap.target", "slices.target", "sockets.target",
    "paths.target", "timers.target", "cryptsetup-pre.target", "cryptsetup.target",
    "remote-fs-pre.target", "remote-fs.target", "network-pre.target", "network.target",
    "emergency.target", "rescue.target", "shutdown.target", "umount.target", "final.target",
    "reboot.target", "poweroff.target", "halt.target",
    # services and sockets
    "initrd-cleanup.service", "initrd-parse-etc.service", "initrd-switch-root.service",
    "initrd-udevadm-cleanup-db.service", "emergency.service", "rescue.service",
    "kmod-static-nodes.service", "systemd-tmpfiles-setup-dev.service",
    "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-fsck-root.service", "systemd-fsck@.service",
    "systemd-reboot.service", "systemd-poweroff.service", "systemd-halt.service",
)  # fmt: skip


def install(ctx):
    have = [u for u in UNITS if ctx.sysroot.exists(f"{UNIT_DIR}/{u}")]
    for unit in have:
        ctx.add_file(f"{UNIT_DIR}/{unit}")
    # the static .wants links of the shipped units, among themselves only
    names = set(have)
    for unit in have:
        wants = f"{UNIT_DIR}/{unit}.wants"
        if not ctx.sysroot.is_dir(wants):
            continue
        for link in sorted(ctx.sysroot.listdir(wants)):
            if link in names:
                ctx.add_symlink(f"{wants}/{link}", f"../{link}")
    ctx.add_symlink(f"{UNIT_DIR}/default.target", "initrd.target", override=True)
    # systemd is in an initrd when this file exists (and names the initrd in its messages)
    release = ""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if ctx.sysroot.is_file(path):
            release = ctx.sysroot.read_text(path)
            break
    ctx.add_data(
        "/etc/initrd-release", release + 'VARIANT="initbuild initrd"\n', why="an initrd, for systemd"
    )
    # stage two's /init starts, then hands over to systemd (templates/init-stage2.sh.j2)
    ctx.add_data("/etc/initbuild/stage2-init", SYSTEMD + "\n", why="stage two's init")

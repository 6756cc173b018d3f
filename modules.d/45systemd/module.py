"""systemd in stage two: the initrd's own service manager, as dracut's systemd modules set it up.

Stage two's /init hands over to systemd at once (/etc/initbuild/stage2-init). systemd finds
/etc/initrd-release and runs initrd.target: udev settles the devices, systemd-fstab-generator turns
root=/rootfstype=/rootflags= into sysroot.mount, and initrd-switch-root.service moves /sysroot to /
and executes the real root's init. Over initoverlayfs
/ is the overlay (not the initramfs), so systemd moves the new root over it without deleting anything.

Host-aware initoverlayfs builds (docs/hostonly.md) replay only the block devices' events at udev's
coldplug: stage one has already loaded the drivers of this machine's root and boot devices, and all
the initrd waits for is the root's /dev/disk/by-* link and its .device unit. Replaying every device
of the machine (PCI, ACPI, input, ...) cost 0.34 s of the 1.2 s that systemd spent in the initrd
under TCG (qemu/realroot.py); the real root replays them all anyway. `initbuild.coldplug=all` on the kernel
command line restores the full replay (say, for a USB keyboard in the initrd's emergency shell);
generic builds and plain images (no stage one: udev loads the storage drivers) replay everything.
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


COLDPLUG = "/lib/initbuild/udev-coldplug"
COLDPLUG_SCRIPT = """#!/bin/sh
# initbuild (modules.d/45systemd): udev's coldplug in a host-aware systemd stage two. Stage one loaded
# the drivers of this machine's root and boot devices; the initrd needs their block devices' events
# (the /dev/disk/by-* links, the .device units), the real root replays every other device itself.
# initbuild.coldplug=all on the kernel command line replays everything, as systemd's own unit does.
case " $(cat /proc/cmdline) " in
*" initbuild.coldplug=all "*)
    exec udevadm trigger --type=all --action=add \\
        --prioritized-subsystem=module,block,tpmrm,net,tty,input ;;
esac
exec udevadm trigger --type=all --action=add --subsystem-match=block
"""
COLDPLUG_DROPIN = f"""# initbuild (modules.d/45systemd): host-aware build, block devices only ({COLDPLUG})
[Service]
ExecStart=
ExecStart=-{COLDPLUG}
"""


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
    # systemd taints the system ("var-run-bad") unless /var/run leads to /run
    ctx.add_symlink("/var/run", "../run")
    # only over initoverlayfs: a plain image's /init hands over to systemd before loading any driver,
    # so there udev's full coldplug is what loads the storage drivers
    stage_one_loaded = str(ctx.profile.mode) == "initoverlayfs"
    if ctx.host_mode and stage_one_loaded and "systemd-udev-trigger.service" in names:
        ctx.add_data(COLDPLUG, COLDPLUG_SCRIPT, mode=0o755, why="block-only coldplug (host-aware)")
        ctx.add_data(
            "/etc/systemd/system/systemd-udev-trigger.service.d/initbuild-coldplug.conf",
            COLDPLUG_DROPIN,
            why="block-only coldplug (host-aware)",
        )
    # stage two's /init starts, then hands over to systemd (templates/init-stage2.sh.j2)
    ctx.add_data("/etc/initbuild/stage2-init", SYSTEMD + "\n", why="stage two's init")

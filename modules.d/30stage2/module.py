"""Stage two's way out of an initoverlayfs root: the pivot-root program (formats/mountprog.py).

Over initoverlayfs stage two's / is an overlay, not the kernel's rootfs, so busybox switch_root
refuses it. Moving the real root over it (mount --move + chroot) left the overlay, its EROFS lower
and the loop device mounted underneath the real root for the whole life of the system: memory, and a
loop device systemd-shutdown cannot detach. pivot-root does what systemd's switch-root does when /
is not rootfs: pivot_root(".", ".") and a lazy umount of the old root. /init falls back to the move
when the program is absent (another architecture) or fails.
"""

from initbuild import log
from initbuild.formats import mountprog

PIVOT_ROOT = "/usr/lib/initbuild/pivot-root"  # keep in sync with IB_PIVOT_ROOT in templates/initlib.sh


def install(ctx):
    # also in a plain initramfs (rootfs, which switch_root empties), whose tree stays stage two's
    machine = mountprog.userspace_machine(ctx.sysroot, ctx.find_binary)
    if machine != mountprog.EM_X86_64:
        name = mountprog.MACHINE_NAMES.get(machine or 0, "unknown")
        log.verbose(f"no pivot-root for {name}: stage two stays mounted under the real root")
        return
    ctx.add_data(
        PIVOT_ROOT,
        mountprog.build(program=mountprog.PIVOT_PROGRAM),
        mode=0o755,
        why="pivot_root to the real root, detaching stage two",
    )

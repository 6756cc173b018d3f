"""The root filesystem check the installed system asks for, run before the root is mounted.

A system asks for a check of its root in /etc/fstab: the sixth field (fs_passno) of the `/` entry is
1 (or more). initramfs-tools then checks the root in the initramfs (`fsck -a`), before it is mounted,
and tells the real system so (/run/initramfs/fsck-root: Debian's systemd-fsck-root.service and
checkroot.sh skip their own check). This module does the same: when the sysroot's fstab asks, stage
two gets util-linux's `fsck` and the checker of the root's type (`fsck.ext4`, e2fsck's hard link, for
ext4) with their libraries, and /etc/initbuild/fsck.conf records what the build read. Stage two's
/init (templates/init-stage2.sh.j2, ib_fsck_root) runs the check before the root is mounted; with
modules.d/45systemd, systemd's fstab generator finds the checker and orders systemd-fsck before
sysroot.mount itself.

When stage one holds the root's filesystem (stage two's image is a file on it: bootfs is the root
device), the initrd cannot check it: e2fsck refuses a filesystem the kernel has mounted. The check is
then left to the real system, which checks its read-only mounted root (systemd-fsck-root.service);
/init says so, and a drop-in keeps systemd-fsck in the initrd from trying. When the build already
knows it (overlay.bootfs is the fstab's root spec, as host-aware builds write it on a stock Debian
layout), the module is not included at all.
"""

import posixpath

from initbuild.modules import Check

FSTAB = "/etc/fstab"
CONF = "/etc/initbuild/fsck.conf"
HELD = "/etc/initbuild/root-held"  # written by stage two's /init (IB_FSCK_HELD); systemd hides /run
# checkers whose fsck.<type> is not shipped under that name
CHECKERS = {"ext2": "e2fsck", "ext3": "e2fsck", "ext4": "e2fsck"}
DROPIN = f"""# initbuild (modules.d/50fsck): stage one holds the root's filesystem (stage two's image is a
# file on it), so it cannot be checked here; the real system checks its read-only root instead.
[Unit]
ConditionPathExists=!{HELD}
"""


def _unescape(field: str) -> str:
    """fstab's octal escapes (\\040 for a space), as getmntent(3) decodes them."""
    out, i = "", 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out += chr(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i]
            i += 1
    return out


def root_entry(text: str) -> tuple[str, str, str, int] | None:
    """(spec, fstype, options, passno) of the last `/` entry of an fstab, or None."""
    found = None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3 or _unescape(fields[1]) != "/":
            continue
        opts = fields[3] if len(fields) > 3 else "defaults"
        try:
            passno = int(fields[5]) if len(fields) > 5 else 0
        except ValueError:
            passno = 0
        found = (_unescape(fields[0]), fields[2], opts, passno)
    return found


def _asked(sysroot):
    """(entry, reason): the fstab's root entry when it asks for a check, else None and why not."""
    if not sysroot.is_file(FSTAB):
        return None, f"the sysroot has no {FSTAB}"
    entry = root_entry(sysroot.read_text(FSTAB))
    if entry is None:
        return None, f"{FSTAB} has no entry for /"
    if entry[3] <= 0:
        return None, f"{FSTAB} asks no check of / (passno {entry[3]})"
    return entry, f"{FSTAB} asks for a check of / ({entry[0]}, {entry[1]}, passno {entry[3]})"


def _checker(ctx, fstype):
    for name in (f"fsck.{fstype}", CHECKERS.get(fstype, "")):
        if name and ctx.find_binary(name):
            return name
    return None


def _root_holds_stage_two(profile, spec):
    """Whether stage two's image is a file on the root's own filesystem (bootfs names the root as
    the fstab does, as a host-aware build writes it): stage one then holds the root mounted."""
    ov = profile.overlay
    return (
        str(profile.mode) == "initoverlayfs" and bool(ov.fs) and ov.attach != "direct" and ov.bootfs == spec
    )


def check(ctx):
    entry, why = _asked(ctx.sysroot)
    if entry is None:
        return Check.ON_DEMAND, why
    if _root_holds_stage_two(ctx.profile, entry[0]):
        # nothing in the initrd could run: fsck, e2fsck and their libraries (~2 MB) would be dead weight
        return (
            Check.ON_DEMAND,
            f"{why}, but stage two's image is on the root ({entry[0]}): the real system checks it",
        )
    if entry[1] != "auto" and _checker(ctx, entry[1]) is None:
        return Check.UNAVAILABLE, f"{why}, but the sysroot has no fsck.{entry[1]}"
    return Check.INCLUDE, why


def install(ctx):
    entry, why = _asked(ctx.sysroot)
    spec, fstype, passno = (entry[0], entry[1], entry[3]) if entry else ("", "auto", 1)
    ctx.add_binary("fsck", optional=True)
    types = [fstype] if fstype != "auto" else ["ext4"]
    for t in types:
        checker = _checker(ctx, t)
        if checker is None:
            continue
        path = ctx.add_binary(checker)
        if checker != f"fsck.{t}" and path:  # /sbin/fsck runs fsck.<type>
            ctx.add_symlink(f"{posixpath.dirname(path)}/fsck.{t}", posixpath.basename(path))
    ctx.add_data(
        CONF,
        f"# {why}\nroot {spec or '-'}\nfstype {fstype}\npassno {passno}\n",
        why="the root check the system's fstab asks for",
    )
    for unit in ("systemd-fsck-root.service", "systemd-fsck@.service"):
        dest = f"/etc/systemd/system/{unit}.d/initbuild-root-held.conf"
        ctx.add_data(dest, DROPIN, why="no check of a root stage one holds")

"""udev in stage two: systemd-udevd started before the real root is mounted, stopped before the switch.

/init loads the drivers it knows on its own (the on-demand tables); udevd adds what a full system's
early boot has: the /dev/disk/by-* links (root=/dev/disk/by-label/... works), the rules, and drivers for
any other device, loaded by udev's kmod builtin from the binary module indexes (libkmod reads only
modules.*.bin, so the module asks for them).
"""

import re

from initbuild.modules import Check

UDEVD = ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")

START = """# initbuild udev module: start systemd-udevd, replay the kernel's device events, wait for them.
_ib_before=" $(awk '{{ printf "%s ", $1 }}' /proc/modules)"
if {udevd} --daemon --resolve-names=never; then
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
    _ib_t=${{IB_ARG_udev_timeout:-30}}
    udevadm settle --timeout="$_ib_t" || warn "udevadm settle: events still queued after ${{_ib_t}}s"
    _ib_new=
    while read -r _ib_m _ib_rest; do
        case "$_ib_before" in *" $_ib_m "*) ;; *) _ib_new="$_ib_new $_ib_m" ;; esac
    done < /proc/modules
    info "udev settled; drivers udev loaded:${{_ib_new:- none}}"
else
    warn "systemd-udevd did not start: going on with the device nodes of devtmpfs"
fi
"""

STOP = """# initbuild udev module: stop systemd-udevd; the real root starts its own.
udevadm control --exit || warn "udevadm control --exit failed"
"""


def check(ctx):
    if not any(ctx.sysroot.exists(p) for p in UDEVD):
        return Check.UNAVAILABLE, f"systemd-udevd not found in the sysroot ({' or '.join(UDEVD)})"
    return None


GROUP_RE = re.compile(r'\bGROUP\s*:?=\s*"([^"]+)"')


def rule_groups(ctx) -> str:
    """/etc/group lines (members dropped) for the groups the shipped rules name: without them udevd
    logs "Unknown group 'disk', ignoring" for every such rule and leaves the nodes root-owned."""
    names = set()
    for entry in ctx.manifest:
        if "/udev/rules.d/" in entry.path and entry.source:
            names.update(GROUP_RE.findall(ctx.sysroot.read_text(entry.source)))
    if not names or not ctx.sysroot.is_file("/etc/group"):
        return ""
    lines = []
    for line in ctx.sysroot.read_text("/etc/group").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] in names:
            lines.append(f"{fields[0]}:x:{fields[2]}:")
    return "".join(f"{line}\n" for line in lines)


def install(ctx):
    udevd = next(p for p in UDEVD if ctx.sysroot.exists(p))
    ctx.add_binary(udevd)
    ctx.add_data("/lib/initbuild/hooks/pre-mount/40udev.sh", START.format(udevd=udevd), mode=0o644)
    ctx.add_data("/lib/initbuild/hooks/pre-switch/40udev.sh", STOP, mode=0o644)
    ctx.want_binary_module_indexes()
    groups = rule_groups(ctx)
    if groups:
        ctx.add_data("/etc/group", groups, why="the groups udev rules name")

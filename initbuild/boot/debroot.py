"""A real Debian bookworm root made with mmdebstrap, for the real-system benchmark and its CI boot.

`qemu/realroot.py` (the benchmark) and `tests/vm/test_realroot.py` (the CI boot) share this: making
the tree (cached by the hash of what goes into it), preparing a per-run copy with a fixed filesystem
UUID and Debian's /etc/fstab, installing the measuring units, running a command inside the tree, and
making the ext4 disk (mkfs.ext4 -d: no root, no loop device).

Rootless: mmdebstrap --mode=auto picks `root` when run as root and `unshare` otherwise; unshare needs
user namespaces and a /etc/subuid + /etc/subgid range for the user (then the tree's files belong to
that range: copy, chroot and mkfs run under `unshare --map-users=auto` or mmdebstrap's own
`--customize-hook`s, which this module does not do yet). Everything below that needs root is `chroot`
into the tree (update-initramfs, dracut); the disk itself is made without root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..run import find_tool, run
from .disks import make_ext4, pad_to

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
PROBE_URL = "http://deb.debian.org/debian/dists/bookworm/InRelease"
# What the user installed (issue #11); the generator package is added per root.
BENCH_PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "e2fsprogs",
    "busybox-static",
    "openssh-server",
    "cron",
    "rsyslog",
)
KERNEL_PACKAGES = {"6.1": "linux-image-cloud-amd64", "6.12": "linux-image-6.12-cloud-amd64"}
# Bump when the recipe (not the package list) changes: it is part of the cache key.
RECIPE = 1

# Fixed identities: every run makes the same disk, and machine-id is not generated at boot (a first
# boot runs other units, and an empty machine-id on a read-only root is a transient random one).
ROOT_UUID = "1b0b0b5e-de61-4000-8000-00000000b001"
MACHINE_ID = "5eed0000000040008000000000000b01"
FSTAB = (
    "# /etc/fstab: static file system information (as Debian's installer writes it)\n"
    f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
)

# -- what the booted system reports ------------------------------------------------------------------
# Marker lines follow initbuild.boot.harness (`initbuild-marker: NAME uptime=S memavailable_kb=N`).
SWITCH_MARKER = "switch"  # the real root's first unit (DefaultDependencies=no): MemAvailable there
UP_MARKER = "multi-user"  # after multi-user.target, with the failed-unit count
DMESG_BEGIN = "initbuild-bench: dmesg begin"
DMESG_END = "initbuild-bench: dmesg end"
ANALYZE_BEGIN = "initbuild-bench: systemd-analyze begin"
ANALYZE_END = "initbuild-bench: systemd-analyze end"

_MEM = "mem=$(sed -n 's/^MemAvailable: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo)"
SWITCH_SCRIPT = f"""#!/bin/sh
# initbuild benchmark: the real root's first unit; MemAvailable right after the switch.
read -r up _ < /proc/uptime
{_MEM}
echo "<5>initbuild-marker: {SWITCH_MARKER} uptime=$up memavailable_kb=$mem" > /dev/kmsg
"""
BENCH_SCRIPT = f"""#!/bin/sh
# initbuild benchmark: multi-user.target reached. One marker line, systemd-analyze, power off.
read -r up _ < /proc/uptime
{_MEM}
echo "<5>initbuild-bench: multi-user reached" > /dev/kmsg
# systemd-analyze needs the boot finished (no job left): wait for it, then count failed units
systemctl is-system-running --wait > /dev/null 2>&1
failed=$(systemctl list-units --failed --no-legend | wc -l)
echo "initbuild-marker: {UP_MARKER} uptime=$up memavailable_kb=$mem failed_units=$failed" > /dev/console
{{
    echo "{ANALYZE_BEGIN}"
    systemd-analyze 2>&1
    systemctl list-units --failed --no-legend --plain 2>&1 | sed 's/^/failed unit: /'
    echo "{ANALYZE_END}"
}} > /dev/console
systemctl poweroff
"""
# systemd-shutdown runs these after its last unmount/detach round: the whole kernel log (with the
# shutdown's own warnings, e.g. a loop device it could not detach) reaches the console.
SHUTDOWN_SCRIPT = f"""#!/bin/sh
{{ echo "{DMESG_BEGIN}"; dmesg; echo "{DMESG_END}"; }} > /dev/console 2>&1
"""
SWITCH_UNIT = """[Unit]
Description=initbuild benchmark: MemAvailable at the switch to the real root
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/initbuild-bench-switch

[Install]
WantedBy=sysinit.target
"""
BENCH_UNIT = """[Unit]
Description=initbuild benchmark: report multi-user.target, then power off
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/initbuild-bench

[Install]
WantedBy=multi-user.target
"""


# Nothing about disks: `hostonly: yes` reads the root's UUID and type, and the filesystem that holds
# /boot, from the tree's /etc/fstab (docs/hostonly.md), and fails the build if it cannot. Only the
# image's name is pinned when a variant uses its own (several variants share one disk).
DEFAULT_STAGE2 = "initoverlayfs-{kver}.img"
PROFILE = """# initbuild profile of a real Debian root (initbuild/boot/debroot.py): {title}
mode: {mode}
kernel: {kver}
modules: [{modules}]
hostonly: yes
# the test machine's disk (emulated persistent memory, deterministic under -icount): not the host's
boot_drivers: [{boot_drivers}]
"""


def profile_text(
    title: str,
    mode: str,
    kver: str,
    *,
    systemd: bool,
    stage2_image: str | None,
    boot_drivers: tuple[str, ...] = ("virtio_pmem", "nd_pmem"),
) -> str:
    """An initbuild profile for the root disk of this module (stage two at /boot/`stage2_image`),
    host-aware: the disk keys come from the tree's /etc/fstab."""
    text = PROFILE.format(
        title=title,
        mode=mode,
        kver=kver,
        modules="systemd" if systemd else "",
        boot_drivers=", ".join(boot_drivers),
    )
    if stage2_image and stage2_image != DEFAULT_STAGE2:
        text += f"overlay:\n  fs: /boot/{stage2_image}\n"
    return text


def cache_root() -> Path:
    """$INITBUILD_CACHE, else $XDG_CACHE_HOME/initbuild, else ~/.cache/initbuild (never the repo)."""
    base = os.environ.get("INITBUILD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "initbuild"
    )
    return Path(base) / "realroot"


def registry_reachable(timeout: float = 5.0) -> str | None:
    """None when Debian's archive answers; else why not (the one reason to skip the CI boot)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(PROBE_URL, method="HEAD"), timeout=timeout) as r:
            return None if r.status == 200 else f"{PROBE_URL} answered HTTP {r.status}"
    except OSError as e:
        return f"{PROBE_URL} cannot be reached: {e}"


@dataclass(frozen=True)
class RootSpec:
    """What goes into a tree: the cache key is the hash of all of it."""

    packages: tuple[str, ...]
    variant: str = "important"  # mmdebstrap's default: Priority required + important, like debootstrap

    def key(self) -> str:
        blob = json.dumps([RECIPE, SUITE, MIRRORS, self.variant, sorted(self.packages)]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def bench_spec(kernel: str, generator: str) -> RootSpec:
    """The benchmark's root: the issue's packages, the kernel series' package and one initrd generator."""
    return RootSpec(tuple(BENCH_PACKAGES) + (KERNEL_PACKAGES[kernel], generator))


def ci_spec() -> RootSpec:
    """The CI boot's root: Debian's minimal apt variant with systemd, udev and busybox-static; no
    kernel package (the host's kernel and modules are copied in: no initramfs-tools run at install)."""
    return RootSpec(("systemd-sysv", "udev", "kmod", "e2fsprogs", "busybox-static"), variant="apt")


def add_host_kernel(tree: Path, kver: str) -> None:
    """The host's /boot/vmlinuz-KVER, config and /lib/modules/KVER, into the tree (a CI root has none)."""
    for name in (f"vmlinuz-{kver}", f"config-{kver}", f"System.map-{kver}"):
        if os.path.exists(f"/boot/{name}"):
            shutil.copy2(f"/boot/{name}", tree / "boot" / name)
    dest = tree / "usr" / "lib" / "modules" / kver
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", f"/lib/modules/{kver}", str(dest)])


def make_root(spec: RootSpec, *, log=print) -> tuple[Path, float]:  # type: ignore[no-untyped-def]
    """The cached tree of `spec` (made with mmdebstrap when missing) and the seconds making it took."""
    top = cache_root() / spec.key()
    tree, stamp = top / "tree", top / "complete.json"
    if stamp.exists() and tree.is_dir():
        return tree, 0.0
    mmdebstrap = find_tool(
        "mmdebstrap", reason="make a Debian root", hint="apt-get install mmdebstrap debian-archive-keyring"
    )
    if top.exists():
        shutil.rmtree(top)
    top.mkdir(parents=True)
    log(f"mmdebstrap: {spec.variant} + {' '.join(spec.packages)} -> {tree}")
    t0 = time.perf_counter()
    run(
        [
            mmdebstrap, "--mode=auto", f"--variant={spec.variant}", "--include=" + ",".join(spec.packages),
            '--aptopt=Acquire::Retries "3"', SUITE, str(tree), *MIRRORS,
        ],
        capture=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"spec": [spec.variant, *spec.packages], "seconds": round(seconds, 1)}))
    return tree, seconds


def tree_kernels(tree: Path) -> list[str]:
    """Kernel versions the tree has both /boot/vmlinuz-V and /lib/modules/V of."""
    return sorted(
        p.name[len("vmlinuz-") :]
        for p in (tree / "boot").glob("vmlinuz-*")
        if (tree / "lib" / "modules" / p.name[len("vmlinuz-") :]).is_dir()
    )


def copy_tree(src: Path, dest: Path) -> Path:
    """A per-run copy of a cached tree (the cache stays as mmdebstrap left it)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(src), str(dest)])
    return dest


def configure(tree: Path, *, hostname: str = "realroot") -> None:
    """What an installer writes: /etc/fstab by UUID, a hostname and a fixed machine-id."""
    (tree / "etc" / "fstab").write_text(FSTAB)
    (tree / "etc" / "hostname").write_text(hostname + "\n")
    (tree / "etc" / "machine-id").write_text(MACHINE_ID + "\n")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _enable(tree: Path, unit: str, target: str) -> None:
    wants = tree / "etc" / "systemd" / "system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"/etc/systemd/system/{unit}")


def install_bench_units(tree: Path) -> None:
    """The measuring units (files in the tree, no package): a switch marker, a multi-user marker that
    powers off, and a shutdown hook that dumps the kernel log."""
    sbin = tree / "usr" / "local" / "sbin"
    units = tree / "etc" / "systemd" / "system"
    _write(sbin / "initbuild-bench-switch", SWITCH_SCRIPT, 0o755)
    _write(sbin / "initbuild-bench", BENCH_SCRIPT, 0o755)
    _write(units / "initbuild-bench-switch.service", SWITCH_UNIT)
    _write(units / "initbuild-bench.service", BENCH_UNIT)
    _enable(tree, "initbuild-bench-switch.service", "sysinit.target")
    _enable(tree, "initbuild-bench.service", "multi-user.target")
    _write(
        tree / "usr" / "lib" / "systemd" / "system-shutdown" / "initbuild-bench.shutdown",
        SHUTDOWN_SCRIPT,
        0o755,
    )


def in_tree(tree: Path, argv: list[str], *, env: dict[str, str] | None = None) -> float:
    """Run argv chrooted into the tree with /proc, /sys and /dev (a private mount namespace, so nothing
    stays mounted); returns the seconds it took. Needs root (see the module docstring)."""
    script = (
        'set -e; t="$1"; shift; mount -t proc proc "$t/proc"; mount -t sysfs sys "$t/sys"; '
        'mount --rbind /dev "$t/dev"; exec chroot "$t" "$@"'
    )
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", **(env or {})}
    t0 = time.perf_counter()
    run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(tree), *argv],
        env=full_env,
    )
    return time.perf_counter() - t0


def make_disk(tree: Path, image: Path, *, align: int, extra_mb: int = 384) -> Path:
    """The root disk: ext4 with the fixed UUID, `extra_mb` free for the running system, sized for pmem."""
    return pad_to(
        make_ext4(tree, image, label="debian-root", uuid=ROOT_UUID, extra_mb=extra_mb, align=align), align
    )


# -- reading a boot ---------------------------------------------------------------------------------

# Console lines the issue lists (#11): counted per boot in the kernel log dumped at shutdown.
WARNINGS = ("Can't open blockdev", "Failed to find module", "Could not detach loopback")
POWER_DOWN = "reboot: Power down"
_PRINTK = re.compile(r"\[\s*(\d+\.\d+)\] (.*)$")
_UP = re.compile(rf"initbuild-marker: {UP_MARKER} uptime=([\d.]+) memavailable_kb=(\d+) failed_units=(\d+)")
_SWITCH = re.compile(rf"initbuild-marker: {SWITCH_MARKER} uptime=([\d.]+) memavailable_kb=(\d+)")
_STARTUP = re.compile(r"Startup finished in (.*?) = ([\d.]+\s*\w+)")
_PART = re.compile(r"((?:[\d.]+(?:min|ms|us|s)\s*)+)\((\w+)\)")
_REACHED = re.compile(
    r"(?:multi-user|graphical)\.target reached after ((?:[\d.]+(?:min|ms|us|s)\s*)+) in userspace"
)
_NOTABLE = re.compile(r"fail|error|warn|could not|can't|cannot|unable|timed out", re.I)


def _seconds(text: str) -> float:
    """systemd's time spans: `1min 2.345s`, `812ms`, `1.2s`."""
    units = {"min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+)(min|ms|us|s)", text))


def kernel_log(console: str) -> list[tuple[float, str]]:
    """The kernel log the shutdown hook dumped: (printk seconds, message)."""
    start, end = console.rfind(DMESG_BEGIN), console.rfind(DMESG_END)
    if start < 0:
        return []
    out = []
    for line in console[start : end if end > start else None].splitlines():
        if m := _PRINTK.search(line.rstrip("\r")):
            out.append((float(m.group(1)), m.group(2)))
    return out


@dataclass
class BootReading:
    """What one boot of the real system showed (guest seconds; None when the boot never got there)."""

    run_init: float | None = None  # printk: Run /init as init process
    switch: float | None = (
        None  # printk of the real root's systemd version line (last "running in system mode")
    )
    initrd_systemd: bool = False  # a systemd ran in the initrd ("Running in initrd.")
    switch_unit: float | None = None  # printk of the real root's first unit
    switch_mem_kb: int | None = None
    multi_user: float | None = None  # printk of the unit after multi-user.target
    multi_user_uptime: float | None = None
    multi_user_mem_kb: int | None = None
    failed_units: int | None = None
    failed: list[str] = field(default_factory=list)
    analyze: dict[str, float] = field(
        default_factory=dict
    )  # systemd-analyze: kernel, initrd, userspace, total, multi-user
    powered_down: bool = False
    warnings: dict[str, int] = field(default_factory=dict)
    notable: list[str] = field(default_factory=list)  # other kernel-log lines that look like trouble

    @property
    def clean_shutdown(self) -> bool:
        return self.powered_down and not self.warnings.get("Could not detach loopback")

    @property
    def reached(self) -> bool:
        return self.failed_units is not None


def read_boot(console: str) -> BootReading:
    r = BootReading(powered_down=POWER_DOWN in console)
    klog = kernel_log(console)
    for t, msg in klog:
        if r.run_init is None and "Run /init as init process" in msg:
            r.run_init = t
        elif "running in system mode" in msg:
            r.switch = t
        elif "Running in initrd" in msg:
            r.initrd_systemd = True
        elif r.switch_unit is None and (m := _SWITCH.search(msg)):
            r.switch_unit, r.switch_mem_kb = t, int(m.group(2))
        elif r.multi_user is None and "initbuild-bench: multi-user reached" in msg:
            r.multi_user = t
    if m := _UP.search(console):
        r.multi_user_uptime, r.multi_user_mem_kb, r.failed_units = (
            float(m.group(1)),
            int(m.group(2)),
            int(m.group(3)),
        )
    r.failed = re.findall(r"failed unit: (\S+)", console)
    if m := _STARTUP.search(console):
        r.analyze = {name: _seconds(span) for span, name in _PART.findall(m.group(1))}
        r.analyze["total"] = _seconds(m.group(2))
    if m := _REACHED.search(console):
        r.analyze["multi-user"] = _seconds(m.group(1))
    text = "\n".join(msg for _, msg in klog)
    r.warnings = {w: text.count(w) for w in WARNINGS}
    seen: dict[str, None] = {}
    for _, msg in klog:
        if _NOTABLE.search(msg) and not any(w in msg for w in WARNINGS):
            seen[re.sub(r"\d+", "N", msg)[:160]] = None
    r.notable = list(seen)
    return r

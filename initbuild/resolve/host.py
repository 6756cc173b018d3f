"""Host-aware builds (dracut's hostonly): what the target system says about its disks.

`detect_host(profile, sysroot, kver, image_dir)` reads the target (through the Sysroot only: its
/etc/fstab, and for the running system "/" also /proc/self/mountinfo, /proc/cmdline, /dev/disk/by-uuid
and /sys) and returns a frozen HostInfo: every detected value with where it came from, and what could
not be found and why. `resolve_profile(profile, info)` turns it into the profile the rest of the
pipeline uses: the `auto` overlay keys resolved (host values, or the GENERIC_* defaults), the root's
device, type and options baked in as command-line defaults (the boot command line wins), and
the drivers behind the disks added to boot_drivers. docs/hostonly.md describes the rules.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ResolveError
from ..profile import AUTO, GENERIC_BOOTFS, GENERIC_BOOTFSTYPE, GENERIC_FS, HostOnly, Profile
from ..sysroot import Sysroot, normpath
from .kmod import KernelModules, normalize

FSTAB = "/etc/fstab"
MOUNTINFO = "/proc/self/mountinfo"
CMDLINE = "/proc/cmdline"
BY_UUID = "/dev/disk/by-uuid"
IMAGE = "initoverlayfs-{kver}.img"
DEFAULT_IMAGE_DIR = "/boot"  # next to the kernel: where Debian's kernel hooks put the images
BLOCK_SPECS = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/")
# fstab options for mount(8) and systemd, not for the filesystem: never passed as rootflags=
NOT_ROOTFLAGS = {"defaults", "ro", "rw", "auto", "noauto", "nofail", "user", "users", "nouser", "owner",
                 "group", "_netdev", "sw"}  # fmt: skip
NOT_ROOTFLAGS_PREFIXES = ("errors=", "x-", "comment=")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Fact:
    """A detected value and where it came from ("/etc/fstab:3", "/proc/self/mountinfo: / on /dev/vda")."""

    value: str
    source: str


@dataclass(frozen=True)
class MountEntry:
    """One line of fstab or mountinfo, unescaped."""

    spec: str  # UUID=..., LABEL=..., /dev/vda1 (fstab: as written; mountinfo: the mount source)
    mountpoint: str
    fstype: str
    options: str
    passno: int  # fstab's sixth field (0 when absent, or for mountinfo)
    where: str  # "/etc/fstab:3", "/proc/self/mountinfo:27"
    devno: str = ""  # mountinfo: "major:minor"
    root: str = "/"  # mountinfo: the directory of the filesystem mounted there (bind mounts)


def unescape(field: str) -> str:
    """fstab and mountinfo fields escape blanks and backslashes as octal (\\040 is a space)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_fstab(text: str, name: str) -> list[MountEntry]:
    """fstab(5): six fields (the last three optional); comments, blank lines and swap left out."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if len(words) < 3:
            continue
        spec, mountpoint, fstype = (unescape(w) for w in words[:3])
        if fstype == "swap" or not mountpoint.startswith("/"):
            continue
        options = unescape(words[3]) if len(words) > 3 else "defaults"
        passno = int(words[5]) if len(words) > 5 and words[5].isdigit() else 0
        out.append(MountEntry(spec, normpath(mountpoint), fstype, options, passno, f"{name}:{n}"))
    return out


def parse_mountinfo(text: str, name: str) -> list[MountEntry]:
    """proc_pid_mountinfo(5): ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - TYPE SOURCE SUPER."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if "-" not in words[6:]:
            continue
        sep = words.index("-", 6)
        if len(words) < sep + 3:
            continue
        fstype, source = words[sep + 1], unescape(words[sep + 2])
        out.append(
            MountEntry(source, unescape(words[4]), fstype, words[5], 0, f"{name}:{n}", words[2],
                       unescape(words[3]))
        )  # fmt: skip
    return out


def covering(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The mount holding `path`: the longest mountpoint prefix (of equal ones, the last mounted)."""
    best: MountEntry | None = None
    for e in entries:
        inside = e.mountpoint == "/" or path == e.mountpoint or path.startswith(e.mountpoint + "/")
        if inside and (best is None or len(e.mountpoint) >= len(best.mountpoint)):
            best = e
    return best


def cmdline_args(text: str) -> dict[str, str]:
    """root=, rootfstype=, rootflags= of a kernel command line (the last one wins; "--" ends it)."""
    args: dict[str, str] = {}
    for word in text.split():
        if word == "--":
            break
        key, eq, value = word.partition("=")
        if eq and key in ("root", "rootfstype", "rootflags"):
            args[key] = value
    return args


def rootflags(options: str) -> str:
    """The fstab options the filesystem takes (rootflags=): not ro/rw/defaults/errors=/x-*/nofail..."""
    keep = [o for o in options.split(",") if o and o not in NOT_ROOTFLAGS]
    return ",".join(o for o in keep if not o.startswith(NOT_ROOTFLAGS_PREFIXES))


@dataclass(frozen=True)
class HostInfo:
    """What detection found on the target, each value with its source; `missing`: what it did not."""

    hostonly: HostOnly
    running: bool = False  # the sysroot is "/": mountinfo, the boot command line and sysfs were read
    image: Fact | None = None  # where stage two will be on the target
    bootfs: Fact | None = None
    bootfs_mount: str = ""  # its mountpoint
    bootfstype: Fact | None = None
    fs: Fact | None = None
    root: Fact | None = None
    root_on_cmdline: bool = False  # root= is on the boot command line: not baked
    rootfstype: Fact | None = None
    rootflags: Fact | None = None
    rootflags_on_cmdline: bool = False
    root_passno: Fact | None = None
    boot_drivers: tuple[Fact, ...] = ()  # stage one: the devices behind / and bootfs, bootfs's type
    drivers: tuple[Fact, ...] = ()  # stage two: the root's filesystem type
    missing: tuple[str, ...] = ()  # what was not found, and why
    notes: tuple[str, ...] = field(default=())

    def facts(self) -> dict[str, Fact]:
        keys = ("image", "bootfs", "bootfstype", "fs", "root", "rootfstype", "rootflags", "root_passno")
        return {k: f for k in keys if (f := getattr(self, k)) is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "hostonly": str(self.hostonly),
            "running_system": self.running,
            "detected": {k: {"value": f.value, "source": f.source} for k, f in self.facts().items()},
            "boot_drivers": [{"value": f.value, "source": f.source} for f in self.boot_drivers],
            "drivers": [{"value": f.value, "source": f.source} for f in self.drivers],
            "missing": list(self.missing),
            "notes": list(self.notes),
        }

    def describe(self) -> list[str]:
        lines = [f"{k}: {f.value}  ({f.source})" for k, f in self.facts().items()]
        lines += [f"boot driver {f.value}  ({f.source})" for f in self.boot_drivers]
        lines += [f"driver {f.value}  ({f.source})" for f in self.drivers]
        lines += [f"not found: {m}" for m in self.missing]
        return lines + list(self.notes)


# -- detection -----------------------------------------------------------------------------------


def image_dir(sysroot: Sysroot, outdir: str | os.PathLike[str] | None) -> Fact:
    """The directory stage two will be in on the target: `outdir` when it is an absolute path inside
    the target, else /boot (next to the kernel)."""
    d = os.fspath(outdir) if outdir is not None else ""
    if d and os.path.isabs(d):
        if sysroot.root == Path("/"):
            return Fact(sysroot.resolve(d), f"the output directory {d}")
        rel = os.path.relpath(os.path.abspath(d), sysroot.root)
        if rel != ".." and not rel.startswith("../"):
            return Fact(sysroot.resolve(rel), f"the output directory {d}, inside the sysroot")
    why = f"the output directory {d} is not" if d else "no output directory is"
    return Fact(DEFAULT_IMAGE_DIR, f"next to the kernel ({why} an absolute path inside the target)")


def _read(sysroot: Sysroot, path: str) -> str | None:
    try:
        return sysroot.read_text(path) if sysroot.is_file(path) else None
    except ResolveError:
        return None


def _shown(sysroot: Sysroot, path: str) -> str:
    """A path of the target as a source: "/etc/fstab" on the running system, else the host path."""
    return path if sysroot.root == Path("/") else str(sysroot.host_path(path))


def _by_uuid(sysroot: Sysroot, m: MountEntry) -> Fact | None:
    """The UUID= of a mounted device: the /dev/disk/by-uuid link that resolves to it."""
    devices = {sysroot.resolve(m.spec)} if m.spec.startswith("/dev/") else set()
    if m.devno and sysroot.exists(f"/sys/dev/block/{m.devno}"):  # /dev/root, or a renamed node
        devices.add("/dev/" + posixpath.basename(sysroot.resolve(f"/sys/dev/block/{m.devno}")))
    if not devices or not sysroot.is_dir(BY_UUID):
        return None
    for name in sysroot.listdir(BY_UUID):
        if sysroot.resolve(f"{BY_UUID}/{name}") in devices:
            return Fact(f"UUID={unescape(name)}", f"{m.where}: {m.mountpoint} on {m.spec}; {BY_UUID}/{name}")
    return None


def _spec_of(sysroot: Sysroot, m: MountEntry, fstab: list[MountEntry]) -> tuple[Fact | None, str]:
    """A mountinfo entry's device as UUID= (by-uuid), else its fstab entry's UUID=/LABEL=."""
    if (fact := _by_uuid(sysroot, m)) is not None:
        return fact, ""
    if not m.spec.startswith("/dev/") and not sysroot.exists(f"/sys/dev/block/{m.devno}"):
        return None, f"{m.where}: {m.mountpoint} is {m.fstype} ({m.spec}), not a block device"
    for f in fstab:
        if f.mountpoint == m.mountpoint and f.spec.startswith(("UUID=", "LABEL=")):
            return Fact(f.spec, f"{m.where}: {m.mountpoint} on {m.spec}; {f.where}"), ""
    return None, (
        f"no UUID for {m.spec} (mounted on {m.mountpoint}, {m.where}): no {BY_UUID} link resolves to it "
        f"and {FSTAB} has no UUID= or LABEL= entry for {m.mountpoint}"
    )


def detect_host(
    profile: Profile,
    sysroot: Sysroot,
    kver: str,
    outdir: str | os.PathLike[str] | None = None,
    *,
    running: bool | None = None,
) -> HostInfo:
    """Everything host mode needs, read from the target; nothing for hostonly: no. `running`: read the
    sysroot's /proc, /sys and /dev as the running system's (default: when the sysroot is "/"; tests
    set it for fake trees)."""
    if profile.hostonly is HostOnly.NO:
        return HostInfo(profile.hostonly)
    if running is None:
        running = sysroot.root == Path("/")
    missing: list[str] = []
    notes: list[str] = []
    img = image_dir(sysroot, outdir)
    fstab_text = _read(sysroot, FSTAB)
    fstab_name = _shown(sysroot, FSTAB)
    fstab = parse_fstab(fstab_text, fstab_name) if fstab_text is not None else []
    mounts: list[MountEntry] = []
    if running and (text := _read(sysroot, MOUNTINFO)) is not None:
        mounts = parse_mountinfo(text, MOUNTINFO)
    cmd = cmdline_args(_read(sysroot, CMDLINE) or "") if running else {}

    # the boot filesystem: the mount holding the image's directory
    kw: dict[str, Any] = {}
    boot_mount = covering(mounts, img.value) if mounts else None
    if boot_mount is not None:
        spec, why = _spec_of(sysroot, boot_mount, fstab)
        entry: MountEntry | None = boot_mount
    else:
        entry = covering(fstab, img.value)
        spec, why = None, ""
        if entry is None:
            why = f"no {fstab_name} entry for / or {img.value}" if fstab_text else f"no {fstab_name}"
            if running:
                why = f"{MOUNTINFO} is not readable and {why}"
        elif not entry.spec.startswith(BLOCK_SPECS):
            why = f"{entry.where}: {entry.spec} on {entry.mountpoint} is not a block device"
        else:
            spec = Fact(entry.spec, f"{entry.where}: {entry.mountpoint}")
    if spec is not None and entry is not None and entry.fstype in ("", "auto"):
        spec, why = (
            None,
            f"{entry.where}: the type of {entry.mountpoint} is not known ({entry.fstype or 'none'})",
        )
    if spec is not None and entry is not None:
        rel = posixpath.relpath(img.value, entry.mountpoint)
        inside = normpath(posixpath.join(entry.root, "" if rel == "." else rel, IMAGE))
        kw.update(
            bootfs=spec,
            bootfs_mount=entry.mountpoint,
            bootfstype=Fact(entry.fstype, entry.where),
            fs=Fact(inside, f"{img.value}/{IMAGE} on the filesystem mounted at {entry.mountpoint}"),
        )
    else:
        missing.append(f"the boot filesystem (holding {img.value}): {why}")

    # the root: the boot command line, else fstab's / entry, else (running) the mounted /
    root_fstab = next((e for e in reversed(fstab) if e.mountpoint == "/"), None)
    root_mount = covering(mounts, "/") if mounts else None
    if root_mount is not None and root_mount.mountpoint != "/":
        root_mount = None
    if "root" in cmd:
        kw.update(root=Fact(cmd["root"], f"{CMDLINE}: root="), root_on_cmdline=True)
    elif root_fstab is not None:
        kw["root"] = Fact(root_fstab.spec, f"{root_fstab.where}: /")
    elif root_mount is not None:
        fact, why = _spec_of(sysroot, root_mount, fstab)
        kw["root"] = fact
        if fact is None:
            missing.append(f"the root device: {why}")
    else:
        missing.append(f"the root device: no root= on the boot command line and no {fstab_name} entry for /")
    if "rootfstype" in cmd:
        kw["rootfstype"] = Fact(cmd["rootfstype"], f"{CMDLINE}: rootfstype=")
    elif root_fstab is not None and root_fstab.fstype not in ("", "auto"):
        kw["rootfstype"] = Fact(root_fstab.fstype, f"{root_fstab.where}: /")
    elif root_mount is not None:
        kw["rootfstype"] = Fact(root_mount.fstype, f"{root_mount.where}: /")
    if "rootflags" in cmd:
        kw.update(rootflags=Fact(cmd["rootflags"], f"{CMDLINE}: rootflags="), rootflags_on_cmdline=True)
    elif root_fstab is not None and (flags := rootflags(root_fstab.options)):
        kw["rootflags"] = Fact(flags, f"{root_fstab.where}: / options {root_fstab.options}")
    if root_fstab is not None:
        kw["root_passno"] = Fact(str(root_fstab.passno), f"{root_fstab.where}: / pass {root_fstab.passno}")

    # drivers: the running system's devices (another sysroot has no sysfs of its own), and filesystems
    boot_drivers: list[Fact] = []
    drivers: list[Fact] = []
    try:
        kmods: KernelModules | None = KernelModules(sysroot, kver)
    except ResolveError as e:
        kmods = None
        notes.append(f"drivers not detected: {e}")
    if kmods is not None:
        if running:
            for m in (boot_mount, root_mount):
                if m is not None and m.devno:
                    boot_drivers += device_drivers(sysroot, kmods, f"/sys/dev/block/{m.devno}")
        else:
            notes.append("storage drivers: generic (another sysroot has no sysfs of its own)")
        if "bootfstype" in kw:
            boot_drivers += _fs_driver(kmods, kw["bootfstype"])
        if "rootfstype" in kw:
            drivers += _fs_driver(kmods, kw["rootfstype"])
    return HostInfo(
        profile.hostonly,
        running,
        img,
        **kw,
        boot_drivers=tuple(_unique(boot_drivers)),
        drivers=tuple(_unique(drivers)),
        missing=tuple(missing),
        notes=tuple(notes),
    )


def _unique(facts: list[Fact]) -> list[Fact]:
    seen: set[str] = set()
    return [f for f in facts if not (f.value in seen or seen.add(f.value))]  # type: ignore[func-returns-value]


def _loadable(kmods: KernelModules, name: str) -> list[str]:
    """[name] when the target kernel has it as a loadable module (not built in, not absent). By name
    only: KernelModules.lookup would try every modules.alias pattern for a name it does not know."""
    key = normalize(name)
    return [key] if not kmods.is_builtin(key) and key in _module_names(kmods) else []


@functools.lru_cache(maxsize=4)
def _module_names(kmods: KernelModules) -> frozenset[str]:
    return frozenset(kmods.all_modules())


@functools.lru_cache(maxsize=4)
def _alias_index(kmods: KernelModules) -> tuple[tuple[str, str, str], ...]:
    """(literal prefix, pattern, module) of every modules.alias line: a prefix test first makes
    matching one modalias ~100x faster than fnmatch over all (~20000) patterns."""
    return tuple(
        (re.split(r"[*?\[]", pat, maxsplit=1)[0], pat, mod)
        for mod, patterns in kmods.raw_aliases().items()
        for pat in patterns
    )


def _modalias_modules(kmods: KernelModules, alias: str) -> list[str]:
    """The loadable modules whose modules.alias patterns match a device's modalias."""
    found = [
        m for lit, pat, m in _alias_index(kmods) if alias.startswith(lit) and fnmatch.fnmatchcase(alias, pat)
    ]
    return [n for m in dict.fromkeys(found) for n in _loadable(kmods, m)]


def _fs_driver(kmods: KernelModules, fstype: Fact) -> list[Fact]:
    return [Fact(n, f"filesystem {fstype.value} ({fstype.source})") for n in _loadable(kmods, fstype.value)]


def device_drivers(sysroot: Sysroot, kmods: KernelModules, block: str, depth: int = 0) -> list[Fact]:
    """The modules of the devices behind a block device (a /sys/class/block or /sys/dev/block path):
    a partition's disk, the slaves of a dm or md device, then the disk's `device` and each parent up
    to /sys/devices, for every device bound to a driver: its `driver/module` when the target kernel
    has that module, else what the device's `modalias` matches in the target's modules.alias."""
    if depth > 8:
        return []
    path = sysroot.resolve(block)
    if sysroot.exists(f"{path}/partition"):
        path = posixpath.dirname(path)
    out: list[Fact] = []
    if sysroot.is_dir(f"{path}/slaves"):
        for slave in sysroot.listdir(f"{path}/slaves"):
            out += device_drivers(sysroot, kmods, f"{path}/slaves/{slave}", depth + 1)
    dev = sysroot.resolve(f"{path}/device") if sysroot.exists(f"{path}/device") else ""
    while dev.startswith("/sys/devices/"):
        if sysroot.exists(f"{dev}/driver"):
            alias = (_read(sysroot, f"{dev}/modalias") or "").strip()
            names: list[str] = []
            if sysroot.exists(f"{dev}/driver/module"):
                names = _loadable(kmods, posixpath.basename(sysroot.resolve(f"{dev}/driver/module")))
            if not names and alias:
                names = _modalias_modules(kmods, alias)
            what = alias or "driver " + posixpath.basename(sysroot.resolve(f"{dev}/driver"))
            out += [Fact(n, f"{dev} ({what})") for n in names]
        dev = posixpath.dirname(dev)
    return out


# -- resolution ----------------------------------------------------------------------------------


def resolve_host(
    profile: Profile, sysroot: Sysroot, kver: str, image_dir: str | os.PathLike[str] | None
) -> tuple[Profile, HostInfo, bool, str]:
    """detect_host then resolve_profile: (resolved profile, what was detected, host mode?, warning)."""
    info = detect_host(profile, sysroot, kver, image_dir)
    resolved, warning = resolve_profile(profile, info)
    return resolved, info, host_mode(profile, info)[0], warning


def host_mode(profile: Profile, info: HostInfo) -> tuple[bool, str]:
    """(host mode?, why not): hostonly yes, or auto when the boot filesystem was found or is pinned."""
    if profile.hostonly is HostOnly.NO:
        return False, ""
    if info.bootfs is not None or profile.overlay.bootfs != AUTO:
        return True, ""
    why = next((m for m in info.missing if m.startswith("the boot filesystem")), "not detected")
    return False, why


def resolve_profile(profile: Profile, info: HostInfo) -> tuple[Profile, str]:
    """The profile with `auto` resolved, and a warning ("" when none). hostonly: yes with no boot
    filesystem found is a ConfigError; auto then falls back to the generic values."""
    host, why = host_mode(profile, info)
    warning = ""
    if not host and profile.hostonly is HostOnly.YES:
        raise ConfigError(
            f"hostonly: yes: cannot find {why}",
            location=profile.where("hostonly"),
            hint="pin overlay.bootfs (with bootfstype and fs), or build generic images (--generic)",
        )
    if not host and profile.hostonly is HostOnly.AUTO:
        warning = (
            f"hostonly: auto: building generic images ({GENERIC_BOOTFS}, its type read at boot): cannot find "
            f"{why}; pin overlay.bootfs, or pass --generic (hostonly: no), to silence this"
        )
    ov = profile.overlay
    # the detected type and path belong to the detected filesystem: not to another one pinned by hand
    same = host and info.bootfs is not None and ov.bootfs in (AUTO, info.bootfs.value)

    def pick(value: str, fact: Fact | None, generic: str) -> str:
        if value != AUTO:
            return value
        return fact.value if same and fact is not None else generic

    overlay = replace(
        ov,
        bootfs=pick(ov.bootfs, info.bootfs, GENERIC_BOOTFS),
        bootfstype=pick(ov.bootfstype, info.bootfstype, GENERIC_BOOTFSTYPE),
        fs=pick(ov.fs, info.fs, GENERIC_FS),
    )
    if not host:
        return replace(profile, overlay=overlay), warning
    baked = cmdline_defaults(info)
    cmdline = " ".join(w for w in (baked, profile.cmdline) if w)
    boot = tuple(dict.fromkeys([*profile.boot_drivers, *(f.value for f in info.boot_drivers)]))
    drivers = tuple(dict.fromkeys([*profile.drivers, *(f.value for f in info.drivers)]))
    return replace(profile, overlay=overlay, cmdline=cmdline, boot_drivers=boot, drivers=drivers), warning


def cmdline_defaults(info: HostInfo) -> str:
    """The command-line defaults host mode bakes into stage two (the boot command line wins):
    root= when the boot command line lacks it, rootfstype= whenever known, rootflags= from fstab.
    The root's fsck pass is not baked: modules.d/50fsck reads the same fstab and ships the check."""
    words = []
    if info.root is not None and not info.root_on_cmdline:
        words.append(f"root={info.root.value}")
    if info.rootfstype is not None:
        words.append(f"rootfstype={info.rootfstype.value}")
    if info.rootflags is not None and not info.rootflags_on_cmdline:
        words.append(f"rootflags={info.rootflags.value}")
    return " ".join(w for w in words if " " not in w)

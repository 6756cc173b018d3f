"""The driver table of a generated /init: which kernel modules it loads on demand, and when.

Built from the drivers the modules.d modules asked for (resolved by resolve/kmod.py), rendered into
shell variables by the /init templates: hardware modules by modalias, filesystem modules before a
mount, codepage modules with the filesystems that need them, the rest eagerly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..resolve.kmod import KernelModules, Kmod

# Alias prefixes that name no device: a module with only these is not loaded by hardware detection.
NON_DEVICE_ALIASES = ("fs-", "devname:", "char-major-", "block-major-", "symbol:", "crypto-", "net-pf-")
CPU_MODALIAS = "/sys/devices/system/cpu/modalias"
# Filesystems whose mounts need codepage/charset modules (nls_*) for file names.
NLS_FILESYSTEMS = ("vfat", "msdos", "fat", "exfat", "iso9660", "udf", "ntfs", "ntfs3", "hfsplus", "cifs")


@dataclass(frozen=True)
class DriverTable:
    """What an /init needs to load drivers on demand: rendered into shell variables.

    order:    every module, dependencies first (the build-time load order)
    closure:  module -> the modules to load for it, in load order (itself last)
    hardware: (modalias pattern, module): loaded when a present, unbound device matches
    fs:       (filesystem type, module): loaded before mounting that type
    nls:      codepage modules, loaded with NLS_FILESYSTEMS
    eager:    requested modules that name no device or filesystem: always loaded
    first:    (CPU modalias pattern, module): loaded before all others when the CPU matches ("*" for
              a module that names no CPU feature); they speed up loading the rest
    """

    order: tuple[Kmod, ...]
    closure: dict[str, tuple[str, ...]]
    hardware: tuple[tuple[str, str], ...]
    fs: tuple[tuple[str, str], ...]
    nls: tuple[str, ...]
    eager: tuple[str, ...]
    first: tuple[tuple[str, str], ...] = ()

    def to_context(self) -> dict[str, Any]:
        return {
            "order": [{"name": k.name, "path": k.path} for k in self.order],
            "closure": self.closure,
            "hardware": list(self.hardware),
            "fs": list(self.fs),
            "nls": list(self.nls),
            "nls_filesystems": list(NLS_FILESYSTEMS),
            "eager": list(self.eager),
            "first": list(self.first),
            "scan": modalias_globs(alias_buses(p for p, _ in self.hardware)),
        }


def alias_buses(patterns: Iterable[str]) -> list[str]:
    """The /sys/bus/* directories whose devices can carry these modaliases ("pci:..." -> pci).
    ACPI and device-tree aliases are carried by platform devices too."""
    buses: set[str] = set()
    for p in patterns:
        prefix = p.split(":", 1)[0].rstrip("*")
        buses.add(prefix)
        if prefix in ("acpi", "of"):
            buses.add("platform")
    return sorted(buses)


def modalias_globs(buses: Iterable[str]) -> list[str]:
    """Where the devices of these buses show their modalias. The CPU has one for all of its cores,
    listing its features (cpu:type:x86,ven...:feature:,0000,...), matched by accelerator modules."""
    return [CPU_MODALIAS if bus == "cpu" else f"/sys/bus/{bus}/devices/*/modalias" for bus in buses]


def driver_table(
    kmods: KernelModules, wanted: list[tuple[str, bool]], *, first: Iterable[str] = (), lean: bool = False
) -> DriverTable:
    """Classify the requested drivers (name, optional) for on-demand loading at boot; those of them
    named in `first` are loaded before all others (and their closures come first in the order).
    `lean`: closures without softdeps the kernel provides built in (KernelModules.resolve)."""
    res = kmods.resolve(
        [n for n, opt in wanted if not opt], optional=[n for n, opt in wanted if opt], lean=lean
    )
    present = {k.name for k in res.modules}
    raw = kmods.raw_aliases()
    requested: list[str] = []
    first_names: set[str] = set()
    asked_first = set(first)
    for name, _ in wanted:
        for found in kmods.lookup(name):
            if not found.builtin and found.name in present and found.name not in requested:
                requested.append(found.name)
                if name in asked_first:
                    first_names.add(found.name)
    closure: dict[str, tuple[str, ...]] = {}
    hardware: list[tuple[str, str]] = []
    fs: list[tuple[str, str]] = []
    nls: list[str] = []
    eager: list[str] = []
    first_table: list[tuple[str, str]] = []
    for name in requested:
        closure[name] = tuple(k.name for k in kmods.resolve([name], lean=lean).modules)
        aliases = raw.get(name, [])
        fstypes = [a[3:] for a in aliases if a.startswith("fs-")]
        devices = [a for a in aliases if ":" in a and not a.startswith(NON_DEVICE_ALIASES)]
        if name in first_names:
            cpu = [a for a in devices if a.startswith("cpu:")]
            first_table += [(p, name) for p in cpu] if cpu else [("*", name)]
        elif fstypes:
            fs += [(t, name) for t in fstypes]
        elif devices:
            hardware += [(p, name) for p in devices]
        elif name.startswith("nls_"):
            nls.append(name)
        else:
            eager.append(name)
    # the closures of the first drivers lead the order (each keeps its dependencies before it)
    lead = [n for _, m in first_table for n in closure[m]]
    order = sorted(res.modules, key=lambda k: lead.index(k.name) if k.name in lead else len(lead))
    return DriverTable(
        tuple(order), closure, tuple(hardware), tuple(fs), tuple(nls), tuple(eager), tuple(first_table)
    )

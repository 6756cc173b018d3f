"""Plan -> Manifest: run every planned module's items (and hooks) for one stage.

The Collector is also the narrow API a module's `module.py` gets (`ctx`): add_binary, add_file,
add_dir, add_symlink, add_device, add_data, add_driver, want_binary_module_indexes, render, and
kmods (the kernel's modules, read only). It only writes into the Manifest.
"""

from __future__ import annotations

import functools
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import log
from ..errors import InitbuildError, Location, ResolveError
from ..manifest import Entry, Kind, Manifest, check_dest
from ..profile import Mode, Profile
from ..resolve.elf import ElfResolver
from ..resolve.kmod import KernelModules, Kmod
from ..sysroot import Sysroot
from ..templates import Renderer
from .spec import Check, ModuleSpec, Plan, load_hook

PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Top-level links of a usr-merged system, reproduced in the image so that paths such as /bin/sh
# and /usr/bin/sh stay one file (and EROFS never needs children under a symlink).
USRMERGE_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass
class StageResult:
    stage: int
    manifest: Manifest
    drivers: list[Kmod] = field(default_factory=list)  # load order
    builtin: list[str] = field(default_factory=list)
    missing_firmware: list[str] = field(default_factory=list)


def find_binary(sysroot: Sysroot, name: str) -> str | None:
    if name.startswith("/"):
        return name if sysroot.exists(name) else None
    for d in PATH_DIRS:
        p = f"{d}/{name}"
        if sysroot.lexists(p) and sysroot.exists(p):
            return p
    return None


def module_check(spec: ModuleSpec, sysroot: Sysroot, profile: Profile, kver: str) -> tuple[Check, str]:
    """Evaluate `needs:` and an optional hook `check(ctx)` against the sysroot."""
    for b in spec.needs_binaries:
        if find_binary(sysroot, b) is None:
            return Check.UNAVAILABLE, f"binary '{b}' not found in the sysroot"
    for f in spec.needs_files:
        if not sysroot.exists(f):
            return Check.UNAVAILABLE, f"file {f} not found in the sysroot"
    hook = load_hook(spec)
    if hook is not None and hasattr(hook, "check"):
        res = hook.check(CheckContext(sysroot, profile, kver))
        if isinstance(res, tuple):
            return Check(res[0]), str(res[1])
        if res is not None:
            return Check(res), "decided by module.py"
    return spec.check, "included by default" if spec.check is Check.INCLUDE else "on demand"


@dataclass(frozen=True)
class CheckContext:
    sysroot: Sysroot
    profile: Profile
    kver: str

    def find_binary(self, name: str) -> str | None:
        return find_binary(self.sysroot, name)

    @functools.cached_property
    def kmods(self) -> KernelModules:
        """The kernel's modules, parsed on first use (most checks never need them)."""
        return KernelModules(self.sysroot, self.kver)


@dataclass(frozen=True)
class DriverRequest:
    """A kernel driver asked for by a modules.d module (or the profile)."""

    name: str  # module name or alias
    optional: bool  # a warning, not an error, when the kernel lacks it
    module: str  # who asked: a modules.d module name or "profile"
    location: Location | None = None
    first: bool = False  # loaded before every other driver (DriverTable.first)


class Collector:
    """Builds one stage's manifest. Passed to module hooks as `ctx`."""

    def __init__(
        self,
        stage: int,
        plan: Plan,
        sysroot: Sysroot,
        kmods: KernelModules,
        elf: ElfResolver,
        renderer: Renderer,
        context: dict[str, Any],
    ):
        self.stage = stage
        self.plan = plan
        self.profile = plan.profile
        self.kver = plan.kver
        self.sysroot = sysroot
        self.kmods = kmods
        self.elf = elf
        self.renderer = renderer
        self.context = context  # template variables (shared with /etc/initbuild/init.json)
        self.manifest = Manifest()
        self.module = "profile"
        self._drivers: list[DriverRequest] = []
        # Stage one loads only what mounting stage two needs: no softdep the kernel provides built in.
        self.lean = stage == 1
        self._binary_indexes = False  # modules.*.bin too (want_binary_module_indexes)
        self._renders: list[tuple[str, str, int, bool, list[str] | None, str]] = []
        for link in USRMERGE_LINKS:
            if sysroot.is_symlink(link):
                self.manifest.add(
                    Entry(link, Kind.SYMLINK, 0o777, target=sysroot.readlink(link), provenance=("usr-merge",))
                )

    # -- helpers ----------------------------------------------------------------------------------
    def _prov(self, *extra: str) -> tuple[str, ...]:
        return (self.module, *extra)

    def canon(self, dest: str) -> str:
        """Re-root `dest` through symlinks already in the image (e.g. /bin/sh -> /usr/bin/sh)."""
        parts = check_dest(dest).strip("/").split("/") if dest.strip("/") else []
        done: list[str] = []
        for i, part in enumerate(parts):
            cur = "/" + "/".join([*done, part])
            e = self.manifest.get(cur)
            if e is not None and e.kind is Kind.SYMLINK and i < len(parts) - 1:
                assert e.target is not None
                base = "/" if e.target.startswith("/") else "/" + "/".join(done)
                done = check_dest(posixpath.join(base, e.target)).strip("/").split("/")
                done = [d for d in done if d]
                continue
            done.append(part)
        return "/" + "/".join(done)

    def _add(self, entry: Entry, override: bool = False) -> None:
        path = self.canon(entry.path)
        if path != entry.path:
            entry = Entry(**{**entry.__dict__, "path": path})
        self.manifest.add(entry, override=override)

    # -- the module API ---------------------------------------------------------------------------
    def add_path(
        self,
        path: str,
        *,
        dest: str | None = None,
        mode: int | None = None,
        override: bool = False,
        why: str = "",
    ) -> None:
        """Copy `path` from the sysroot, reproducing the symlinks met on the way (usr-merge, .so links)."""
        prov = self._prov(why) if why else self._prov()
        if dest is None or dest == path:
            for link, target in self.sysroot.symlink_chain(path):
                if link in USRMERGE_LINKS and self.manifest.get(link) is not None:
                    continue
                self._add(Entry(link, Kind.SYMLINK, 0o777, target=target, provenance=prov), override)
            real = self.sysroot.resolve(path)
            dest = real
        else:
            real = self.sysroot.resolve(path)
        st = self.sysroot.lstat(real)
        if stat.S_ISDIR(st.st_mode):
            self._add(
                Entry(
                    dest, Kind.DIR, mode if mode is not None else stat.S_IMODE(st.st_mode), provenance=prov
                ),
                override,
            )
            return
        if not stat.S_ISREG(st.st_mode):
            raise ResolveError(f"{path} in the sysroot is not a regular file")
        m = stat.S_IMODE(st.st_mode) if mode is None else mode
        self._add(Entry(dest, Kind.FILE, m, source=real, provenance=prov), override)

    def add_binary(
        self, name: str, *, optional: bool = False, location: Location | None = None
    ) -> str | None:
        path = find_binary(self.sysroot, name)
        if path is None:
            if optional:
                log.verbose(f"optional binary '{name}' of {self.module} not found, skipped")
                return None
            raise ResolveError(
                f"binary '{name}' (wanted by {self.module}) not found in the sysroot {self.sysroot.root} "
                f"(searched {', '.join(PATH_DIRS)})"
                if not name.startswith("/")
                else f"binary {name} (wanted by {self.module}) not found in the sysroot {self.sysroot.root}",
                location=location,
            )
        self.add_path(path)
        try:
            needed = self.elf.needed(path)
        except ResolveError as e:
            raise ResolveError(
                f"{e.message} (binary '{name}' wanted by {self.module})", location=location
            ) from None
        for lib in needed:
            self.add_path(lib, why=f"needed by {path}")
        return path

    def add_file(
        self,
        source: str,
        dest: str | None = None,
        *,
        mode: int | None = None,
        optional: bool = False,
        override: bool = False,
        location: Location | None = None,
    ) -> None:
        if not self.sysroot.exists(source):
            if optional:
                return
            raise ResolveError(
                f"file {source} (wanted by {self.module}) not found in the sysroot {self.sysroot.root}",
                location=location,
            )
        if self.sysroot.is_dir(source):
            self._add_tree(source, dest or source, override)
            return
        self.add_path(source, dest=dest, mode=mode, override=override)

    def _add_tree(self, source: str, dest: str, override: bool) -> None:
        src_top = self.sysroot.resolve(source)
        for dirpath, dirnames, filenames in self.sysroot.walk(src_top):
            rel = posixpath.relpath(dirpath, src_top)
            ddir = dest if rel == "." else posixpath.join(dest, rel)
            self.add_dir(ddir)
            for n in dirnames + filenames:
                sp = posixpath.join(dirpath, n)
                dp = posixpath.join(ddir, n)
                if self.sysroot.is_symlink(sp):
                    self.add_symlink(dp, self.sysroot.readlink(sp), override=override)
                elif n in filenames:
                    if self.sysroot.is_file(sp):
                        self.add_path(sp, dest=dp, override=override)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(Entry(check_dest(path), Kind.DIR, mode, provenance=self._prov()))

    def add_symlink(self, path: str, target: str, *, override: bool = False) -> None:
        self._add(
            Entry(check_dest(path), Kind.SYMLINK, 0o777, target=target, provenance=self._prov()), override
        )

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        k = Kind.CHAR if kind == "char" else Kind.BLOCK
        self._add(Entry(check_dest(path), k, mode, rdev=(major, minor), provenance=self._prov()))

    def add_data(
        self, dest: str, data: bytes | str, *, mode: int = 0o644, override: bool = False, why: str = ""
    ) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._add(
            Entry(
                check_dest(dest),
                Kind.FILE,
                mode,
                data=raw,
                provenance=self._prov(why) if why else self._prov(),
            ),
            override,
        )

    def want_binary_module_indexes(self) -> None:
        """Also ship the binary modules.*.bin indexes (depmod's), for programs linked with libkmod
        (udev's kmod builtin, kmod's modprobe): busybox modprobe and /init need only the text ones."""
        self._binary_indexes = True

    def add_driver(
        self, name: str, *, optional: bool = False, location: Location | None = None, first: bool = False
    ) -> None:
        """Ask for a kernel driver (loaded at boot when its device is present). `first`: a driver that
        makes loading the others faster, loaded before them when the CPU has what it needs."""
        self._drivers.append(DriverRequest(name, optional, self.module, location, first))

    def render(
        self,
        template: str,
        dest: str,
        *,
        mode: int = 0o644,
        override: bool = False,
        search: list[str] | None = None,
    ) -> None:
        """Queue a template; it is rendered after drivers are resolved, so it can use the load order."""
        self._renders.append((template, dest, mode, override, search, self.module))

    def render_pending(self, extra: dict[str, Any]) -> None:
        self.context.update(extra)
        for template, dest, mode, override, search, module in self._renders:
            self.module = module
            text = self.renderer.render(template, {**self.context, "stage": self.stage}, search=search)
            self.add_data(dest, text, mode=mode, override=override, why=f"template {template}")
        self.module = "profile"

    def find_binary(self, name: str) -> str | None:
        return find_binary(self.sysroot, name)

    # -- running a module ---------------------------------------------------------------------------
    def install_module(self, spec: ModuleSpec) -> None:
        self.module = spec.name
        loc = spec.locations
        for d in spec.dirs:
            self.add_dir(d)
        for b in spec.binaries:
            self.add_binary(b, location=loc.get(f"binaries:{b}") or loc.get("binaries"))
        for b in spec.optional_binaries:
            self.add_binary(b, optional=True)
        for i, f in enumerate(spec.files):
            self.add_file(
                f.source,
                f.dest,
                mode=f.mode,
                optional=f.optional,
                override=f.override,
                location=loc.get(f"files[{i}]") or loc.get("files"),
            )
        for s in spec.symlinks:
            self.add_symlink(s.path, s.target, override=s.override)
        for dv in spec.devices:
            self.add_device(dv.path, dv.type, dv.major, dv.minor, dv.mode)
        for name in spec.drivers:
            self.add_driver(name, location=loc.get(f"drivers:{name}") or loc.get("drivers"))
        for name in spec.optional_drivers:
            self.add_driver(name, optional=True)
        for fw in spec.firmware:
            self.add_file(posixpath.join("/lib/firmware", fw), optional=True)
        hook = load_hook(spec)
        for t in spec.templates:
            self.render(t.template, t.dest, mode=t.mode, override=t.override, search=[str(spec.path)])
        if hook is not None and hasattr(hook, "install"):
            try:
                hook.install(self)
            except InitbuildError:
                raise
            except Exception as e:
                raise InitbuildError(f"{spec.hook}: install() failed: {type(e).__name__}: {e}") from e
        self.module = "profile"

    def install_drivers(self, *, all_drivers: bool = False, firmware: bool = True) -> StageResult:
        """Resolve every requested driver once, add .ko files, firmware and the modules.* indexes."""
        required = [d.name for d in self._drivers if not d.optional]
        optional = [d.name for d in self._drivers if d.optional]
        if all_drivers:
            optional += [n for n in self.kmods.all_modules() if n not in required]
        # Name every missing required driver, each with who asked for it, before resolving.
        for d in self._drivers:
            name, location = d.name, d.location
            if not d.optional and not self.kmods.lookup(name):
                who = "the profile" if d.module == "profile" else f"module {d.module!r}"
                raise ResolveError(
                    f"kernel driver '{name}' (wanted by {who}) is not a module, alias or builtin of "
                    f"kernel {self.kver}",
                    location=location,
                    hint=f"list /lib/modules/{self.kver}/modules.dep in the sysroot, or use optional_drivers",
                )
        res = self.kmods.resolve(required, optional=optional, lean=self.lean)
        for name in res.missing_optional:
            if not all_drivers:
                log.verbose(f"optional driver '{name}' is not in kernel {self.kver}, skipped")
        result = StageResult(self.stage, self.manifest, list(res.modules), list(res.builtin))
        for km in res.modules:
            self.module = "kernel-modules"
            self.add_path(km.path, why=f"driver {km.name}")
            if firmware:
                for fw in self.kmods.firmware_paths(km):
                    self.add_path(fw, why=f"firmware of {km.name}")
        # Stage one insmods explicit paths in a fixed order: modprobe's indexes are dead weight there.
        indexes = self.kmods.index_files(list(res.modules)) if self.stage == 2 else {}
        if self.stage == 2 and self._binary_indexes:
            indexes.update(self.kmods.binary_indexes(list(res.modules)))
        for path, data in sorted(indexes.items()):
            dest = path if path.startswith("/") else f"/lib/modules/{self.kver}/{path}"
            self.add_data(dest, data, why="module index for modprobe")
        self.module = "profile"
        return result


def collect_stage(
    stage: int,
    plan: Plan,
    sysroot: Sysroot,
    renderer: Renderer,
    context: dict[str, Any],
    kmods: KernelModules | None = None,
) -> StageResult:
    """Install every module of `plan` that belongs to `stage` (1 or 2), then the profile's extras.
    `kmods`: the kernel's modules, when the caller parsed them already (shared by both stages)."""
    profile = plan.profile
    kmods = kmods or KernelModules(sysroot, plan.kver)
    c = Collector(stage, plan, sysroot, kmods, ElfResolver(sysroot), renderer, context)
    for pm in plan.modules:
        if profile.mode is Mode.PLAIN and stage == 2 or pm.spec.stage.has(stage):
            with log.step(f"stage {stage}: module {pm.name}") if log.level() >= log.VERBOSE else _null():
                c.install_module(pm.spec)
    for name in profile.boot_drivers:
        c.add_driver(name, location=profile.where(f"boot_drivers:{name}"))
    if stage == 2:
        for name in profile.drivers:
            c.add_driver(name, location=profile.where(f"drivers:{name}"))
        for name in profile.optional_drivers:
            c.add_driver(name, optional=True)
        for b in profile.binaries:
            c.add_binary(b, location=profile.where(f"binaries:{b}"))
        for i, f in enumerate(profile.files):
            c.add_file(
                f.source, f.dest, mode=f.mode, optional=f.optional, location=profile.where(f"files[{i}]")
            )
    res = c.install_drivers(
        all_drivers=stage == 2 and profile.stage2.all_drivers, firmware=stage == 2 and profile.stage2.firmware
    )
    boot = [
        (d.name, d.optional)
        for d in c._drivers
        if d.module in boot_modules(plan) or d.module == "profile" and d.name in profile.boot_drivers
    ]
    everything = [(d.name, d.optional) for d in c._drivers]
    first = [d.name for d in c._drivers if d.first]
    c.render_pending(
        {
            "drivers": driver_table(kmods, everything, first=first, lean=c.lean).to_context(),
            "boot_drivers": driver_table(kmods, boot, first=first, lean=c.lean).to_context(),
        }
    )
    res.manifest.check()
    return res


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


def boot_modules(plan: Plan) -> set[str]:
    """Modules whose drivers are needed to reach the boot device (their stage includes stage one)."""
    return {pm.name for pm in plan.modules if pm.spec.stage.has(1)}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def host_kernels(sysroot: Sysroot) -> list[str]:
    """Kernel versions with both /boot/vmlinuz-V and /lib/modules/V, oldest first."""
    out = []
    if sysroot.is_dir("/lib/modules"):
        for v in sysroot.listdir("/lib/modules"):
            if sysroot.is_file(f"/boot/vmlinuz-{v}") and sysroot.is_dir(f"/lib/modules/{v}"):
                out.append(v)
    return sorted(out, key=_version_key)


def _version_key(v: str) -> list[tuple[int, int | str]]:
    import re

    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", v)]


def resolve_kernel(sysroot: Sysroot, profile: Profile) -> str:
    found = host_kernels(sysroot)
    if profile.kernel != "auto":
        if not sysroot.is_dir(f"/lib/modules/{profile.kernel}"):
            raise ResolveError(
                f"kernel {profile.kernel}: /lib/modules/{profile.kernel} not found "
                f"in the sysroot {sysroot.root}",
                location=profile.where("kernel"),
                hint=f"installed: {', '.join(found) or 'none'}",
            )
        return profile.kernel
    if not found:
        raise ResolveError(
            f"no kernel found in the sysroot {sysroot.root}: need /boot/vmlinuz-V and /lib/modules/V",
            hint="install a kernel (Debian: apt-get install linux-image-cloud-amd64) or pass --kver",
        )
    return found[-1]


def os_release(sysroot: Sysroot) -> dict[str, str]:
    for p in ("/etc/os-release", "/usr/lib/os-release"):
        if sysroot.is_file(p):
            out = {}
            for line in sysroot.read_text(p).splitlines():
                if "=" in line and not line.startswith("#"):
                    k, v = line.split("=", 1)
                    out[k.strip()] = v.strip().strip('"')
            return out
    return {}

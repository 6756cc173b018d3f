"""The module API: what a modules.d `module.py` gets as `ctx`, and the calls into module.py.

`check(ctx)` gets a CheckContext (the sysroot, the profile, the kernel version and its modules, read
only). `install(ctx)` gets a Collector, which builds one stage's Manifest; InstallContext is the
typed description of what module.py may use of it (annotate `def install(ctx: InstallContext)`).
Both only read the sysroot: everything a module adds goes into the Manifest.
"""

from __future__ import annotations

import functools
import posixpath
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import log
from ..errors import InitbuildError, Location, ModuleError, ResolveError
from ..manifest import Entry, Kind, Manifest, check_dest
from ..profile import Profile
from ..resolve import modindex
from ..resolve.elf import ElfResolver
from ..resolve.kmod import KernelModules, Resolution
from ..sysroot import Sysroot, strip_compression
from ..templates import Renderer
from .hooks import Hooks
from .plan import Plan
from .spec import DEVICE_KINDS, Check, ModuleSpec

PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Top-level links of a usr-merged system, reproduced in the image so that paths such as /bin/sh
# and /usr/bin/sh stay one file (and EROFS never needs children under a symlink).
USRMERGE_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def find_binary(sysroot: Sysroot, name: str) -> str | None:
    """A program's path in the sysroot: `name` itself when absolute, else the first in PATH_DIRS."""
    if name.startswith("/"):
        return name if sysroot.exists(name) else None
    for d in PATH_DIRS:
        p = f"{d}/{name}"
        if sysroot.lexists(p) and sysroot.exists(p):
            return p
    return None


# -- check(ctx) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckContext:
    """What a module's `check(ctx)` sees."""

    sysroot: Sysroot
    profile: Profile
    kver: str

    def find_binary(self, name: str) -> str | None:
        return find_binary(self.sysroot, name)

    @functools.cached_property
    def kmods(self) -> KernelModules:
        """The kernel's modules, parsed on first use (most checks never need them)."""
        return KernelModules(self.sysroot, self.kver)


def module_check(
    spec: ModuleSpec, sysroot: Sysroot, profile: Profile, kver: str, hooks: Hooks
) -> tuple[Check, str]:
    """Evaluate `needs:` and an optional hook `check(ctx)` against the sysroot."""
    for b in spec.needs_binaries:
        if find_binary(sysroot, b) is None:
            return Check.UNAVAILABLE, f"binary '{b}' not found in the sysroot"
    for f in spec.needs_files:
        if not sysroot.exists(f):
            return Check.UNAVAILABLE, f"file {f} not found in the sysroot"
    hook = hooks.load(spec)
    if hook is not None and hasattr(hook, "check"):
        res = hook.check(CheckContext(sysroot, profile, kver))
        if isinstance(res, tuple):
            return Check(res[0]), str(res[1])
        if res is not None:
            return Check(res), "decided by module.py"
    return spec.check, "included by default" if spec.check is Check.INCLUDE else "on demand"


# -- install(ctx) -----------------------------------------------------------------------------------


class InstallContext(Protocol):
    """What a module's `install(ctx)` may use (the Collector implements it)."""

    stage: int  # 1 (stage one) or 2 (stage two, or the plain image)
    profile: Profile
    host_mode: bool  # built for the target system's own devices (hostonly), not for any machine
    manifest: Manifest  # what this stage holds so far (read only: add through the methods below)
    kver: str
    sysroot: Sysroot  # read only
    kmods: KernelModules  # the kernel's modules, read only
    context: dict[str, Any]  # template variables: a module may adjust what its templates render

    def add_binary(
        self, name: str, *, optional: bool = False, location: Location | None = None
    ) -> str | None: ...

    def add_file(
        self,
        source: str,
        dest: str | None = None,
        *,
        mode: int | None = None,
        optional: bool = False,
        override: bool = False,
        location: Location | None = None,
    ) -> None: ...

    def add_dir(self, path: str, mode: int = 0o755) -> None: ...

    def add_symlink(self, path: str, target: str, *, override: bool = False) -> None: ...

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None: ...

    def add_data(
        self, dest: str, data: bytes | str, *, mode: int = 0o644, override: bool = False, why: str = ""
    ) -> None: ...

    def add_driver(
        self, name: str, *, optional: bool = False, location: Location | None = None, first: bool = False
    ) -> None: ...

    def want_binary_module_indexes(self) -> None: ...

    def render(
        self,
        template: str,
        dest: str,
        *,
        mode: int = 0o644,
        override: bool = False,
        search: list[str] | None = None,
    ) -> None: ...

    def find_binary(self, name: str) -> str | None: ...

    def canon(self, dest: str) -> str: ...


@dataclass(frozen=True)
class DriverRequest:
    """A kernel driver asked for by a modules.d module (or the profile)."""

    name: str  # module name or alias
    optional: bool  # a warning, not an error, when the kernel lacks it
    module: str  # who asked: a modules.d module name or "profile"
    location: Location | None = None
    first: bool = False  # loaded before every other driver (DriverTable.first)


class Collector:
    """Builds one stage's manifest. Passed to a module's `install(ctx)` (see InstallContext)."""

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
        self.host_mode = plan.host_mode
        self.kver = plan.kver
        self.sysroot = sysroot
        self.kmods = kmods
        self.elf = elf
        self.renderer = renderer
        self.context = context  # template variables (shared with /etc/initbuild/init.json)
        self.manifest = Manifest()
        self.module = "profile"
        self.driver_requests: list[DriverRequest] = []  # in the order asked
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
        decompress: bool = False,
    ) -> None:
        """Copy `path` from the sysroot, reproducing the symlinks met on the way (usr-merge, .so links).
        `decompress`: a compressed file (.xz, .zst, .gz) goes in decompressed, without that suffix."""
        prov = self._prov(why) if why else self._prov()
        if dest is None or dest == path:
            for link, target in self.sysroot.symlink_chain(path):
                if link in USRMERGE_LINKS and self.manifest.get(link) is not None:
                    continue
                if decompress and strip_compression(link) != link:
                    continue  # a link to the compressed file: the image has only the decompressed one
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
        if decompress and strip_compression(real) != real:
            entry = Entry(
                strip_compression(dest), Kind.FILE, m, source=real, decompress=True, provenance=prov
            )
        else:
            entry = Entry(dest, Kind.FILE, m, source=real, provenance=prov)
        self._add(entry, override)

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
        k = Kind(kind) if kind in DEVICE_KINDS else None
        if k is None:
            raise ModuleError(f"{self.module}: device {path}: type {kind!r} is not one of: char, block")
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
        self.driver_requests.append(DriverRequest(name, optional, self.module, location, first))

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
        hook = self.plan.hooks.load(spec)
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

    def install_drivers(self, *, all_drivers: bool = False, firmware: bool = True) -> Resolution:
        """Resolve every requested driver once, add .ko files, firmware and the modules.* indexes."""
        required = [d.name for d in self.driver_requests if not d.optional]
        optional = [d.name for d in self.driver_requests if d.optional]
        if all_drivers:
            optional += [n for n in self.kmods.all_modules() if n not in required]
        # Name every missing required driver, each with who asked for it, before resolving.
        for d in self.driver_requests:
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
        for km in res.modules:
            self.module = "kernel-modules"
            self.add_path(km.source, why=f"driver {km.name}", decompress=True)
            if firmware:
                for fw in self.kmods.firmware_paths(km):
                    self.add_path(fw, why=f"firmware of {km.name}")
        # Stage one insmods explicit paths in a fixed order: modprobe's indexes are dead weight there.
        indexes = modindex.index_files(self.kmods, res.modules) if self.stage == 2 else {}
        if self.stage == 2 and self._binary_indexes:
            indexes.update(modindex.binary_indexes(self.kmods, res.modules))
        for path, data in sorted(indexes.items()):
            dest = path if path.startswith("/") else f"/lib/modules/{self.kver}/{path}"
            self.add_data(dest, data, why="module index for modprobe")
        self.module = "profile"
        return res


if TYPE_CHECKING:  # mypy proves here that a Collector provides everything InstallContext promises

    def _implements_install_context(c: Collector) -> InstallContext:
        return c

"""Kernel-module closure from the depmod output files of a sysroot, the way kmod's modprobe computes it.

Nothing here runs modprobe or modinfo: `modules.dep`, `modules.alias`, `modules.symbols`,
`modules.softdep`, `modules.builtin`, `modules.builtin.modinfo` and `modules.order` are parsed as text,
and `firmware=` comes from each module's `.modinfo` section read with pyelftools.

The load order reproduces libkmod's probe list (`__kmod_module_get_probe_list` in
libkmod/libkmod-module.c): for a module M, each of M's dependencies in load order (modules.dep lists
them deepest last, libkmod prepends, so the line is read backwards) is preceded by its softdep `pre:`
modules and followed by its `post:` modules, then M itself, likewise wrapped in its own softdeps. The
result is what `modprobe --show-depends M` prints, minus repeats.

Name lookup follows `kmod_module_new_from_lookup`: the first source that knows the name wins, in the
order modprobe.d `alias`, modules.dep (a module name), modules.symbols, modules.alias (fnmatch
patterns), modules.builtin, builtin aliases (modules.builtin.modinfo). Names are normalised like
libkmod's alias_normalize(): "-" is "_" except inside "[...]" character classes.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .. import log
from ..errors import ResolveError
from ..sysroot import Sysroot, strip_compression
from .modfile import MODULE_SUFFIXES, ModuleSignature, module_signature, read_modinfo

# Where modprobe reads configuration, highest priority first; a file name seen earlier hides later ones
# (kmod's conf_files_list), then all files are read sorted by name.
MODPROBE_D = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/lib/modprobe.d")
# The kernel's firmware search path (drivers/base/firmware_loader/main.c, fw_path[]), and the
# compressed forms CONFIG_FW_LOADER_COMPRESS accepts.
FIRMWARE_DIRS = (
    "/lib/firmware/updates/{kver}",
    "/lib/firmware/updates",
    "/lib/firmware/{kver}",
    "/lib/firmware",
)
FIRMWARE_SUFFIXES = ("", ".zst", ".xz")


def normalize(name: str) -> str:
    """libkmod's alias_normalize(): "-" becomes "_", except inside "[...]" (a glob character class)."""
    if "-" not in name:  # most names: called ~70 000 times a build, so skip the loop
        return name
    if "[" not in name:
        return name.replace("-", "_")
    out = []
    in_class = False
    for c in name:
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        out.append("_" if c == "-" and not in_class else c)
    return "".join(out)


def module_name(path: str) -> str:
    """ "kernel/fs/erofs/erofs.ko.xz" -> "erofs"; "crc32c-intel.ko" -> "crc32c_intel"."""
    base = posixpath.basename(path)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return normalize(base)


@dataclass(frozen=True)
class Kmod:
    """One loadable module (a .ko file), as the image needs it."""

    name: str  # normalised module name ("crc32c_intel")
    path: str  # image path of the file, e.g. "/lib/modules/<kver>/kernel/fs/erofs/erofs.ko"
    # its file in the sysroot: `path`, or `path` compressed (erofs.ko.xz), which images store
    # decompressed (Sysroot.read_decompressed) under `path`
    source: str
    deps: tuple[str, ...]  # names of all its modules.dep dependencies, in load order
    firmware: tuple[str, ...]  # firmware= entries of its .modinfo section, in section order


@dataclass
class Resolution:
    """Result of KernelModules.resolve()."""

    modules: list[Kmod]  # load order: deps first, softdep pre before, post after (modprobe's order)
    builtin: list[str] = field(default_factory=list)  # requested (or softdep) names built into the kernel
    missing_optional: list[str] = field(default_factory=list)  # optional names found nowhere


@dataclass(frozen=True)
class _Softdep:
    pattern: str  # module name or fnmatch pattern, normalised
    pre: tuple[str, ...]
    post: tuple[str, ...]


@dataclass(frozen=True)
class _Found:
    """One answer of a name lookup."""

    name: str
    builtin: bool


class WildAliases:
    """modules.alias patterns with wildcards, matched in file order (as libkmod reports them).

    A build looks up a few hundred modaliases against ~20 000 patterns; fnmatch on each (and compiling
    each pattern to a regex) took most of a second. A pattern can only match a key that starts with
    its literal prefix (the text before its first wildcard), and almost every prefix names its bus
    ("pci:", "acpi:", ...): patterns are grouped by that bus and checked by prefix before fnmatch.
    """

    def __init__(self, patterns: list[tuple[str, str]]):
        self.patterns = patterns  # (pattern, module), file order
        self._by_bus: dict[str, list[tuple[int, str, str, str]]] = {}
        self._any: list[tuple[int, str, str, str]] = []  # no bus in the literal prefix
        for i, (pat, mod) in enumerate(patterns):
            cut = min((k for k in (pat.find(c) for c in "*?[") if k >= 0), default=len(pat))
            prefix = pat[:cut]
            entry = (i, prefix, pat, mod)
            if ":" in prefix:
                self._by_bus.setdefault(prefix.split(":", 1)[0], []).append(entry)
            else:
                self._any.append(entry)

    def match(self, key: str) -> list[str]:
        bus = key.split(":", 1)[0] if ":" in key else None
        cands = (self._by_bus.get(bus, []) if bus is not None else []) + self._any
        hits = [(i, m) for i, pre, pat, m in cands if key.startswith(pre) and fnmatch.fnmatchcase(key, pat)]
        return [m for _, m in sorted(hits)]


class KernelModules:
    """The modules of one kernel version in a sysroot."""

    def __init__(self, sysroot: Sysroot, kver: str):
        self.sysroot = sysroot
        self.kver = kver
        self.moddir = self._find_moddir()
        # name -> (relative path, dependency relpaths in modules.dep order); dicts keep file order
        self._dep: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._parse_dep()
        self._aliases_exact, wild = self._parse_alias_file("modules.alias")
        self._aliases_wild = WildAliases(wild)
        self._symbols, _ = self._parse_alias_file("modules.symbols")
        self._builtin = self._parse_builtin()
        self._builtin_aliases = self._parse_builtin_aliases()
        self._config_aliases: list[tuple[str, str]] = []
        self._softdeps: list[_Softdep] = []
        self._parse_config()
        self._kmods: dict[str, Kmod] = {}
        self._warned: set[tuple[str, str]] = set()  # (module, softdep) pairs already warned about
        self._raw_aliases: dict[str, list[str]] | None = None

    # -- parsing ----------------------------------------------------------------------------------
    def _find_moddir(self) -> str:
        for base in ("/lib/modules", "/usr/lib/modules"):
            d = f"{base}/{self.kver}"
            if self.sysroot.is_file(f"{d}/modules.dep"):
                return d
        raise ResolveError(
            f"no modules.dep for kernel {self.kver} in {self.sysroot.root}/lib/modules",
            hint="install the kernel's modules package, or run depmod for it",
        )

    def read_lines(self, name: str) -> list[str]:
        """The lines of one of the tree's index files (modules.alias ...); [] when it has none."""
        path = f"{self.moddir}/{name}"
        if not self.sysroot.is_file(path):
            return []
        return self.sysroot.read_text(path).splitlines()

    def _parse_dep(self) -> None:
        for line in self.read_lines("modules.dep"):
            if ":" not in line or line.startswith("#"):
                continue
            rel, _, rest = line.partition(":")
            rel = rel.strip()
            name = module_name(rel)
            self._dep.setdefault(name, (rel, tuple(rest.split())))

    def _parse_alias_file(self, name: str) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
        """ "alias PATTERN MODULE" lines: exact patterns in a dict, wildcard ones in a list (file order)."""
        exact: dict[str, list[str]] = {}
        wild: list[tuple[str, str]] = []
        for line in self.read_lines(name):
            words = line.split()
            if len(words) != 3 or words[0] != "alias":
                continue
            pattern, mod = normalize(words[1]), normalize(words[2])
            if any(c in pattern for c in "*?["):
                wild.append((pattern, mod))
            else:
                exact.setdefault(pattern, []).append(mod)
        return exact, wild

    def _parse_builtin(self) -> dict[str, str]:
        """Builtin module name -> its line in modules.builtin (kept to write a subset back)."""
        return {
            module_name(line.strip()): line for line in self.read_lines("modules.builtin") if line.strip()
        }

    def _parse_builtin_aliases(self) -> dict[str, list[str]]:
        """alias -> builtin module names, from the NUL-separated "module.alias=value" records."""
        path = f"{self.moddir}/modules.builtin.modinfo"
        if not self.sysroot.is_file(path):
            return {}
        out: dict[str, list[str]] = {}
        for rec in self.sysroot.read_bytes(path).split(b"\0"):
            key, sep, value = rec.decode("utf-8", errors="replace").partition("=")
            mod, dot, attr = key.partition(".")
            if sep and dot and attr == "alias":
                out.setdefault(normalize(value), []).append(normalize(mod))
        return out

    def _config_files(self) -> list[str]:
        """modules.softdep plus modprobe.d/*.conf, deduplicated by name, in name order (kmod_config_new)."""
        files: dict[str, str] = {}
        if self.sysroot.is_file(f"{self.moddir}/modules.softdep"):
            files["modules.softdep"] = f"{self.moddir}/modules.softdep"
        for d in MODPROBE_D:
            if not self.sysroot.is_dir(d):
                continue
            for n in self.sysroot.listdir(d):
                if n.endswith(".conf") and n not in files and self.sysroot.is_file(f"{d}/{n}"):
                    files[n] = f"{d}/{n}"
        return [files[n] for n in sorted(files)]

    def _parse_config(self) -> None:
        """The `alias` and `softdep` commands (blacklist/options/install do not change the closure)."""
        for path in self._config_files():
            for raw in self.sysroot.read_text(path).splitlines():
                words = raw.split("#", 1)[0].split()
                if len(words) < 3:
                    continue
                if words[0] == "alias":
                    self._config_aliases.append((normalize(words[1]), normalize(words[2])))
                elif words[0] == "softdep":
                    self._softdeps.append(_parse_softdep(normalize(words[1]), words[2:]))

    # -- queries ----------------------------------------------------------------------------------
    def all_modules(self) -> list[str]:
        """Every loadable module name, in modules.dep order."""
        return list(self._dep)

    def dep_entries(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(name, path in the tree, dependency paths) of every modules.dep line, in file order."""
        return [(name, rel, deps) for name, (rel, deps) in self._dep.items()]

    def modules_under(self, dir_glob: str) -> list[str]:
        """Module names whose file lies under a directory of the module tree, e.g. "kernel/drivers/block"
        or "kernel/drivers/*/virtio" (fnmatch; "*" also crosses "/")."""
        pattern = dir_glob.strip("/") + "/*"
        return [n for n, (rel, _) in self._dep.items() if fnmatch.fnmatchcase(rel, pattern)]

    def is_builtin(self, name: str) -> bool:
        return normalize(name) in self._builtin

    def lookup(self, name: str) -> list[_Found]:
        """What `name` (module name or alias) designates, in kmod_module_new_from_lookup order."""
        key = normalize(name)
        sources: list[Callable[[], list[str]]] = [
            lambda: [m for pat, m in self._config_aliases if fnmatch.fnmatchcase(key, pat)],
            lambda: [key] if key in self._dep else [],
            lambda: self._symbols.get(key, []),
            lambda: self._aliases_exact.get(key, []) + self._aliases_wild.match(key),
        ]
        for source in sources:
            # a name pointing at a module that is neither in modules.dep nor builtin (a stale alias
            # or modprobe.d line) cannot be loaded: ignore it rather than fail later
            names = [n for n in dict.fromkeys(source()) if n in self._dep or n in self._builtin]
            if names:
                return [_Found(n, n in self._builtin and n not in self._dep) for n in names]
        if key in self._builtin:
            return [_Found(key, True)]
        return [_Found(n, True) for n in dict.fromkeys(self._builtin_aliases.get(key, []))]

    def builtin_provider(self, name: str) -> str | None:
        """The built-in module that is, or carries the alias, `name` (crc32c_generic for "crc32c")."""
        key = normalize(name)
        if key in self._builtin:
            return key
        return next(iter(self._builtin_aliases.get(key, [])), None)

    def kmod(self, name: str) -> Kmod:
        """The Kmod of a loadable module name (its .modinfo is read once)."""
        name = normalize(name)
        if name not in self._dep:
            raise ResolveError(f"kernel module {name} is not in {self.moddir}/modules.dep")
        if name not in self._kmods:
            rel, deps = self._dep[name]
            source = rel if rel.startswith("/") else f"{self.moddir}/{rel}"
            dep_names = tuple(module_name(d) for d in reversed(deps))
            firmware = tuple(self._read_firmware(source))
            self._kmods[name] = Kmod(name, strip_compression(source), source, dep_names, firmware)
        return self._kmods[name]

    def _softdeps_of(self, name: str) -> _Softdep | None:
        # only the first matching softdep counts, "as modprobe from module-init-tools does"
        return next((s for s in self._softdeps if fnmatch.fnmatchcase(name, s.pattern)), None)

    # -- the closure ------------------------------------------------------------------------------
    def resolve(
        self, names: Iterable[str], *, optional: Iterable[str] = (), lean: bool = False
    ) -> Resolution:
        """The modules to load for `names` (required) and `optional`, in load order.

        A required name that is neither a module, an alias nor builtin raises ResolveError; a missing
        optional one is reported in `missing_optional`. `lean` leaves out a softdep that the kernel
        already provides built in (libcrc32c's "pre: crc32c" with crc32c_generic built in): what
        modprobe would add for it is only another implementation, such as crc32c_intel.
        """
        order: list[str] = []
        builtin: list[str] = []
        missing: list[str] = []
        for name, required in [*((n, True) for n in names), *((n, False) for n in optional)]:
            found = self.lookup(name)
            if not found:
                if required:
                    raise ResolveError(f"kernel module {name} not found for kernel {self.kver}")
                missing.append(name)
                continue
            for f in found:
                if f.builtin:
                    builtin.append(f.name)
                else:
                    order.extend(self._probe_list(f.name, builtin, lean))
        mods = [self.kmod(n) for n in dict.fromkeys(order)]
        self._check_cycles(mods)
        return Resolution(mods, list(dict.fromkeys(builtin)), missing)

    def _probe_list(self, name: str, builtin: list[str], lean: bool = False) -> list[str]:
        """libkmod's probe list for one module (may contain repeats; the first occurrence counts)."""
        out: list[str] = []
        visited: set[str] = set()

        def probe(mod: str) -> None:  # __kmod_module_get_probe_list
            if mod in visited:
                return
            visited.add(mod)
            for dep in self.kmod(mod).deps:
                fill(dep)
            fill(mod)

        def fill(mod: str) -> None:  # __kmod_module_fill_softdep
            soft = self._softdeps_of(mod)
            for target in self._softdep_targets(mod, soft.pre if soft else (), builtin, lean):
                probe(target)
            out.append(mod)
            for target in self._softdep_targets(mod, soft.post if soft else (), builtin, lean):
                probe(target)

        probe(name)
        return out

    def _softdep_targets(
        self, mod: str, names: Iterable[str], builtin: list[str], lean: bool = False
    ) -> list[str]:
        """Loadable modules a softdep names; builtin ones go to `builtin` (modprobe prints them)."""
        out = []
        for n in names:
            if lean and (provided := self.builtin_provider(n)):
                builtin.append(provided)
                continue
            found = self.lookup(n)
            if not found and (mod, n) not in self._warned:
                self._warned.add((mod, n))
                log.warning(f"{n} is a soft dependency of {mod} but is not available, ignoring")
            for f in found:
                if f.builtin:
                    builtin.append(f.name)
                else:
                    out.append(f.name)
        return out

    def _check_cycles(self, mods: list[Kmod]) -> None:
        """insmod cannot load modules that need each other; depmod refuses such trees, so should we."""
        for m in mods:
            for d in m.deps:
                if d == m.name or (d in self._dep and m.name in self.kmod(d).deps):
                    raise ResolveError(f"dependency cycle between kernel modules {m.name} and {d}")

    # -- signatures -------------------------------------------------------------------------------
    def signature(self, name: str) -> ModuleSignature | None:
        """The signature appended to a loadable module, None when it is unsigned."""
        return module_signature(self.sysroot.read_decompressed(self.kmod(name).source))

    def signature_hash(self, sample: int = 3) -> str | None:
        """The hash the kernel computes over every module it verifies ("sha256"), from the signatures of
        the first `sample` in-tree modules of modules.dep; None when they are unsigned (or the digest
        unknown)."""
        # in-tree modules first: out-of-tree ones (DKMS, updates/) may be unsigned or signed otherwise
        names = sorted(self._dep, key=lambda n: not self._dep[n][0].startswith("kernel/"))
        for name in names[:sample]:
            sig = self.signature(name)
            if sig is not None and sig.hash_algo:
                return sig.hash_algo
        return None

    def crypto_providers(self, algo: str) -> list[str]:
        """Loadable modules that implement crypto algorithm `algo` (alias crypto-ALGO), such as
        sha256_ssse3 for "sha256"; built-in implementations are left out."""
        return [m for m in self._aliases_exact.get(normalize(f"crypto-{algo}"), []) if m in self._dep]

    # -- firmware ---------------------------------------------------------------------------------
    def _read_firmware(self, path: str) -> list[str]:
        return [v for k, v in read_modinfo(self.sysroot, path) if k == "firmware"]

    def raw_aliases(self) -> dict[str, list[str]]:
        """Module name -> its modules.alias patterns exactly as written (not normalised).

        For matching device modaliases at boot, which sysfs gives raw (`scsi:t-0x00`, `-` kept).
        """
        if self._raw_aliases is None:
            out: dict[str, list[str]] = {}
            for line in self.read_lines("modules.alias"):
                words = line.split()
                if len(words) == 3 and words[0] == "alias":
                    out.setdefault(normalize(words[2]), []).append(words[1])
            self._raw_aliases = out
        return self._raw_aliases

    def firmware_paths(self, kmod: Kmod) -> list[str]:
        """Image paths of the firmware files `kmod` declares, first match in the kernel's search order.

        Missing firmware is common (optional blobs for hardware variants) and only warned about.
        """
        out = []
        for fw in kmod.firmware:
            found = self._find_firmware(fw)
            if found is None:
                log.warning(f"firmware {fw} for kernel module {kmod.name} not found, ignoring")
            else:
                out.append(found)
        return out

    def _find_firmware(self, fw: str) -> str | None:
        for d in FIRMWARE_DIRS:
            for suffix in FIRMWARE_SUFFIXES:
                p = f"{d.format(kver=self.kver)}/{fw}{suffix}"
                if self.sysroot.is_file(p):
                    return p
        return None


def _parse_softdep(name: str, words: list[str]) -> _Softdep:
    """`softdep NAME [pre: A B] [post: C]`: words before any "pre:"/"post:" are ignored, like kmod."""
    pre: list[str] = []
    post: list[str] = []
    mode: list[str] | None = None
    for w in words:
        if w == "pre:":
            mode = pre
        elif w == "post:":
            mode = post
        elif mode is not None:
            mode.append(w)
    return _Softdep(name, tuple(pre), tuple(post))

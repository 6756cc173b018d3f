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
import gzip
import io
import lzma
import posixpath
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .. import log
from ..errors import ResolveError
from ..sysroot import Sysroot

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
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
# Index files the image gets. The binary tries (*.bin) that kmod's modprobe prefers are never copied:
# a stale .bin would describe modules the image does not have.
TEXT_INDEXES = ("modules.dep", "modules.alias", "modules.symbols", "modules.softdep", "modules.order")


def normalize(name: str) -> str:
    """libkmod's alias_normalize(): "-" becomes "_", except inside "[...]" (a glob character class)."""
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


class KernelModules:
    """The modules of one kernel version in a sysroot."""

    def __init__(self, sysroot: Sysroot, kver: str):
        self.sysroot = sysroot
        self.kver = kver
        self.moddir = self._find_moddir()
        # name -> (relative path, dependency relpaths in modules.dep order); dicts keep file order
        self._dep: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._by_rel: dict[str, str] = {}
        self._parse_dep()
        self._aliases_exact, self._aliases_wild = self._parse_alias_file("modules.alias")
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

    def _read_lines(self, name: str) -> list[str]:
        path = f"{self.moddir}/{name}"
        if not self.sysroot.is_file(path):
            return []
        return self.sysroot.read_text(path).splitlines()

    def _parse_dep(self) -> None:
        for line in self._read_lines("modules.dep"):
            if ":" not in line or line.startswith("#"):
                continue
            rel, _, rest = line.partition(":")
            rel = rel.strip()
            name = module_name(rel)
            self._dep.setdefault(name, (rel, tuple(rest.split())))
            self._by_rel[rel] = name

    def _parse_alias_file(self, name: str) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
        """ "alias PATTERN MODULE" lines: exact patterns in a dict, wildcard ones in a list (file order)."""
        exact: dict[str, list[str]] = {}
        wild: list[tuple[str, str]] = []
        for line in self._read_lines(name):
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
            module_name(line.strip()): line for line in self._read_lines("modules.builtin") if line.strip()
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
            lambda: (
                self._aliases_exact.get(key, [])
                + [m for pat, m in self._aliases_wild if fnmatch.fnmatchcase(key, pat)]
            ),
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
            path = self._image_path(rel)
            dep_names = tuple(module_name(d) for d in reversed(deps))
            self._kmods[name] = Kmod(name, path, dep_names, tuple(self._read_firmware(path)))
        return self._kmods[name]

    def _image_path(self, rel: str) -> str:
        return rel if rel.startswith("/") else f"{self.moddir}/{rel}"

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

    @staticmethod
    def load_order(mods: Iterable[Kmod]) -> list[Kmod]:
        """Order `mods` for insmod: each after the dependencies among them, otherwise as given.

        resolve() already returns load order; this is for lists merged from several resolutions.
        """
        given = {m.name: m for m in mods}
        out: dict[str, Kmod] = {}
        for m in given.values():
            for d in m.deps:  # deps are complete and in load order already (from modules.dep)
                if d in given and d not in out:
                    out[d] = given[d]
            out.setdefault(m.name, m)
        return list(out.values())

    # -- signatures -------------------------------------------------------------------------------
    def signature(self, name: str) -> ModuleSignature | None:
        """The signature appended to a loadable module, None when it is unsigned."""
        path = self.kmod(name).path
        return module_signature(decompress_module(path, self.sysroot.read_bytes(path)))

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
            for line in self._read_lines("modules.alias"):
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

    # -- index files for the image ----------------------------------------------------------------
    def index_files(self, selected: list[Kmod], *, builtin: bool = True) -> dict[str, bytes]:
        """The text index files for an image holding only `selected`, keyed by file name.

        Enough for busybox modprobe (reads modules.dep and modules.alias/modules.symbols as text). kmod's
        modprobe reads only the binary *.bin indexes: run `depmod -b <staging> <kver>` on the staged tree
        to get them; never copy the host's, which would list modules the image does not have.
        `builtin=False` leaves out modules.builtin(.modinfo), making modprobe fail on builtin names.
        """
        names = {m.name for m in selected}
        for m in selected:
            for d in m.deps:
                if d not in names:
                    log.warning(
                        f"{d} is a dependency of {m.name} but is not selected: modules.dep is incomplete"
                    )
        out = {
            "modules.dep": self._dep_subset(names),
            "modules.alias": self._alias_subset("modules.alias", names),
            "modules.symbols": self._alias_subset("modules.symbols", names),
            "modules.softdep": self._softdep_subset(names),
            "modules.order": self._order_subset(names),
        }
        if builtin:
            for n in ("modules.builtin", "modules.builtin.modinfo"):
                p = f"{self.moddir}/{n}"
                out[n] = self.sysroot.read_bytes(p) if self.sysroot.is_file(p) else b""
        return out

    def binary_indexes(self, selected: list[Kmod]) -> dict[str, bytes]:
        """The binary modules.*.bin indexes libkmod reads (udev's kmod builtin, kmod's modprobe) for an
        image holding only `selected`: `depmod -b STAGING` over links to those modules, with this
        tree's modules.order and modules.builtin(.modinfo). Keyed by file name."""
        from ..run import find_tool, run  # the one place that runs programs

        depmod = find_tool(
            "depmod", reason="write the binary module indexes libkmod reads", hint="apt-get install kmod"
        )
        with tempfile.TemporaryDirectory(prefix="initbuild-depmod-") as tmp:
            staged = Path(tmp) / "lib" / "modules" / self.kver
            staged.mkdir(parents=True)
            for km in selected:
                dest = staged / posixpath.relpath(km.path, self.moddir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(self.sysroot.host_path(self.sysroot.resolve(km.path)))
            for name, data in self.index_files(selected).items():
                if name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
                    (staged / name).write_bytes(data)
            run([depmod, "-b", tmp, self.kver])
            return {p.name: p.read_bytes() for p in sorted(staged.glob("modules.*.bin"))}

    def _dep_subset(self, names: set[str]) -> bytes:
        lines = []
        for name, (rel, deps) in self._dep.items():
            if name in names:
                kept = [d for d in deps if module_name(d) in names]
                lines.append(f"{rel}:" + "".join(f" {d}" for d in kept) + "\n")
        return "".join(lines).encode()

    def _alias_subset(self, file: str, names: set[str]) -> bytes:
        lines = []
        for line in self._read_lines(file):
            words = line.split()
            if line.startswith("#") or (
                len(words) == 3 and words[0] == "alias" and normalize(words[2]) in names
            ):
                lines.append(line + "\n")
        return "".join(lines).encode()

    def _softdep_subset(self, names: set[str]) -> bytes:
        lines = []
        for line in self._read_lines("modules.softdep"):
            words = line.split()
            if line.startswith("#") or (
                len(words) >= 2 and words[0] == "softdep" and normalize(words[1]) in names
            ):
                lines.append(line + "\n")
        return "".join(lines).encode()

    def _order_subset(self, names: set[str]) -> bytes:
        lines = [
            line + "\n" for line in self._read_lines("modules.order") if module_name(line.strip()) in names
        ]
        return "".join(lines).encode()


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


def decompress_module(path: str, data: bytes) -> bytes:
    """The ELF bytes of a .ko, .ko.xz, .ko.zst or .ko.gz (decompressed in memory)."""
    try:
        if path.endswith(".xz"):
            return lzma.decompress(data)
        if path.endswith(".zst"):
            # the kernel's zstd modules may lack the content size in the frame header: stream it
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        if path.endswith(".gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as e:
        raise ResolveError(f"cannot decompress kernel module {path}: {e}") from e
    return data


def read_modinfo(sysroot: Sysroot, path: str) -> list[tuple[str, str]]:
    """(key, value) pairs of a module's .modinfo section, in section order."""
    data = decompress_module(path, sysroot.read_bytes(path))
    if not data.startswith(b"\x7fELF"):
        raise ResolveError(f"kernel module {path} is not an ELF file")
    try:
        section = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        raw = section.data() if section is not None else b""
    except (ELFError, ValueError) as e:
        raise ResolveError(f"cannot parse kernel module {path}: {e}") from e
    out = []
    for rec in raw.split(b"\0"):
        key, sep, value = rec.decode("utf-8", errors="replace").partition("=")
        if sep:
            out.append((key, value))
    return out


# -- module signatures (include/linux/module_signature.h, scripts/sign-file.c) ---------------------

MODULE_SIG_STRING = b"~Module signature appended~\n"
MODULE_SIGNATURE_SIZE = 12  # struct module_signature: u8 algo, hash, id_type, signer_len, key_id_len,
# u8 __pad[3], __be32 sig_len
PKEY_ID_PKCS7 = 2
OID_PKCS7_SIGNED_DATA = "1.2.840.113549.1.7.2"
# Digest algorithm OIDs (include/linux/oid_registry.h) -> kernel crypto API hash names.
HASH_OIDS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
    "1.2.156.10197.1.401": "sm3",
}


@dataclass(frozen=True)
class ModuleSignature:
    """The signature appended to a module: its struct module_signature and the PKCS#7 digest."""

    id_type: int
    sig_len: int
    hash_algo: str | None  # the kernel crypto name of the PKCS#7 digest ("sha256"), None if unknown


def _der(buf: bytes, at: int) -> tuple[int, int, int]:
    """One DER header at `at`: (tag, content start, content end)."""
    if at + 2 > len(buf):
        raise ValueError("truncated DER")
    tag, length = buf[at], buf[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4 or at + n > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[at : at + n], "big")
        at += n
    if at + length > len(buf):
        raise ValueError("DER value overruns its container")
    return tag, at, at + length


def _oid(raw: bytes) -> str:
    """Dotted form of a DER OBJECT IDENTIFIER's content (X.690 8.19: base-128 subidentifiers, the first
    one holding 40 * X + Y)."""
    subids, value = [], 0
    for b in raw:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            subids.append(value)
            value = 0
    if not subids:
        return ""
    x = min(subids[0] // 40, 2)
    return ".".join(map(str, [x, subids[0] - 40 * x, *subids[1:]]))


def pkcs7_digest_algo(der: bytes) -> str | None:
    """The digest algorithm of a PKCS#7 SignedData (RFC 2315: ContentInfo { contentType, [0] SignedData
    { version, digestAlgorithms SET OF AlgorithmIdentifier, ... } }), as a crypto API name."""
    try:
        tag, at, _ = _der(der, 0)  # ContentInfo SEQUENCE
        tag_oid, o0, o1 = _der(der, at)
        if tag != 0x30 or tag_oid != 0x06 or _oid(der[o0:o1]) != OID_PKCS7_SIGNED_DATA:
            return None
        tag, at, _ = _der(der, o1)  # [0] EXPLICIT
        tag_sd, at, _ = _der(der, at)  # SignedData SEQUENCE
        tag_v, _, at = _der(der, at)  # version INTEGER
        tag_set, at, _ = _der(der, at)  # digestAlgorithms SET
        tag_alg, at, _ = _der(der, at)  # AlgorithmIdentifier SEQUENCE
        tag_oid, o0, o1 = _der(der, at)
        if (tag, tag_sd, tag_v, tag_set, tag_alg, tag_oid) != (0xA0, 0x30, 0x02, 0x31, 0x30, 0x06):
            return None
        return HASH_OIDS.get(_oid(der[o0:o1]))
    except ValueError:
        return None


def module_signature(data: bytes) -> ModuleSignature | None:
    """The signature appended to a module's (decompressed) bytes, None when it is unsigned."""
    if not data.endswith(MODULE_SIG_STRING) or len(data) < len(MODULE_SIG_STRING) + MODULE_SIGNATURE_SIZE:
        return None
    end = len(data) - len(MODULE_SIG_STRING)
    ms = data[end - MODULE_SIGNATURE_SIZE : end]
    id_type, sig_len = ms[2], int.from_bytes(ms[8:12], "big")
    if sig_len > end - MODULE_SIGNATURE_SIZE:
        return None
    sig = data[end - MODULE_SIGNATURE_SIZE - sig_len : end - MODULE_SIGNATURE_SIZE]
    return ModuleSignature(id_type, sig_len, pkcs7_digest_algo(sig) if id_type == PKEY_ID_PKCS7 else None)

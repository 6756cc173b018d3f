"""Shared-library closure of ELF binaries, computed the way glibc's ld.so would, without running ldd.

Everything is read through a Sysroot, so the answer is about the *source tree*, not the host. The search
order follows glibc's `_dl_map_object` (elf/dl-load.c):

1. a DT_NEEDED name containing "/" is used as a path;
2. a name already loaded (by DT_NEEDED name or DT_SONAME) is reused, whoever asks for it;
3. if the requesting object has no DT_RUNPATH: the DT_RPATH of the requester, then of the object that
   loaded it, and so on up to the executable (an object that has DT_RUNPATH contributes no DT_RPATH);
4. (LD_LIBRARY_PATH is not used: it is an environment of the build host, not of the image);
5. the requester's own DT_RUNPATH (never inherited by the libraries it loads);
6. the directories of /etc/ld.so.conf (what ld.so.cache is built from), in file order;
7. the system directories (multiarch dirs first, as Debian's glibc does, then lib64, then lib).

A candidate file of the wrong ELF class, byte order or machine is skipped and the search goes on, as
ld.so does with a 32-bit library sitting in a 64-bit search directory. glibc-hwcaps subdirectories are not
searched: which one ld.so picks depends on the CPU that boots the image, and the baseline copy outside
glibc-hwcaps is always there.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.construct.core import ConstructError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from .. import log
from ..errors import ResolveError
from ..sysroot import Sysroot, normpath

ELF_MAGIC = b"\x7fELF"
MAX_SCRIPT_NESTING = 4  # Linux BINPRM_MAX_RECURSION: "#!" interpreters may themselves be scripts
MAX_SHEBANG = 256  # Linux BINPRM_BUF_SIZE: the kernel reads at most this much of a "#!" line

# Multiarch triplet per (e_machine, ELF class); Debian-style directories are searched before the
# lib64/lib ones. Unknown machines just get lib64/lib.
_MULTIARCH = {
    ("EM_X86_64", 64): "x86_64-linux-gnu",
    ("EM_X86_64", 32): "x86_64-linux-gnux32",
    ("EM_386", 32): "i386-linux-gnu",
    ("EM_AARCH64", 64): "aarch64-linux-gnu",
    ("EM_ARM", 32): "arm-linux-gnueabihf",
    ("EM_RISCV", 64): "riscv64-linux-gnu",
    ("EM_PPC64", 64): "powerpc64le-linux-gnu",
    ("EM_S390", 64): "s390x-linux-gnu",
}
# AT_PLATFORM values ld.so substitutes for $PLATFORM (a build-time guess: the image's CPU is unknown).
_PLATFORM = {"EM_X86_64": "x86_64", "EM_386": "i686", "EM_AARCH64": "aarch64", "EM_RISCV": "riscv64"}


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader reads from one ELF file (program headers only)."""

    elfclass: int  # 32 or 64 (EI_CLASS)
    little_endian: bool  # EI_DATA
    machine: str  # e_machine, e.g. "EM_X86_64"
    interp: str | None  # PT_INTERP
    needed: tuple[str, ...]  # DT_NEEDED, in order
    soname: str | None  # DT_SONAME
    rpath: tuple[str, ...]  # DT_RPATH entries, unexpanded
    runpath: tuple[str, ...] | None  # DT_RUNPATH entries, unexpanded; None when the tag is absent

    def compatible(self, other: ElfInfo) -> bool:
        """Could ld.so load `other` into a process whose executable is `self`?"""
        return (self.elfclass, self.little_endian, self.machine) == (
            other.elfclass,
            other.little_endian,
            other.machine,
        )


@dataclass(frozen=True)
class Needed:
    """One file a binary needs: the path ld.so opens, the links to reproduce, the real file behind it."""

    path: str  # as found in the search directory, e.g. "/lib/x86_64-linux-gnu/libc.so.6"
    links: tuple[tuple[str, str], ...]  # (link path, link target) met while resolving `path`
    real: str  # the regular file at the end of the chain


@dataclass
class _Loaded:
    """An object in the simulated link map."""

    path: str  # path ld.so opened
    real: str  # resolved path inside the sysroot (identity, like glibc's dev/ino check)
    info: ElfInfo
    loader: _Loaded | None  # the object whose DT_NEEDED caused this one to load (l_loader)
    names: set[str] = field(default_factory=set)  # names it can be matched by (l_libname + soname)


_NOT_ELF = ElfInfo(0, True, "", None, (), None, (), None)  # stands in for a script interpreter's info


def _split_path_list(value: str) -> tuple[str, ...]:
    # ld.so splits on ":" (and ";" for historical reasons); empty entries mean the current directory,
    # which has no meaning in an image, so they are dropped.
    return tuple(p for p in value.replace(";", ":").split(":") if p)


class ElfResolver:
    """Computes the files a binary needs to run, reading the ELF files of a Sysroot."""

    def __init__(self, sysroot: Sysroot):
        self.sysroot = sysroot
        self._cache: dict[tuple[int, int, int], ElfInfo | None] = {}
        self._conf_dirs: list[str] | None = None

    # -- parsing ----------------------------------------------------------------------------------
    def parse(self, path: str) -> ElfInfo | None:
        """The loader-relevant content of an ELF file, or None if it is not an ELF file.

        Parses are cached by (st_dev, st_ino, st_mtime_ns): the same libc is asked about hundreds of times.
        """
        try:
            st = self.sysroot.stat(path)
        except OSError as e:
            raise ResolveError(f"cannot read {path} in sysroot {self.sysroot.root}: {e.strerror}") from e
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = self._parse_uncached(path)
        return self._cache[key]

    def _parse_uncached(self, path: str) -> ElfInfo | None:
        with self.sysroot.open(path) as f:
            if f.read(4) != ELF_MAGIC:
                return None  # the only ELFError that means "not ELF" is bad magic; check it ourselves
            f.seek(0)
            try:
                return _read_elf(ELFFile(f))
            except (ELFError, ELFParseError, ConstructError, ValueError, UnicodeDecodeError) as e:
                raise ResolveError(f"cannot parse ELF file {path}: {e}") from e

    def is_elf(self, path: str) -> bool:
        with self.sysroot.open(path) as f:
            return f.read(4) == ELF_MAGIC

    def shebang(self, path: str) -> str | None:
        """The interpreter of a "#!" script, or None (the kernel's binfmt_script rules)."""
        with self.sysroot.open(path) as f:
            head = f.read(MAX_SHEBANG)
        if not head.startswith(b"#!"):
            return None
        line = head[2:].split(b"\n", 1)[0].strip()
        if not line:
            return None
        return line.split()[0].decode("utf-8", errors="surrogateescape")

    # -- search directories -----------------------------------------------------------------------
    def ld_so_conf_dirs(self) -> list[str]:
        """Directories listed in /etc/ld.so.conf, following `include` globs, in order, deduplicated."""
        if self._conf_dirs is None:
            dirs: list[str] = []
            self._read_ld_so_conf("/etc/ld.so.conf", dirs, depth=0)
            self._conf_dirs = list(dict.fromkeys(dirs))
        return self._conf_dirs

    def _read_ld_so_conf(self, conf: str, dirs: list[str], depth: int) -> None:
        if depth > 10 or not self.sysroot.is_file(conf):  # ldconfig also bounds include recursion
            return
        for raw in self.sysroot.read_text(conf).splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "include":
                for pattern in words[1:]:
                    if not pattern.startswith("/"):  # relative to the including file, like ldconfig
                        pattern = posixpath.join(posixpath.dirname(conf), pattern)
                    for inc in self._glob(pattern):
                        self._read_ld_so_conf(inc, dirs, depth + 1)
            elif words[0] == "hwcap":
                continue  # obsolete ldconfig directive
            else:
                # old syntax "dir=libc5" and comma/space separated lists are still accepted by ldconfig
                for d in line.replace(",", " ").split():
                    dirs.append(normpath(d.split("=", 1)[0]))

    def _glob(self, pattern: str) -> list[str]:
        """Glob an image pattern, resolving symlinked directories inside the sysroot."""
        directory, base = posixpath.split(pattern)
        if any(c in directory for c in "*?["):
            return self.sysroot.glob(pattern)  # rare; no symlink resolution for globbed directories
        if not self.sysroot.is_dir(directory):
            return []
        return [
            posixpath.join(directory, n) for n in self.sysroot.listdir(directory) if fnmatch.fnmatch(n, base)
        ]

    def system_dirs(self, info: ElfInfo) -> list[str]:
        """The trusted directories ld.so searches last, for the executable's class and machine."""
        triplet = _MULTIARCH.get((info.machine, info.elfclass))
        dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []
        if info.elfclass == 64:
            dirs += ["/lib64", "/usr/lib64"]
        dirs += ["/lib", "/usr/lib"]
        return dirs

    def _lib_token(self, info: ElfInfo) -> str:
        """$LIB: Debian's glibc expands it to lib/<triplet>, Fedora's 64-bit glibc to lib64."""
        triplet = _MULTIARCH.get((info.machine, info.elfclass))
        if triplet and self.sysroot.is_dir(f"/lib/{triplet}"):
            return f"lib/{triplet}"
        return "lib64" if info.elfclass == 64 else "lib"

    def _expand(self, entry: str, obj: _Loaded, exe: _Loaded) -> str | None:
        """Expand $ORIGIN, $LIB and $PLATFORM in one RPATH/RUNPATH entry; None if it is unusable."""
        subs = {
            "ORIGIN": posixpath.dirname(obj.path),
            "LIB": self._lib_token(exe.info),
            "PLATFORM": _PLATFORM.get(exe.info.machine, ""),
        }
        out = entry
        for name, value in subs.items():
            out = out.replace("${" + name + "}", value).replace("$" + name, value)
        if "$" in out or not out.startswith("/"):
            return None  # unknown token or a relative entry (relative to ld.so's cwd): skip it
        return normpath(out)

    # -- the closure ------------------------------------------------------------------------------
    def needed(self, path: str) -> list[str]:
        """Image paths `path` needs at run time (not `path` itself): the interpreter, then libraries in
        load order. A "#!" script needs its interpreter and what that needs; a static binary nothing.
        """
        return [n.path for n in self._closure(path)]

    def needed_with_links(self, path: str) -> list[Needed]:
        """Like needed(), with the symlink chain of each path and the real file to copy."""
        out = []
        for n in self._closure(path):
            out.append(Needed(n.path, tuple(self.sysroot.symlink_chain(n.path)), n.real))
        return out

    def _closure(self, path: str, depth: int = 0) -> list[_Loaded]:
        path = normpath(path)
        if not self.sysroot.is_file(path):
            raise ResolveError(f"{path} not found in sysroot {self.sysroot.root}")
        info = self.parse(path)
        if info is not None:
            return self._link_map(path, info)
        interp = self.shebang(path)
        if interp is None:
            return []  # a data file or a script without "#!": nothing to run it with
        if depth >= MAX_SCRIPT_NESTING:
            raise ResolveError(f"{path}: too many levels of '#!' interpreters")
        if not self.sysroot.is_file(interp):
            raise ResolveError(f"interpreter {interp} of {path} not found in sysroot {self.sysroot.root}")
        head = _Loaded(normpath(interp), self.sysroot.resolve(interp), _NOT_ELF, None)
        return [head, *self._closure(interp, depth + 1)]

    def _link_map(self, path: str, info: ElfInfo) -> list[_Loaded]:
        """Simulate ld.so's breadth-first loading of DT_NEEDED (elf/dl-deps.c)."""
        exe = _Loaded(path, self.sysroot.resolve(path), info, None)
        out: list[_Loaded] = []
        loaded: list[_Loaded] = [exe]
        if info.interp is not None:
            interp = self._load_interp(info.interp, path, exe)
            out.append(interp)
            loaded.append(interp)
        queue: deque[_Loaded] = deque([exe])
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if self._find_loaded(name, loaded) is not None:
                    continue
                found = self._search(name, obj, exe)
                same = next((x for x in loaded if x.real == found.real), None)
                if same is not None:
                    # the same file reached under another name: ld.so opens this path, then reuses the
                    # object (dev/ino match); the path must still exist in the image
                    same.names.add(name)
                    if found.path not in (x.path for x in loaded):
                        out.append(found)
                        loaded.append(found)
                        found.names.add(name)
                    continue
                loaded.append(found)
                out.append(found)
                queue.append(found)
        return out

    def _load_interp(self, interp: str, path: str, exe: _Loaded) -> _Loaded:
        if not self.sysroot.is_file(interp):
            raise ResolveError(f"interpreter {interp} of {path} not found in sysroot {self.sysroot.root}")
        iinfo = self.parse(interp)
        if iinfo is None:
            raise ResolveError(f"interpreter {interp} of {path} is not an ELF file")
        obj = _Loaded(interp, self.sysroot.resolve(interp), iinfo, exe)
        # rtld is in the link map from the start, known by its soname (libc's DT_NEEDED on
        # ld-linux-x86-64.so.2 matches it) and by its file name
        obj.names.update(n for n in (iinfo.soname, posixpath.basename(interp)) if n)
        return obj

    @staticmethod
    def _find_loaded(name: str, loaded: list[_Loaded]) -> _Loaded | None:
        # glibc's _dl_name_match_p: the name used to load it, its path, or its DT_SONAME
        for obj in loaded:
            if name in obj.names or name == obj.path or name == obj.info.soname:
                return obj
        return None

    def _search(self, name: str, requester: _Loaded, exe: _Loaded) -> _Loaded:
        tried: list[str] = []
        for directory in self._search_dirs(name, requester, exe):
            candidate = posixpath.join(directory, name) if directory else name
            tried.append(directory or candidate)
            found = self._try_candidate(candidate, name, requester, exe)
            if found is not None:
                return found
        where = ", ".join(dict.fromkeys(tried)) or "(no directories)"
        raise ResolveError(f"{name} needed by {requester.path} not found in {where}")

    def _search_dirs(self, name: str, requester: _Loaded, exe: _Loaded) -> Iterator[str]:
        """Directories in ld.so order for one DT_NEEDED name ("" means: use the name as a path)."""
        if "/" in name:
            yield ""
            return
        if requester.info.runpath is None:
            obj: _Loaded | None = requester
            while obj is not None:
                if obj.info.runpath is None:  # an object with DT_RUNPATH contributes no DT_RPATH
                    for entry in obj.info.rpath:
                        d = self._expand(entry, obj, exe)
                        if d is not None:
                            yield d
                obj = obj.loader
        else:
            for entry in requester.info.runpath:
                d = self._expand(entry, requester, exe)
                if d is not None:
                    yield d
        yield from self.ld_so_conf_dirs()
        yield from self.system_dirs(exe.info)

    def _try_candidate(self, candidate: str, name: str, requester: _Loaded, exe: _Loaded) -> _Loaded | None:
        candidate = normpath(candidate)
        if not self.sysroot.is_file(candidate):
            return None
        info = self.parse(candidate)
        if info is None:
            log.debug(f"{candidate}: not an ELF file, skipped while looking for {name}")
            return None
        if not exe.info.compatible(info):
            log.debug(f"{candidate}: {info.elfclass}-bit {info.machine}, skipped while looking for {name}")
            return None
        obj = _Loaded(candidate, self.sysroot.resolve(candidate), info, requester)
        obj.names.add(name)
        return obj


_STRING_TAGS = {"DT_NEEDED": "needed", "DT_SONAME": "soname", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath"}


def _read_elf(elf: ELFFile) -> ElfInfo:
    """Read PT_INTERP and PT_DYNAMIC from the program headers (section headers may be stripped)."""
    interp: str | None = None
    needed: list[str] = []
    soname: str | None = None
    rpath: list[str] = []
    runpath: list[str] | None = None
    for seg in elf.iter_segments():
        if isinstance(seg, InterpSegment):
            interp = seg.get_interp_name()
        elif isinstance(seg, DynamicSegment):
            for tag in seg.iter_tags():
                kind = tag.entry.d_tag
                if kind not in _STRING_TAGS:
                    continue
                # pyelftools resolves string tags into an attribute named after the tag ("needed"...)
                value: str = getattr(tag, _STRING_TAGS[kind])
                if kind == "DT_NEEDED":
                    needed.append(value)
                elif kind == "DT_SONAME":
                    soname = value
                elif kind == "DT_RPATH":
                    rpath.extend(_split_path_list(value))
                else:
                    runpath = [*(runpath or []), *_split_path_list(value)]
    return ElfInfo(
        elfclass=elf.elfclass,
        little_endian=elf.little_endian,
        machine=elf["e_machine"],
        interp=interp,
        needed=tuple(needed),
        soname=soname,
        rpath=tuple(rpath),
        runpath=None if runpath is None else tuple(runpath),
    )

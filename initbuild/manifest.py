"""The manifest: every path of an image, what it is, where its bytes come from, and who added it.

Writers (cpio, EROFS) consume a Manifest and read file contents through a Sysroot; they never look at
the host filesystem otherwise. Paths are image-absolute, normalised POSIX strings ("/usr/bin/sh"); the
root directory "/" is always present.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, BinaryIO

from .errors import ModuleError, ResolveError
from .sysroot import Sysroot


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"  # another name for a FILE entry (`target` = that entry's path)
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"

    @property
    def s_ifmt(self) -> int:
        return _S_IFMT[self]

    @classmethod
    def from_mode(cls, st_mode: int) -> Kind | None:
        """The kind of a file type (the S_IFMT bits of st_mode); None for an unknown type."""
        return _KIND_OF_IFMT.get(stat.S_IFMT(st_mode))


_S_IFMT = {
    Kind.FILE: stat.S_IFREG,
    Kind.HARDLINK: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.SOCKET: stat.S_IFSOCK,
}

_KIND_OF_IFMT = {ifmt: kind for kind, ifmt in _S_IFMT.items() if kind is not Kind.HARDLINK}


class PathError(ValueError):
    """An image path is not acceptable (escapes the root, empty component, NUL...)."""


def check_dest(path: str) -> str:
    """Validate and normalise a destination path inside the image; raise PathError if it escapes."""
    if not path or "\0" in path:
        raise PathError(f"invalid image path {path!r}")
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            raise PathError(f"path {path!r} escapes the image root ('..' is not allowed)")
        if len(p.encode()) > 255:
            raise PathError(f"path component longer than 255 bytes in {path!r}")
        parts.append(p)
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Entry:
    path: str  # normalised image path
    kind: Kind
    mode: int  # permission bits only (07777)
    uid: int = 0
    gid: int = 0
    source: str | None = None  # FILE: path inside the sysroot to read the content from
    data: bytes | None = None  # FILE: inline content (rendered templates, generated configs)
    target: str | None = None  # SYMLINK: link text; HARDLINK: image path of the FILE it names
    rdev: tuple[int, int] | None = None  # CHAR/BLOCK: (major, minor)
    mtime: int | None = None  # seconds; None = the build's SOURCE_DATE_EPOCH
    xattrs: tuple[tuple[str, bytes], ...] = ()
    provenance: tuple[str, ...] = ()
    # FILE from source: the content is the source decompressed, by its suffix. A kernel's .ko.xz goes in
    # as .ko: every image is compressed as a whole, and a module compressed again on its own would
    # only be decompressed at each load
    decompress: bool = False

    def __post_init__(self) -> None:
        assert self.path.startswith("/"), self.path
        assert 0 <= self.mode <= 0o7777, oct(self.mode)
        if self.kind is Kind.FILE:
            assert (self.source is None) != (self.data is None), f"{self.path}: exactly one of source/data"
        assert not self.decompress or self.source is not None, f"{self.path}: decompress needs a source"
        if self.kind in (Kind.SYMLINK, Kind.HARDLINK):
            assert self.target, self.path
        if self.kind in (Kind.CHAR, Kind.BLOCK):
            assert self.rdev is not None, self.path

    @property
    def st_mode(self) -> int:
        return self.kind.s_ifmt | self.mode

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.path)

    def same_content(self, other: Entry) -> bool:
        return (self.kind, self.mode, self.uid, self.gid, self.data, self.target, self.rdev, self.xattrs) == (
            other.kind,
            other.mode,
            other.uid,
            other.gid,
            other.data,
            other.target,
            other.rdev,
            other.xattrs,
        ) and (self.source, self.decompress) == (other.source, other.decompress)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "type": str(self.kind), "mode": f"{self.mode:04o}"}
        if self.uid or self.gid:
            d["uid"], d["gid"] = self.uid, self.gid
        if self.source is not None:
            d["source"] = self.source
        if self.decompress:
            d["decompress"] = True
        if self.data is not None:
            d["inline_bytes"] = len(self.data)
        if self.target is not None:
            d["target"] = self.target
        if self.rdev is not None:
            d["rdev"] = list(self.rdev)
        if self.mtime is not None:
            d["mtime"] = self.mtime
        if self.xattrs:
            d["xattrs"] = sorted(n for n, _ in self.xattrs)
        d["provenance"] = list(self.provenance)
        return d


@dataclass
class Manifest:
    """Destination path -> Entry, with parent directories synthesised and conflicts refused."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "/" not in self.entries:
            self.entries["/"] = Entry("/", Kind.DIR, 0o755, provenance=("root",))

    def __contains__(self, path: str) -> bool:
        return path in self.entries

    def __getitem__(self, path: str) -> Entry:
        return self.entries[path]

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def add(self, entry: Entry, *, override: bool = False) -> Entry:
        """Add an entry, creating missing parent directories. Returns the entry now in the manifest.

        The same content at the same path is merged (provenance joined). Different content is a
        ModuleError unless `override` is set, in which case the new entry replaces the old one.
        Directories merge: the first one's mode wins unless overridden.
        """
        path = check_dest(entry.path)
        if path != entry.path:
            entry = replace(entry, path=path)
        self._add_parents(path, entry.provenance)
        old = self.entries.get(path)
        if old is not None:
            if old.same_content(entry) or (old.kind is Kind.DIR and entry.kind is Kind.DIR and not override):
                merged = replace(old, provenance=_join(old.provenance, entry.provenance))
                self.entries[path] = merged
                return merged
            if not override:
                raise ModuleError(
                    f"conflict at {path}: {_who(old)} adds {_what(old)}, {_who(entry)} adds {_what(entry)}",
                    hint="declare `override: true` on the item of the module that should win",
                )
            entry = replace(entry, provenance=_join(entry.provenance, (f"overrides {_who(old)}",)))
        self.entries[path] = entry
        return entry

    def _add_parents(self, path: str, provenance: tuple[str, ...]) -> None:
        parent = posixpath.dirname(path)
        missing = []
        while parent not in self.entries:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for p in reversed(missing):
            self.entries[p] = Entry(p, Kind.DIR, 0o755, provenance=_join(provenance, ("parent directory",)))

    def resolve(self, path: str, depth: int = 0) -> str | None:
        """`path` with every symlink of the image on the way followed, if it ends at a regular file."""
        parts = [p for p in path.split("/") if p]
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            e = self.get(cur)
            if e is None:
                return None
            if e.kind is Kind.SYMLINK and e.target is not None:
                if depth > 40:  # the kernel's limit on followed links
                    return None
                base = "/" if e.target.startswith("/") else posixpath.dirname(cur)
                return self.resolve(
                    posixpath.normpath(posixpath.join(base, e.target, *parts[i + 1 :])), depth + 1
                )
        e = self.get(cur or "/")
        return cur if e is not None and e.kind is Kind.FILE else None

    def sorted(self) -> list[Entry]:
        """Canonical order used by every writer: by the UTF-8 bytes of the path (parents first)."""
        return [self.entries[p] for p in sorted(self.entries, key=lambda p: p.encode())]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.sorted())

    def children(self) -> dict[str, list[Entry]]:
        """Directory path -> its direct children, each list sorted by name bytes."""
        out: dict[str, list[Entry]] = {p: [] for p, e in self.entries.items() if e.kind is Kind.DIR}
        for e in self.sorted():
            if e.path != "/":
                out[e.parent].append(e)
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.sorted()]

    def check(self) -> None:
        """Internal consistency: hardlink targets exist and are FILE entries."""
        for e in self.entries.values():
            if e.kind is Kind.HARDLINK:
                t = self.entries.get(e.target or "")
                if t is None or t.kind is not Kind.FILE:
                    raise ModuleError(
                        f"hard link {e.path} points to {e.target}, which is not a file in the image"
                    )


def _join(a: tuple[str, ...], b: Iterable[str]) -> tuple[str, ...]:
    out = list(a)
    for x in b:
        if x not in out:
            out.append(x)
    return tuple(out)


def _who(e: Entry) -> str:
    return f"module {e.provenance[0]!r}" if e.provenance else "an unnamed source"


def _what(e: Entry) -> str:
    if e.kind is Kind.FILE:
        return f"file from {e.source}" if e.source else f"inline file ({len(e.data or b'')} bytes)"
    if e.kind in (Kind.SYMLINK, Kind.HARDLINK):
        return f"{e.kind} to {e.target}"
    return f"{e.kind} mode {e.mode:04o}"


# -- content access: the only way writers get file bytes -------------------------------------------


def entry_size(entry: Entry, sysroot: Sysroot) -> int:
    if entry.kind is not Kind.FILE:
        return 0
    if entry.data is not None:
        return len(entry.data)
    assert entry.source is not None
    if entry.decompress:
        return sysroot.decompressed_size(entry.source)
    return sysroot.stat(entry.source).st_size


def open_entry(entry: Entry, sysroot: Sysroot) -> BinaryIO:
    """Open a FILE entry's content for reading (seekable).

    A `decompress` entry is decompressed whole when opened: kernel modules are a few MiB at most
    (6.12's largest, xfs.ko, is 5.3 MiB), so memory stays bounded by the largest file being written,
    and nothing is decompressed before the writer asks for it (entry_size reads the recorded size).
    """
    assert entry.kind is Kind.FILE, entry
    if entry.data is not None:
        return io.BytesIO(entry.data)
    assert entry.source is not None
    if entry.decompress:
        data = sysroot.read_decompressed(entry.source)
        if len(data) != sysroot.decompressed_size(entry.source):
            raise ResolveError(f"{entry.source} in the sysroot records another size than it decompresses to")
        return io.BytesIO(data)
    return sysroot.open(entry.source)


# -- a manifest of an existing tree (for `initbuild erofs SRC_DIR`, tests and benchmarks) ----------


def from_tree(
    sysroot: Sysroot,
    top: str = "/",
    *,
    preserve_owner: bool = True,
    preserve_mtime: bool = True,
    xattrs: bool = False,
    provenance: str = "tree",
) -> Manifest:
    """Describe the tree under `top` of `sysroot` as a manifest whose root is `top`.

    Hard links (same st_dev/st_ino) become one FILE and HARDLINK entries, in canonical order.
    """
    m = Manifest()
    seen: dict[tuple[int, int], str] = {}
    prov = (provenance,)
    base = sysroot.host_path(top)

    def meta(st: os.stat_result) -> dict[str, Any]:
        return {
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid if preserve_owner else 0,
            "gid": st.st_gid if preserve_owner else 0,
            "mtime": int(st.st_mtime) if preserve_mtime else None,
        }

    root_st = os.lstat(base)
    m.entries["/"] = Entry("/", Kind.DIR, provenance=prov, **meta(root_st))
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        rel = "" if rel == "." else rel
        for n in dirnames + filenames:
            paths.append("/" + posixpath.join(rel, n))
    for p in sorted(paths, key=lambda s: s.encode()):
        src = posixpath.join(top, p.lstrip("/")) if top != "/" else p
        st = os.lstat(sysroot.host_path(src))
        kw = meta(st)
        if xattrs:
            kw["xattrs"] = tuple(sysroot.listxattr(src))
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            e = Entry(p, Kind.DIR, provenance=prov, **kw)
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                e = Entry(p, Kind.HARDLINK, target=seen[key], provenance=prov, **kw)
            else:
                seen[key] = p
                e = Entry(p, Kind.FILE, source=src, provenance=prov, **kw)
        elif fmt == stat.S_IFLNK:
            e = Entry(p, Kind.SYMLINK, target=sysroot.readlink(src), provenance=prov, **kw)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            kind = Kind.CHAR if fmt == stat.S_IFCHR else Kind.BLOCK
            e = Entry(p, kind, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)), provenance=prov, **kw)
        elif fmt == stat.S_IFIFO:
            e = Entry(p, Kind.FIFO, provenance=prov, **kw)
        elif fmt == stat.S_IFSOCK:
            e = Entry(p, Kind.SOCKET, provenance=prov, **kw)
        else:  # pragma: no cover - no other file types exist
            continue
        m.entries[p] = e
    return m

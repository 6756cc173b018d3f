"""Sysroot: the one object through which initbuild reads its source tree.

Paths given to a Sysroot are *image-absolute* POSIX strings ("/usr/bin/sh"), interpreted inside the
sysroot directory. Symbolic links are resolved inside the sysroot as the kernel would after a chroot:
an absolute target restarts at the sysroot, and ".." never climbs above it. Nothing here writes.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import ResolveError

MAX_SYMLINKS = 40  # same limit as Linux (MAXSYMLINKS)


def normpath(path: str) -> str:
    """Normalise an image path to the form "/a/b" (no "..", no trailing slash). ".." stops at "/"."""
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/" + "/".join(parts)


class Sysroot:
    """A directory tree read as if it were "/"."""

    def __init__(self, root: str | os.PathLike[str] = "/"):
        self.root = Path(os.path.abspath(root))

    def __repr__(self) -> str:
        return f"Sysroot({str(self.root)!r})"

    # -- path resolution ------------------------------------------------------------------------
    def host_path(self, path: str) -> Path:
        """Host path of an image path, *without* resolving symlinks."""
        p = normpath(path)
        return self.root / p.lstrip("/") if p != "/" else self.root

    def resolve(self, path: str, *, follow_final: bool = True) -> str:
        """Resolve symlinks of `path` inside the sysroot; returns a normalised image path.

        Missing components are allowed (the unresolved rest is appended), like os.path.realpath.
        """
        todo = [p for p in path.split("/") if p not in ("", ".")]
        todo.reverse()
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, part])
            hp = self.host_path(candidate)
            is_last = not todo
            try:
                st = os.lstat(hp)
            except OSError:
                done.append(part)
                continue
            if stat.S_ISLNK(st.st_mode) and (follow_final or not is_last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise ResolveError(f"too many levels of symbolic links resolving {path} in {self.root}")
                target = os.readlink(hp)
                rest = [p for p in target.split("/") if p not in ("", ".")]
                if target.startswith("/"):
                    done = []
                todo.extend(reversed(rest))
                continue
            done.append(part)
        return "/" + "/".join(done)

    def symlink_chain(self, path: str) -> list[tuple[str, str]]:
        """The symlinks met while resolving `path`, as (link path, target) pairs in order.

        Used to reproduce usr-merge style links (/lib -> usr/lib) in the image.
        """
        chain: list[tuple[str, str]] = []
        todo = [p for p in path.split("/") if p not in ("", ".")]
        todo.reverse()
        done: list[str] = []
        while todo and len(chain) <= MAX_SYMLINKS:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, part])
            hp = self.host_path(candidate)
            if hp.is_symlink():
                target = os.readlink(hp)
                chain.append((candidate, target))
                if target.startswith("/"):
                    done = []
                todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            done.append(part)
        return chain

    # -- queries ------------------------------------------------------------------------------------
    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(self.host_path(path))

    def stat(self, path: str) -> os.stat_result:
        return os.lstat(self.host_path(self.resolve(path)))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.host_path(self.resolve(path)))

    def lexists(self, path: str) -> bool:
        return os.path.lexists(self.host_path(path))

    def is_file(self, path: str) -> bool:
        try:
            return stat.S_ISREG(self.stat(path).st_mode)
        except OSError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    def is_symlink(self, path: str) -> bool:
        return self.host_path(path).is_symlink()

    def readlink(self, path: str) -> str:
        return os.readlink(self.host_path(path))

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a directory (symlinks in `path` resolved)."""
        return sorted(os.listdir(self.host_path(self.resolve(path))))

    def walk(self, path: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """os.walk over an image directory, yielding image paths, sorted, not following symlinks."""
        top = self.resolve(path)
        base = self.host_path(top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            filenames.sort()
            rel = os.path.relpath(dirpath, base)
            yield (top if rel == "." else posixpath.join(top, rel)), dirnames, filenames

    def glob(self, pattern: str) -> list[str]:
        """Image paths matching a glob pattern (sorted)."""
        out = []
        for hp in self.root.glob(pattern.lstrip("/")):
            out.append("/" + hp.relative_to(self.root).as_posix())
        return sorted(out)

    # -- content ------------------------------------------------------------------------------------
    def open(self, path: str) -> BinaryIO:
        """Open a regular file for reading (symlinks resolved inside the sysroot)."""
        hp = self.host_path(self.resolve(path))
        try:
            return open(hp, "rb")
        except OSError as e:
            raise ResolveError(f"cannot read {path} in sysroot {self.root}: {e.strerror}") from e

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def listxattr(self, path: str) -> list[tuple[str, bytes]]:
        """Extended attributes of a path (not following symlinks), sorted; [] where unsupported."""
        hp = self.host_path(path)
        try:
            names = os.listxattr(hp, follow_symlinks=False)
        except OSError:
            return []
        out = []
        for n in sorted(names):
            try:
                out.append((n, os.getxattr(hp, n, follow_symlinks=False)))
            except OSError:
                continue
        return out

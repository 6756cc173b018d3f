"""The module index files an image gets, for exactly the kernel modules it holds, as it holds them:
decompressed and named .ko, whatever the sysroot's compression (.ko.xz in Linux 6.12's packages).

The text indexes (modules.dep, modules.alias, ...) are subsets of the sysroot's, enough for busybox
modprobe. libkmod (kmod's modprobe, udev's kmod builtin) reads only the binary modules.*.bin tries;
those are written by the host's `depmod -b` over a staging tree of the same modules. The host's
own indexes are never copied: they would list modules the image does not have.
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path

from .. import log
from ..run import find_tool, run
from ..sysroot import strip_compression
from .kmod import KernelModules, Kmod, module_name, normalize


def index_files(kmods: KernelModules, selected: list[Kmod], *, builtin: bool = True) -> dict[str, bytes]:
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
                log.warning(f"{d} is a dependency of {m.name} but is not selected: modules.dep is incomplete")
    out = {
        "modules.dep": _dep_subset(kmods, names),
        "modules.alias": _alias_subset(kmods, "modules.alias", names),
        "modules.symbols": _alias_subset(kmods, "modules.symbols", names),
        "modules.softdep": _softdep_subset(kmods, names),
        "modules.order": _order_subset(kmods, names),
    }
    if builtin:
        for n in ("modules.builtin", "modules.builtin.modinfo"):
            p = f"{kmods.moddir}/{n}"
            out[n] = kmods.sysroot.read_bytes(p) if kmods.sysroot.is_file(p) else b""
    return out


def binary_indexes(kmods: KernelModules, selected: list[Kmod]) -> dict[str, bytes]:
    """The binary modules.*.bin indexes libkmod reads (udev's kmod builtin, kmod's modprobe) for an
    image holding only `selected`: `depmod -b STAGING` over a tree of those modules as the image
    stores them (decompressed, named .ko), with this tree's modules.order and modules.builtin(.modinfo).
    Keyed by file name."""
    depmod = find_tool(
        "depmod", reason="write the binary module indexes libkmod reads", hint="apt-get install kmod"
    )
    with tempfile.TemporaryDirectory(prefix="initbuild-depmod-") as tmp:
        staged = Path(tmp) / "lib" / "modules" / kmods.kver
        staged.mkdir(parents=True)
        for km in selected:
            dest = staged / posixpath.relpath(km.path, kmods.moddir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(kmods.sysroot.read_decompressed(km.source))
        for name, data in index_files(kmods, selected).items():
            if name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
                (staged / name).write_bytes(data)
        run([depmod, "-b", tmp, kmods.kver])
        return {p.name: p.read_bytes() for p in sorted(staged.glob("modules.*.bin"))}


def _dep_subset(kmods: KernelModules, names: set[str]) -> bytes:
    """modules.dep's lines of `names`, naming the files as the image stores them (.ko, decompressed)."""
    lines = []
    for name, rel, deps in kmods.dep_entries():
        if name in names:
            kept = [strip_compression(d) for d in deps if module_name(d) in names]
            lines.append(f"{strip_compression(rel)}:" + "".join(f" {d}" for d in kept) + "\n")
    return "".join(lines).encode()


def _alias_subset(kmods: KernelModules, file: str, names: set[str]) -> bytes:
    lines = []
    for line in kmods.read_lines(file):
        words = line.split()
        if line.startswith("#") or (len(words) == 3 and words[0] == "alias" and normalize(words[2]) in names):
            lines.append(line + "\n")
    return "".join(lines).encode()


def _softdep_subset(kmods: KernelModules, names: set[str]) -> bytes:
    lines = []
    for line in kmods.read_lines("modules.softdep"):
        words = line.split()
        if line.startswith("#") or (
            len(words) >= 2 and words[0] == "softdep" and normalize(words[1]) in names
        ):
            lines.append(line + "\n")
    return "".join(lines).encode()


def _order_subset(kmods: KernelModules, names: set[str]) -> bytes:
    lines = [line + "\n" for line in kmods.read_lines("modules.order") if module_name(line.strip()) in names]
    return "".join(lines).encode()

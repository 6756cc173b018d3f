"""modules.d: discover modules and parse their module.yaml into validated ModuleSpecs.

A module is a directory `NNname/` holding a declarative `module.yaml` and, optionally, `module.py`
with `check(ctx)` and/or `install(ctx)` for logic YAML cannot express (loaded by hooks.py). The
two-digit prefix orders modules (like dracut); `requires:` adds dependencies, installed first
(plan.py selects and orders them).

Dracut's three-way check is kept: INCLUDE (in every image unless omitted), ON_DEMAND (only when
requested or required), UNAVAILABLE (cannot be used here; an error if something asks for it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import yaml

from .. import yamlread
from ..errors import ConfigError, ConfigErrors, Location
from ..manifest import Kind, PathError, check_dest
from ..profile import Mode
from ..resources import templates_dir

_DIRNAME = re.compile(r"^(\d\d)([a-z0-9][a-z0-9_-]*)$")


class Check(IntEnum):
    """Dracut's module check results (same numbers as dracut's check())."""

    INCLUDE = 0
    UNAVAILABLE = 1
    ON_DEMAND = 255


# module.yaml `check:` -> the result it stands for when nothing the module needs is missing
CHECK_SETTINGS = {"include": Check.INCLUDE, "on-demand": Check.ON_DEMAND}
DEVICE_KINDS = (Kind.CHAR, Kind.BLOCK)


class Stage(StrEnum):
    ONE = "one"  # stage one only (the mount helper)
    TWO = "two"  # stage two only (the full initramfs content)
    BOTH = "both"

    def has(self, stage: int) -> bool:
        return self is Stage.BOTH or (self is Stage.ONE and stage == 1) or (self is Stage.TWO and stage == 2)


@dataclass(frozen=True)
class FileItem:
    source: str
    dest: str
    mode: int | None = None
    optional: bool = False
    override: bool = False


@dataclass(frozen=True)
class SymlinkItem:
    path: str
    target: str
    override: bool = False


@dataclass(frozen=True)
class DeviceItem:
    path: str
    type: Kind  # Kind.CHAR or Kind.BLOCK
    major: int
    minor: int
    mode: int = 0o600


@dataclass(frozen=True)
class TemplateItem:
    template: str  # path relative to the module dir, or to templates/
    dest: str
    mode: int = 0o644
    override: bool = False


@dataclass(frozen=True)
class ModuleSpec:
    """What module.yaml says, validated."""

    name: str
    priority: int
    path: Path
    description: str
    stage: Stage = Stage.TWO
    check: Check = Check.INCLUDE
    modes: tuple[Mode, ...] = (Mode.INITOVERLAYFS, Mode.PLAIN)
    needs_binaries: tuple[str, ...] = ()
    needs_files: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()
    optional_binaries: tuple[str, ...] = ()
    files: tuple[FileItem, ...] = ()
    dirs: tuple[str, ...] = ()
    symlinks: tuple[SymlinkItem, ...] = ()
    devices: tuple[DeviceItem, ...] = ()
    drivers: tuple[str, ...] = ()
    optional_drivers: tuple[str, ...] = ()
    firmware: tuple[str, ...] = ()
    templates: tuple[TemplateItem, ...] = ()
    hook: Path | None = None  # module.py
    locations: dict[str, Location] = field(default_factory=dict, compare=False, repr=False)


MODULE_KEYS = {
    "description": "one line shown by `initbuild modules`",
    "stage": "one | two | both: which image gets the content in initoverlayfs mode (default two)",
    "check": "include (default) | on-demand: dracut's check result when nothing is missing",
    "modes": "build modes the module applies to (default both: initoverlayfs, plain)",
    "needs": "{binaries, files}: when any is missing from the sysroot the module is unavailable",
    "requires": "other modules this one needs (installed first)",
    "binaries": "programs to install with their shared libraries",
    "optional_binaries": "programs installed when present",
    "files": "files to copy: a path, or {source, dest, mode, optional, override}",
    "dirs": "directories to create",
    "symlinks": "{path, target, override} symbolic links to create",
    "devices": "{path, type: char|block, major, minor, mode} device nodes",
    "drivers": "kernel drivers (names or aliases), with their dependencies and firmware",
    "optional_drivers": "kernel drivers installed when the kernel has them",
    "firmware": "firmware files (relative to /lib/firmware) to install",
    "templates": "{template, dest, mode, override}: jinja2 templates rendered into the image",
}


def discover(dirs: Iterable[Path]) -> dict[str, ModuleSpec]:
    """Load every module in the given modules.d directories; later directories override by name."""
    specs: dict[str, ModuleSpec] = {}
    errors: list[ConfigError] = []
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"{d}: modules directory not found")
        for sub in sorted(d.iterdir()):
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            m = _DIRNAME.match(sub.name)
            if not m:
                errors.append(
                    ConfigError(f"{sub}: module directories are named NNname (two digits, lowercase)")
                )
                continue
            try:
                spec = load_spec(sub, m.group(2), int(m.group(1)))
            except ConfigError as e:
                errors.extend(getattr(e, "errors", [e]))
                continue
            specs[spec.name] = spec
    if errors:
        raise ConfigErrors(errors) if len(errors) > 1 else errors[0]
    return specs


def load_spec(path: Path, name: str, priority: int) -> ModuleSpec:
    yml = path / "module.yaml"
    if not yml.is_file():
        raise ConfigError(f"{yml}: missing (every module needs a module.yaml)")
    r = yamlread.Reader(yml)
    m = r.mapping(yamlread.load_file(yml), "", MODULE_KEYS, required=("description",))
    kw: dict[str, Any] = {"name": name, "priority": priority, "path": path}
    locs = {k: r.loc(v) for k, v in m.items()}
    if "description" in m:
        kw["description"] = r.scalar(m["description"], "description", str) or ""
    if "stage" in m:
        kw["stage"] = r.enum(m["stage"], "stage", Stage)
    if "check" in m and (v := r.choice(m["check"], "check", CHECK_SETTINGS)):
        kw["check"] = CHECK_SETTINGS[v]
    if "modes" in m:
        modes = [r.enum(item, f"modes[{i}]", Mode) for i, item in enumerate(r.seq(m["modes"], "modes") or [])]
        kw["modes"] = tuple(x for x in modes if x is not None)
    if "needs" in m:
        nm = r.mapping(m["needs"], "needs", ("binaries", "files"))
        kw["needs_binaries"] = tuple(r.str_list(nm["binaries"], "needs.binaries")) if "binaries" in nm else ()
        kw["needs_files"] = tuple(r.str_list(nm["files"], "needs.files")) if "files" in nm else ()
    for key in ("requires", "binaries", "optional_binaries", "drivers", "optional_drivers", "firmware"):
        if key in m:
            kw[key] = tuple(r.str_list(m[key], key))
    for key in ("requires", "binaries", "drivers", "files"):  # each item's line, for errors naming it
        if isinstance(m.get(key), yaml.SequenceNode):
            for i, item in enumerate(m[key].value):
                locs[f"{key}[{i}]"] = r.loc(item)
                if isinstance(item, yaml.ScalarNode):
                    locs.setdefault(f"{key}:{item.value}", r.loc(item))
    if "dirs" in m:
        kw["dirs"] = tuple(
            _dest(r, m["dirs"], f"dirs[{i}]", d) for i, d in enumerate(r.str_list(m["dirs"], "dirs"))
        )
    if "files" in m:
        kw["files"] = tuple(_files(r, m["files"]))
    if "symlinks" in m:
        kw["symlinks"] = tuple(_symlinks(r, m["symlinks"]))
    if "devices" in m:
        kw["devices"] = tuple(_devices(r, m["devices"]))
    if "templates" in m:
        kw["templates"] = tuple(_templates(r, m["templates"], path))
    hook = path / "module.py"
    kw["hook"] = hook if hook.is_file() else None
    r.raise_if_errors()
    return ModuleSpec(locations=locs, **{k: v for k, v in kw.items() if v is not None})


def _dest(r: yamlread.Reader, node: yaml.Node, key: str, value: str) -> str:
    try:
        return check_dest(value)
    except PathError as e:
        r.error(node, key, str(e))
        return "/"


def _files(r: yamlread.Reader, node: yaml.Node) -> list[FileItem]:
    out = []
    for i, item in enumerate(r.seq(node, "files") or []):
        key = f"files[{i}]"
        if isinstance(item, yaml.ScalarNode):
            v = r.scalar(item, key, str)
            if v:
                out.append(FileItem(v, _dest(r, item, key, v)))
            continue
        fm = r.mapping(item, key, ("source", "dest", "mode", "optional", "override"), required=("source",))
        src = r.scalar(fm["source"], f"{key}.source", str) if "source" in fm else None
        if not src:
            continue
        dest = r.scalar(fm["dest"], f"{key}.dest", str) if "dest" in fm else src
        out.append(
            FileItem(
                src,
                _dest(r, item, key, dest or src),
                mode=_mode(r, fm.get("mode"), f"{key}.mode"),
                optional=_bool(r, fm.get("optional"), f"{key}.optional"),
                override=_bool(r, fm.get("override"), f"{key}.override"),
            )
        )
    return out


def _symlinks(r: yamlread.Reader, node: yaml.Node) -> list[SymlinkItem]:
    out = []
    for i, item in enumerate(r.seq(node, "symlinks") or []):
        key = f"symlinks[{i}]"
        sm = r.mapping(item, key, ("path", "target", "override"), required=("path", "target"))
        p = r.scalar(sm["path"], f"{key}.path", str) if "path" in sm else None
        t = r.scalar(sm["target"], f"{key}.target", str) if "target" in sm else None
        if p and t:
            out.append(
                SymlinkItem(_dest(r, item, key, p), t, _bool(r, sm.get("override"), f"{key}.override"))
            )
    return out


def _devices(r: yamlread.Reader, node: yaml.Node) -> list[DeviceItem]:
    out = []
    for i, item in enumerate(r.seq(node, "devices") or []):
        key = f"devices[{i}]"
        dm = r.mapping(
            item, key, ("path", "type", "major", "minor", "mode"), required=("path", "type", "major", "minor")
        )
        p = r.scalar(dm["path"], f"{key}.path", str) if "path" in dm else None
        t = r.choice(dm["type"], f"{key}.type", DEVICE_KINDS) if "type" in dm else None
        ma = r.scalar(dm["major"], f"{key}.major", int) if "major" in dm else None
        mi = r.scalar(dm["minor"], f"{key}.minor", int) if "minor" in dm else None
        mode = _mode(r, dm.get("mode"), f"{key}.mode")
        if p and t and ma is not None and mi is not None:
            out.append(DeviceItem(_dest(r, item, key, p), Kind(t), ma, mi, 0o600 if mode is None else mode))
    return out


def _templates(r: yamlread.Reader, node: yaml.Node, moddir: Path) -> list[TemplateItem]:
    out = []
    for i, item in enumerate(r.seq(node, "templates") or []):
        key = f"templates[{i}]"
        tm = r.mapping(item, key, ("template", "dest", "mode", "override"), required=("template", "dest"))
        t = r.scalar(tm["template"], f"{key}.template", str) if "template" in tm else None
        d = r.scalar(tm["dest"], f"{key}.dest", str) if "dest" in tm else None
        if not (t and d):
            continue
        if not (moddir / t).is_file() and not (templates_dir() / t).is_file():
            r.error(
                tm["template"],
                f"{key}.template",
                f"template '{t}' not found in {moddir} or {templates_dir()}",
            )
        mode = _mode(r, tm.get("mode"), f"{key}.mode")
        out.append(
            TemplateItem(
                t,
                _dest(r, item, key, d),
                0o644 if mode is None else mode,
                _bool(r, tm.get("override"), f"{key}.override"),
            )
        )
    return out


def _mode(r: yamlread.Reader, node: yaml.Node | None, key: str) -> int | None:
    return None if node is None else r.mode(node, key)


def _bool(r: yamlread.Reader, node: yaml.Node | None, key: str) -> bool:
    if node is None:
        return False
    return bool(r.scalar(node, key, bool))

"""modules.d: discover modules, parse their module.yaml, evaluate checks, and select them into a Plan.

A module is a directory `NNname/` holding a declarative `module.yaml` and, optionally, `module.py`
with `check(ctx)` and/or `install(ctx)` for logic YAML cannot express. The two-digit prefix orders
modules (like dracut); `requires:` adds dependencies, which are installed first.

Dracut's three-way check is kept: INCLUDE (in every image unless omitted), ON_DEMAND (only when
requested or required), UNAVAILABLE (cannot be used here; an error if something asks for it).
"""

from __future__ import annotations

import heapq
import importlib.util
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from .. import yamlread
from ..errors import ConfigError, Location, ModuleError
from ..manifest import PathError, check_dest
from ..profile import Mode, Profile
from ..resources import templates_dir

_DIRNAME = re.compile(r"^(\d\d)([a-z0-9][a-z0-9_-]*)$")


class Check(IntEnum):
    """Dracut's module check results (same numbers as dracut's check())."""

    INCLUDE = 0
    UNAVAILABLE = 1
    ON_DEMAND = 255


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
    type: str  # char | block
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

    @property
    def yaml_path(self) -> Path:
        return self.path / "module.yaml"


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
        from ..errors import ConfigErrors

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
    if "stage" in m and (v := r.choice(m["stage"], "stage", [s.value for s in Stage])):
        kw["stage"] = Stage(v)
    if "check" in m and (v := r.choice(m["check"], "check", ("include", "on-demand"))):
        kw["check"] = Check.INCLUDE if v == "include" else Check.ON_DEMAND
    if "modes" in m:
        modes = []
        for i, item in enumerate(r.seq(m["modes"], "modes") or []):
            if v := r.choice(item, f"modes[{i}]", [x.value for x in Mode]):
                modes.append(Mode(v))
        kw["modes"] = tuple(modes)
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
    return ModuleSpec(locations=locs, **kw)


def _dest(r: yamlread.Reader, node: yaml.Node, key: str, value: str) -> str:
    try:
        return check_dest(value)
    except PathError as e:
        r.error(node, key, str(e))
        return "/"


def _item_mapping(
    r: yamlread.Reader, node: yaml.Node, key: str, allowed: tuple[str, ...], required: tuple[str, ...]
) -> dict[str, yaml.Node]:
    return r.mapping(node, key, allowed, required=required)


def _files(r: yamlread.Reader, node: yaml.Node) -> list[FileItem]:
    out = []
    for i, item in enumerate(r.seq(node, "files") or []):
        key = f"files[{i}]"
        if isinstance(item, yaml.ScalarNode):
            v = r.scalar(item, key, str)
            if v:
                out.append(FileItem(v, _dest(r, item, key, v)))
            continue
        fm = _item_mapping(r, item, key, ("source", "dest", "mode", "optional", "override"), ("source",))
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
        sm = _item_mapping(r, item, key, ("path", "target", "override"), ("path", "target"))
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
        dm = _item_mapping(
            r, item, key, ("path", "type", "major", "minor", "mode"), ("path", "type", "major", "minor")
        )
        p = r.scalar(dm["path"], f"{key}.path", str) if "path" in dm else None
        t = r.choice(dm["type"], f"{key}.type", ("char", "block")) if "type" in dm else None
        ma = r.scalar(dm["major"], f"{key}.major", int) if "major" in dm else None
        mi = r.scalar(dm["minor"], f"{key}.minor", int) if "minor" in dm else None
        mode = _mode(r, dm.get("mode"), f"{key}.mode")
        if p and t and ma is not None and mi is not None:
            out.append(DeviceItem(_dest(r, item, key, p), t, ma, mi, 0o600 if mode is None else mode))
    return out


def _templates(r: yamlread.Reader, node: yaml.Node, moddir: Path) -> list[TemplateItem]:
    out = []
    for i, item in enumerate(r.seq(node, "templates") or []):
        key = f"templates[{i}]"
        tm = _item_mapping(r, item, key, ("template", "dest", "mode", "override"), ("template", "dest"))
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
    if node is None:
        return None
    from ..config import _read_mode

    return _read_mode(r, node, key)


def _bool(r: yamlread.Reader, node: yaml.Node | None, key: str) -> bool:
    if node is None:
        return False
    return bool(r.scalar(node, key, bool))


# -- hooks ----------------------------------------------------------------------------------------


def load_hook(spec: ModuleSpec) -> ModuleType | None:
    if spec.hook is None:
        return None
    s = importlib.util.spec_from_file_location(f"initbuild_module_{spec.name.replace('-', '_')}", spec.hook)
    assert s is not None and s.loader is not None
    mod = importlib.util.module_from_spec(s)
    try:
        s.loader.exec_module(mod)
    except Exception as e:  # a broken hook is the module's fault, reported as such
        raise ModuleError(f"{spec.hook}: failed to load: {type(e).__name__}: {e}") from e
    return mod


# -- selection --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedModule:
    spec: ModuleSpec
    reason: str  # why it is in the plan

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Plan:
    """The modules a build will install, in installation order, each with why."""

    profile: Profile
    kver: str
    modules: tuple[PlannedModule, ...]
    unavailable: tuple[tuple[str, str], ...] = ()  # (module, why) for modules left out

    def names(self) -> list[str]:
        return [m.name for m in self.modules]

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kver,
            "mode": str(self.profile.mode),
            "sysroot": self.profile.sysroot,
            "modules": [
                {"name": m.name, "priority": m.spec.priority, "stage": str(m.spec.stage), "reason": m.reason}
                for m in self.modules
            ],
            "unavailable": [{"name": n, "why": w} for n, w in self.unavailable],
        }


CheckFn = Callable[[ModuleSpec], tuple[Check, str]]


def select(profile: Profile, specs: dict[str, ModuleSpec], kver: str, check: CheckFn) -> Plan:
    """Choose modules: included-by-default + requested, minus omitted, closed over `requires`.

    `check(spec)` evaluates availability against the sysroot and returns (Check, reason).
    A requested or required module that is unavailable or omitted is a ModuleError naming the chain.
    """
    errors: list[ConfigError] = []  # the profile names a module that does not exist
    for key in ("modules", "omit_modules"):
        for name in getattr(profile, key):
            if name not in specs:
                import difflib

                close = difflib.get_close_matches(name, list(specs), n=1)
                errors.append(
                    ConfigError(
                        f"{key}: unknown module '{name}'",
                        location=profile.where(f"{key}:{name}"),
                        hint=f"did you mean '{close[0]}'?" if close else "`initbuild modules` lists them",
                    )
                )
    if errors:
        from ..errors import ConfigErrors

        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)

    results: dict[str, tuple[Check, str]] = {}

    def status(name: str) -> tuple[Check, str]:
        if name not in results:
            spec = specs[name]
            if profile.mode not in spec.modes:
                results[name] = (Check.UNAVAILABLE, f"not used in {profile.mode} mode")
            else:
                results[name] = check(spec)
        return results[name]

    omitted = set(profile.omit_modules)
    reasons: dict[str, str] = {}
    roots: list[tuple[str, str]] = []
    for name in sorted(specs, key=lambda n: (specs[n].priority, n)):
        if name in profile.modules:
            roots.append((name, "requested by the profile"))
        elif name not in omitted and status(name)[0] is Check.INCLUDE:
            roots.append((name, status(name)[1]))  # "included by default", or the hook's reason
    for name, why in roots:
        _visit(name, why, [], specs, status, omitted, reasons, profile)

    order = _order({n: specs[n] for n in reasons})
    unavailable = tuple(
        (n, results[n][1]) for n in sorted(results) if results[n][0] is Check.UNAVAILABLE and n not in reasons
    )
    return Plan(profile, kver, tuple(PlannedModule(specs[n], reasons[n]) for n in order), unavailable)


def _visit(
    name: str,
    why: str,
    chain: list[str],
    specs: dict[str, ModuleSpec],
    status: Callable[[str], tuple[Check, str]],
    omitted: set[str],
    reasons: dict[str, str],
    profile: Profile,
) -> None:
    path = [*chain, name]
    # where the edge chain[-1] -> name is written: the requires item in the parent's module.yaml
    required_at = specs[chain[-1]].locations.get(f"requires:{name}") if chain else None
    if name in chain:
        raise ModuleError(f"cyclic requires: {' -> '.join(path)}", location=required_at)
    if name in reasons:
        return
    if name not in specs:
        raise ModuleError(
            f"module '{chain[-1]}' requires '{name}', which does not exist", location=required_at
        )
    requested_at = profile.where(f"modules:{path[0]}")
    if name in omitted:
        omitted_at = profile.where(f"omit_modules:{name}")
        if not chain:
            raise ModuleError(
                f"module '{name}' is both requested (modules) and omitted (omit_modules)",
                location=omitted_at,
            )
        raise ModuleError(
            f"{' -> '.join(path)}: '{name}' is omitted by the profile (omit_modules) but required",
            location=omitted_at,
            hint=f"remove '{name}' from omit_modules",
        )
    st, reason = status(name)
    if st is Check.UNAVAILABLE:
        via = f" (required via {' -> '.join(path)})" if chain else ""
        raise ModuleError(
            f"module '{name}' is unavailable: {reason}{via}", location=requested_at or required_at
        )
    for dep in specs[name].requires:
        _visit(dep, f"required by {name}", path, specs, status, omitted, reasons, profile)
    reasons[name] = why


def _order(specs: dict[str, ModuleSpec]) -> list[str]:
    """Dependencies first; otherwise by (priority, name) like dracut's NN prefixes."""
    indeg = {n: 0 for n in specs}
    users: dict[str, list[str]] = {n: [] for n in specs}
    for n, s in specs.items():
        for d in s.requires:
            if d in specs:
                indeg[n] += 1
                users[d].append(n)
    heap = [(specs[n].priority, n) for n, k in indeg.items() if k == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, n = heapq.heappop(heap)
        out.append(n)
        for u in users[n]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, (specs[u].priority, u))
    assert len(out) == len(specs), "cycle should have been reported by _visit"
    return out

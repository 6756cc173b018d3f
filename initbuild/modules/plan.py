"""Module selection: which modules.d modules a build installs, in which order, and why (a Plan).

Availability comes from a check function (context.module_check: `needs:` and the module's own
`check(ctx)`); selection closes the included-by-default and requested modules over `requires:` and
orders them like dracut.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ConfigErrors, ModuleError
from ..profile import Profile
from ..resolve.host import HostInfo
from ..resolve.kconfig import KernelFeatures
from .hooks import Hooks
from .spec import Check, ModuleSpec


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
    # the module.py files loaded while checking, reused by every stage (one import per build)
    hooks: Hooks = field(default_factory=Hooks, compare=False, repr=False)
    # what the target kernel's config says (resolve/kconfig.py); None only for plans made without it
    kernel: KernelFeatures | None = field(default=None, compare=False)
    # what host detection found (resolve/host.py): `profile` is already resolved with it
    host: HostInfo | None = field(default=None, compare=False)
    host_mode: bool = False  # auto keys resolved from the target (else the generic defaults)
    warnings: tuple[str, ...] = ()  # e.g. hostonly: auto falling back to a generic build, and why

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
            "kernel_config": self.kernel.to_dict() if self.kernel else None,
            "host": self.host_json(),
            "warnings": list(self.warnings),
        }

    def host_json(self) -> dict[str, Any]:
        """How the `auto` keys were resolved, and from what (build.json's "host")."""
        ov = self.profile.overlay
        return {
            "mode": "host" if self.host_mode else "generic",
            "resolved": {
                "overlay.bootfs": ov.bootfs,
                "overlay.bootfstype": ov.bootfstype,
                "overlay.fs": ov.fs,
                "cmdline": self.profile.cmdline,
                "boot_drivers": list(self.profile.boot_drivers),
            },
            **(self.host.to_json() if self.host is not None else {}),
        }


CheckFn = Callable[[ModuleSpec], tuple[Check, str]]


def select(
    profile: Profile, specs: dict[str, ModuleSpec], kver: str, check: CheckFn, *, hooks: Hooks | None = None
) -> Plan:
    """Choose modules: included-by-default + requested, minus omitted, closed over `requires`.

    `check(spec)` evaluates availability against the sysroot and returns (Check, reason) (module_check,
    or a stand-in in tests). A requested or required module that is unavailable or omitted is a
    ModuleError naming the chain. `hooks`: the module.py files `check` loaded, kept in the Plan.
    """
    errors: list[ConfigError] = []  # the profile names a module that does not exist
    for key in ("modules", "omit_modules"):
        for name in getattr(profile, key):
            if name not in specs:
                close = difflib.get_close_matches(name, list(specs), n=1)
                errors.append(
                    ConfigError(
                        f"{key}: unknown module '{name}'",
                        location=profile.where(f"{key}:{name}"),
                        hint=f"did you mean '{close[0]}'?" if close else "`initbuild modules` lists them",
                    )
                )
    if errors:
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
    return Plan(
        profile,
        kver,
        tuple(PlannedModule(specs[n], reasons[n]) for n in order),
        unavailable,
        hooks if hooks is not None else Hooks(),
    )


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

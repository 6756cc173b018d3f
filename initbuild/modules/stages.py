"""Plan -> Manifest for one stage: install every planned module that belongs to it, then the drivers.

Stage one (initoverlayfs mode) gets the modules whose `stage:` includes one; stage two, or the one
image of plain mode, gets the rest and the profile's extras. Templates render last, once the
drivers are resolved, so /init knows its driver table.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from .. import log
from ..manifest import Manifest
from ..profile import Mode
from ..resolve.elf import ElfResolver
from ..resolve.kmod import KernelModules, Kmod
from ..sysroot import Sysroot
from ..templates import Renderer
from .context import Collector
from .drivers import driver_table
from .plan import Plan


@dataclass
class StageResult:
    stage: int
    manifest: Manifest
    drivers: list[Kmod] = field(default_factory=list)  # load order
    builtin: list[str] = field(default_factory=list)


def collect_stage(
    stage: int,
    plan: Plan,
    sysroot: Sysroot,
    renderer: Renderer,
    context: dict[str, Any],
    kmods: KernelModules | None = None,
) -> StageResult:
    """Install every module of `plan` that belongs to `stage` (1 or 2), then the profile's extras.
    `kmods`: the kernel's modules, when the caller parsed them already (shared by both stages)."""
    profile = plan.profile
    kmods = kmods or KernelModules(sysroot, plan.kver)
    c = Collector(stage, plan, sysroot, kmods, ElfResolver(sysroot), renderer, context)
    for pm in plan.modules:
        if profile.mode is Mode.PLAIN and stage == 2 or pm.spec.stage.has(stage):
            verbose = log.level() >= log.VERBOSE
            with log.step(f"stage {stage}: module {pm.name}") if verbose else contextlib.nullcontext():
                c.install_module(pm.spec)
    for name in profile.boot_drivers:
        c.add_driver(name, location=profile.where(f"boot_drivers:{name}"))
    if stage == 2:
        for name in profile.drivers:
            c.add_driver(name, location=profile.where(f"drivers:{name}"))
        for name in profile.optional_drivers:
            c.add_driver(name, optional=True)
        for b in profile.binaries:
            c.add_binary(b, location=profile.where(f"binaries:{b}"))
        for i, f in enumerate(profile.files):
            c.add_file(
                f.source, f.dest, mode=f.mode, optional=f.optional, location=profile.where(f"files[{i}]")
            )
    res = c.install_drivers(
        all_drivers=stage == 2 and profile.stage2.all_drivers, firmware=stage == 2 and profile.stage2.firmware
    )
    requests = c.driver_requests
    boot = [
        (d.name, d.optional)
        for d in requests
        if d.module in boot_modules(plan) or d.module == "profile" and d.name in profile.boot_drivers
    ]
    everything = [(d.name, d.optional) for d in requests]
    first = [d.name for d in requests if d.first]
    c.render_pending(
        {
            "drivers": driver_table(kmods, everything, first=first, lean=c.lean).to_context(),
            "boot_drivers": driver_table(kmods, boot, first=first, lean=c.lean).to_context(),
        }
    )
    c.manifest.check()
    return StageResult(stage, c.manifest, list(res.modules), list(res.builtin))


def boot_modules(plan: Plan) -> set[str]:
    """Modules whose drivers are needed to reach the boot device (their stage includes stage one)."""
    return {pm.name for pm in plan.modules if pm.spec.stage.has(1)}

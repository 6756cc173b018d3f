"""Minimum-RAM probe: the smallest `-m` at which a variant still reaches the real root (bisection).

A boot counts only if it reaches the real root's marker without "Initramfs unpacking failed" (a plain
initramfs larger than the rootfs tmpfs limit unpacks truncated and may still run /init).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl


@dataclass
class Probe:
    variant: str
    min_mb: int | None  # None: failed even at the upper bound
    tried: list[tuple[int, bool]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "min_mb": self.min_mb, "tried": [[m, ok] for m, ok in self.tried]}


def min_ram(
    machine: bl.Machine,
    initrd: Path,
    name: str,
    log_dir: Path,
    *,
    lo: int = 32,
    hi: int = 2048,
    step: int = 16,
    timeout: float = 240.0,
) -> Probe:
    """Bisect on [lo, hi] MiB to `step` MiB: lo is assumed to fail; hi is checked first."""
    probe = Probe(name, None)

    def ok(mb: int) -> bool:
        vm = machine.vm(initrd, memory_mb=mb, timeout=timeout)
        s = bl.boot_once(vm, bl.ROOT_MARKER, log_dir / f"minram-{name}-{mb}.log", quiet_failure=True)
        probe.tried.append((mb, s.ok))
        bl.say(f"  min RAM {name}: -m {mb}: {'ok' if s.ok else 'FAILED (' + s.error[:60] + ')'}")
        return s.ok

    if not ok(hi):
        return probe
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    probe.min_mb = hi
    return probe

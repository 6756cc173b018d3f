"""Build-time benchmark: `initbuild build` (default profile) against Debian's mkinitramfs for the same
kernel, and initbuild's stage-two writer (`initbuild erofs`) against `mkfs.erofs -zlz4hc` on one tree.

Every tool runs as a subprocess through initbuild.run (wall time includes interpreter start-up, as a
user sees it); each is run `reps` times and the median wall time is reported with the output size.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib as bl

from initbuild.errors import ToolError
from initbuild.run import find_tool, have_tool, run


@dataclass
class Timing:
    name: str
    command: str
    seconds: list[float]
    output_bytes: int
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "seconds": [round(s, 3) for s in self.seconds],
            "median_seconds": round(self.median, 3),
            "output_bytes": self.output_bytes,
            "note": self.note,
        }


def timed(
    argv: list[str],
    reps: int,
    size_of: Callable[[], int],
    name: str,
    note: str = "",
    before: Callable[[], None] | None = None,
) -> Timing:
    secs = []
    for _ in range(reps):
        if before:
            before()  # untimed preparation (e.g. remove an output the tool would refuse to replace)
        t0 = time.perf_counter()
        run(argv)
        secs.append(time.perf_counter() - t0)
    return Timing(name, " ".join(argv), secs, size_of(), note)


def initbuild_build(outdir: Path, reps: int) -> Timing:
    argv = [sys.executable, "-m", "initbuild", "build", "--generic", "-q", "--force", "-o", str(outdir)]

    def size() -> int:
        data = json.loads((outdir / "build.json").read_text())
        return sum(o["size"] for o in data["outputs"])

    return timed(argv, reps, size, "initbuild build (default profile)", "stage one + stage two + conf")


def mkinitramfs(kver: str, out: Path, reps: int) -> Timing | None:
    if not have_tool("mkinitramfs"):
        return None
    argv = [find_tool("mkinitramfs", reason="compare build times"), "-o", str(out), kver]
    return timed(argv, reps, lambda: out.stat().st_size, "Debian mkinitramfs", "initramfs-tools defaults")


def initbuild_erofs(tree: Path, img: Path, reps: int) -> Timing:
    argv = [sys.executable, "-m", "initbuild", "erofs", "-q", "--force", str(tree), str(img)]
    return timed(argv, reps, lambda: img.stat().st_size, "initbuild erofs (lz4hc 9, 64 KiB pclusters)")


def mkfs_erofs(tree: Path, img: Path, reps: int) -> Timing | None:
    if not have_tool("mkfs.erofs"):
        return None
    tool = find_tool("mkfs.erofs", reason="compare stage-two writers")
    argv = [tool, "-zlz4hc", str(img), str(tree)]  # 1.5 has no -q; run() captures its output
    size = img.stat
    return timed(argv, reps, lambda: size().st_size, "mkfs.erofs -zlz4hc", before=lambda: img.unlink(True))


def guarded(f: Callable[[], Timing | None], name: str, errors: list[str]) -> Timing | None:
    """A tool that fails is reported in the results, not allowed to lose the boot measurements."""
    try:
        return f()
    except ToolError as e:
        errors.append(f"{name}: {str(e).splitlines()[0]}")
        bl.say(f"warning: {name} failed: {e}")
        return None


def run_all(kver: str, work: Path, tree: Path, tree_bytes: int, reps: int) -> dict[str, Any]:
    """Both comparisons in one run; missing tools are reported as such, not as failures."""
    work.mkdir(parents=True, exist_ok=True)
    bl.say(f"build benchmark: initbuild build vs mkinitramfs ({reps} runs each) ...")
    errors: list[str] = []
    timings: list[Timing | None] = [
        guarded(lambda: initbuild_build(work / "initbuild-out", reps), "initbuild build", errors),
        guarded(lambda: mkinitramfs(kver, work / "mkinitramfs.img", reps), "mkinitramfs", errors),
    ]
    bl.say(f"build benchmark: stage-two writers on a {tree_bytes / 1e6:.0f} MB tree ...")
    writers: list[Timing | None] = [
        guarded(lambda: initbuild_erofs(tree, work / "initbuild.erofs", reps), "initbuild erofs", errors),
        guarded(lambda: mkfs_erofs(tree, work / "mkfs.erofs", reps), "mkfs.erofs", errors),
    ]
    return {
        "reps": reps,
        "initramfs": [t.to_json() for t in timings if t],
        "stage2_tree_bytes": tree_bytes,
        "stage2_writer": [t.to_json() for t in writers if t],
        "missing": [n for n in ("mkinitramfs", "mkfs.erofs") if not have_tool(n)],
        "errors": errors,
    }


def table(data: dict[str, Any]) -> str:
    rows = ["| what | median wall s (runs) | output MB |", "|---|---:|---:|"]
    for t in data["initramfs"] + data["stage2_writer"]:
        runs = ", ".join(f"{s:.2f}" for s in t["seconds"])
        rows.append(f"| {t['name']} | {t['median_seconds']:.2f} ({runs}) | {t['output_bytes'] / 1e6:.1f} |")
    mb = data["stage2_tree_bytes"] / 1e6
    rows.append(f"\nstage-two writers: the same {mb:.0f} MB tree (payload files).")
    for e in data.get("errors", []):
        rows.append(f"failed: {e}")
    if data["missing"]:
        rows.append(f"not measured (tool missing): {', '.join(data['missing'])}")
    return "\n".join(rows)

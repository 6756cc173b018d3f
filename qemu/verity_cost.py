#!/usr/bin/env python3
"""What stage2.verity costs: time to the real root's userspace, stage-one size, the hash tree's build time.

    python3 qemu/verity_cost.py                     # ~10 MB and ~250 MB payloads, the newest kernel
    python3 qemu/verity_cost.py --kver 6.1.0-57-cloud-amd64 --sizes 10 250 --boots 2

For each payload size (real files, qemu/payload.py) the default profile is built twice, without and
with `stage2: {verity: true}`, and both boot the same deterministic machine (benchlib: TCG -icount,
virtio-pmem, stage two attached directly from pmem1: with verity, dm-verity over /dev/pmem1). Under
-icount identical boots repeat to the microsecond, so two boots per variant are plenty. Prints a
markdown table (the README's) and optionally JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib as bl
import payload as pl

from initbuild.boot.disks import pad_to
from initbuild.boot.harness import PMEM_ALIGN
from initbuild.build import build

TREE_STEP = "appending the dm-verity hash tree to stage two"


@dataclass
class Built:
    verity: bool
    initrd: Path
    stage2: Path
    stage1_bytes: int
    stage2_bytes: int
    build_seconds: float
    tree_seconds: float  # the "appending the dm-verity hash tree" step of the build


def build_one(kver: str, files: tuple[bl.FileSpec, ...], verity: bool, out: Path) -> Built:
    profile = bl.bench_profile(bl.OVERLAY, kver, files)
    profile = dataclasses.replace(profile, stage2=dataclasses.replace(profile.stage2, verity=verity))
    t0 = time.perf_counter()
    report = build(profile, out, force=True)
    seconds = time.perf_counter() - t0
    built = Built(
        verity,
        out / report.output("initramfs").path,
        out / report.output("stage2").path,
        report.output("initramfs").size,
        report.output("stage2").size,
        seconds,
        next((t for s, t in report.timings if s == TREE_STEP), 0.0),
    )
    pad_to(built.stage2, PMEM_ALIGN)
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kver", help="kernel version (default: the newest installed)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 250], help="payload sizes in MB")
    ap.add_argument("--boots", type=int, default=2, help="boots per variant (default 2)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/initbuild-verity-cost"))
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    bl.quiet_builds()
    kver = bl.kernel_version(args.kver)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    root = bl.make_real_root(work)
    rows: list[dict[str, object]] = []
    table: list[str] = []
    for p in pl.payloads(kver, args.sizes):
        base: float | None = None
        for verity in (False, True):
            name = f"{p.label}-{'verity' if verity else 'plain'}"
            bl.say(f"building {name} ({p.size / 1e6:.0f} MB payload) ...")
            b = build_one(kver, p.files(), verity, work / name)
            machine = bl.Machine(Path(f"/boot/vmlinuz-{kver}"), bl.pmem_disks(root, b.stage2))
            samples = bl.boot_n(machine, b.initrd, args.boots, work / "logs", name, progress=bl.say)
            times = [s.userspace for s in samples if s.ok and s.userspace]
            if len(times) != len(samples):
                bl.say(f"FAILED: {name} did not reach the real root (logs in {work}/logs)")
                return 1
            userspace = statistics.median(times)
            base = base if verity else userspace
            delta = 100 * (userspace / base - 1) if verity and base else None
            row = {k: v for k, v in dataclasses.asdict(b).items() if k not in ("initrd", "stage2")}
            rows.append(
                {"payload": p.label, "payload_bytes": p.size, **row, "userspace": userspace, "delta": delta}
            )
            table.append(
                f"| {p.label} | {'yes' if verity else 'no'} | {userspace:.3f} s | "
                f"{'' if delta is None else f'{delta:+.1f} %'} | {b.stage1_bytes / 1e6:.3f} MB | "
                f"{b.stage2_bytes / 1e6:.1f} MB | {b.tree_seconds:.2f} s of {b.build_seconds:.1f} s |"
            )
    print(f"kernel {kver}, TCG -icount, virtio-pmem, {args.boots} boot(s) per variant\n")
    print("| payload | verity | time to userspace | vs without | stage one | stage two | hash tree build |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps({"kernel": kver, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

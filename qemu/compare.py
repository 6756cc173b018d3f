#!/usr/bin/env python3
"""Compare initoverlayfs with a plain initramfs for the default profile (or yours), on a fresh machine.

    python3 qemu/compare.py                      # 3 deterministic boots per variant, a markdown table
    python3 qemu/compare.py --profile my.yaml    # the same for your profile

Builds the profile (default: initbuild/profiles/default.yaml) twice -- initoverlayfs and plain
(same content; the cpio compression is the profile's, lz4 for the default) -- plus a tiny real root,
boots both on the same QEMU machine (virtio-pmem disks, -icount) and prints time to the real root's
userspace and MemAvailable at two moments of each boot: as stage two's /init starts (the initramfs's
userspace; a plain initramfs holds all its content in tmpfs then) and at the real root. The benchmark
machine boots from virtio-pmem, so its drivers are added to the profile's boot drivers (for both
variants), and the images are generic (hostonly: no, like --generic: the disks are the benchmark's, not
this host's; benchlib.bench_profile); nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchlib as bl
import report

from initbuild.config import load_profile
from initbuild.errors import InitbuildError
from initbuild.profile import Mode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path, help="the profile to build (default: the shipped default)")
    ap.add_argument("--boots", type=int, default=3, help="boots per variant (default 3)")
    ap.add_argument("--kver", help="kernel version (default: the newest installed)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/initbuild-compare"), help="builds and logs")
    ap.add_argument("--zstd", action="store_true", help="also a plain initramfs compressed with zstd")
    ap.add_argument(
        "--no-icount", action="store_true", help="KVM if it works, else TCG, without -icount (not repeatable)"
    )
    bl.add_machine_arg(ap)
    ap.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    ap.add_argument("--timeout", type=float, default=300.0, help="host seconds per boot (default 300)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.quiet_builds()
    kver = bl.kernel_version(args.kver)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        comp = load_profile(args.profile).compression
    except InitbuildError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return e.exit_code
    variants = [
        bl.Variant("initoverlayfs", Mode.INITOVERLAYFS, comp),
        bl.Variant(f"plain-{comp}", Mode.PLAIN, comp),
    ]
    if args.zstd and comp != "zstd":
        variants.append(bl.PLAIN_ZSTD)
    images = {}
    what = args.profile or "the default profile"
    for v in variants:
        bl.say(f"building {what} as {v.name} ...")
        images[v.name] = bl.build_variant(v, kver, work / v.name, profile=args.profile)
    bl.say("building the real root ...")
    root = bl.make_real_root(work)
    stage2 = images["initoverlayfs"].stage2
    assert stage2 is not None
    machine = bl.machine_from_args(kver, root, stage2, args)
    bl.say(f"booting each variant {args.boots} times ({machine.describe()}, -m {args.memory}) ...")
    results = []
    for v in variants:
        initrd = images[v.name].initrd
        samples = bl.boot_n(machine, initrd, args.boots, work / "logs", v.name, progress=bl.say)
        results.append(report.Result("default", 0, images[v.name], samples))
    print(report.comparison_table(results, machine))
    if args.json:
        args.json.write_text(json.dumps(report.results_json(results, machine, kver), indent=2) + "\n")
    failed = [r.images.variant.name for r in results if not r.all_ok]
    if failed:
        bl.say(f"FAILED: {', '.join(failed)} did not reach the real root every time (logs in {work}/logs)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

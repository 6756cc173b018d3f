#!/usr/bin/env python3
"""Benchmark initbuild's EROFS writer against mkfs.erofs on a ~250 MB tree of real files.

    python3 qemu/bench_erofs.py [--size-mb 250] [--keep DIR]

Builds a symlink-free copy of kernel modules, shared libraries and /usr/share content, then times
(in child processes, so peak RSS is measured per build) initbuild lz4hc at levels 12 and 9,
`mkfs.erofs -zlz4hc` and `mkfs.erofs -zlz4hc -C65536`, checks each image with fsck.erofs, and
prints a markdown table. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from initbuild import run  # noqa: E402

SOURCES = ["/lib/modules", "/usr/lib/x86_64-linux-gnu", "/usr/share"]

WRITER = """
import sys
from initbuild.formats.erofs.writer import ErofsOptions, write_erofs
from initbuild.manifest import from_tree
from initbuild.sysroot import Sysroot
src, image, level = sys.argv[1], sys.argv[2], int(sys.argv[3])
sysroot = Sysroot(src)
with open(image, "wb") as f:
    print(write_erofs(from_tree(sysroot, preserve_mtime=False), sysroot, f, ErofsOptions(level=level)))
"""


def make_tree(dest: Path, limit: int) -> tuple[int, int]:
    """Copy regular files (no symlinks) from SOURCES, sharing `limit` bytes between them (a source
    that has less leaves its share to the next); returns (files, bytes)."""
    files = total = 0
    for i, top in enumerate(SOURCES):
        budget = total + (limit - total) // (len(SOURCES) - i)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file():
                    continue
                size = src.stat().st_size
                if total + size > budget:
                    continue
                target = dest / src.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, target)
                except OSError:
                    continue
                files += 1
                total += size
    return files, total


def timed_child(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of a child. ru_maxrss of RUSAGE_CHILDREN is the max over all
    waited-for children, so the caller runs the heaviest child first or reads a rising value."""
    t = time.perf_counter()
    run.run(argv, env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    elapsed = time.perf_counter() - t
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def fsck_ok(image: Path) -> bool:
    cp = run.run(["fsck.erofs", "--extract", str(image)], check=False)
    return cp.returncode == 0 and b"<E>" not in cp.stdout + cp.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=250)
    ap.add_argument("--keep", type=Path, help="build in this directory and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-erofs-"))
    src = work / "tree"
    if not src.exists():
        files, total = make_tree(src, args.size_mb << 20)
    else:
        files = sum(len(f) for _, _, f in os.walk(src))
        total = sum((Path(d) / f).stat().st_size for d, _, fs in os.walk(src) for f in fs)
    print(f"tree: {files} files, {total / 1e6:.1f} MB, {os.cpu_count()} CPUs\n")
    rows = []
    py = sys.executable
    builds = [
        (
            "initbuild lz4hc level 12",
            [py, "-c", WRITER, str(src), str(work / "ib12.img"), "12"],
            work / "ib12.img",
        ),
        (
            "initbuild lz4hc level 9",
            [py, "-c", WRITER, str(src), str(work / "ib9.img"), "9"],
            work / "ib9.img",
        ),
        (
            "mkfs.erofs -zlz4hc",
            ["mkfs.erofs", "-T0", "-zlz4hc", str(work / "mk.img"), str(src)],
            work / "mk.img",
        ),
        (
            "mkfs.erofs -zlz4hc -C65536",
            ["mkfs.erofs", "-T0", "-zlz4hc", "-C65536", str(work / "mk64.img"), str(src)],
            work / "mk64.img",
        ),
    ]
    last_rss = 0
    for label, argv, image in builds:
        elapsed, rss = timed_child(argv)
        peak = f"{rss / 1024:.0f} MiB" if rss > last_rss else f"<= {last_rss / 1024:.0f} MiB"
        last_rss = max(last_rss, rss)
        size = image.stat().st_size
        rows.append((label, elapsed, size, peak, fsck_ok(image)))
    print("| build | time (s) | image (MB) | % of input | peak RSS | fsck --extract |")
    print("|---|---:|---:|---:|---:|---|")
    for label, elapsed, size, peak, ok in rows:
        verdict = "ok" if ok else "FAIL"
        print(
            f"| {label} | {elapsed:.2f} | {size / 1e6:.2f} | {100 * size / total:.1f} | {peak} | {verdict} |"
        )
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

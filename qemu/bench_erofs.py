#!/usr/bin/env python3
"""Benchmark `initbuild erofs` against mkfs.erofs on three shapes of tree, in one run.

    python3 qemu/bench_erofs.py [--runs 3] [--kver KVER] [--workdir DIR] [--lz4 python] [--json FILE]

Shapes (issue 12): small files (a Python standard library), kernel modules (+ /lib/firmware
when the machine has it), and a real initramfs payload: the stage two of a `modules: [systemd]`
profile, built with `initbuild build` and unpacked with `initbuild unpack`. Each shape is written by
`initbuild erofs` (defaults: lz4hc level 9, 64 KiB pclusters), `mkfs.erofs -zlz4hc` (4 KiB pclusters)
and `mkfs.erofs -zlz4hc -C65536`, in paired rounds (A, B, C, A, B, C, ...); the table gives medians
of wall time, CPU time (user + system) and peak RSS of each child (os.wait4), the image size, and
the ratios the issue's acceptance names: wall time against `-zlz4hc`, size against `-C65536`.
initbuild's image is checked once per shape with `fsck.erofs --extract`. Not a test: times depend
on the machine and on what else runs on it (initbuild uses every core, mkfs.erofs 1.5 one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python3 qemu/bench_erofs.py` from a checkout
    sys.path.insert(0, str(REPO))

from initbuild import run  # noqa: E402
from initbuild.formats.erofs.compressor import LZ4_PATH_ENV, lz4_codec  # noqa: E402

DEFAULT_KVER = "6.1.0-57-cloud-amd64"
PROFILE = "kernel: {kver}\nhostonly: no\nmodules: [systemd]\n"


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float
    rss_kib: int
    size: int


@dataclass(frozen=True)
class Row:
    shape: str
    build: str
    wall: float
    cpu: float
    rss_mib: float
    size: int


def builders(image_dir: Path) -> list[tuple[str, list[str], Path]]:
    """(label, argv with SRC as placeholder, image) for each writer, in the order of a round."""
    ib, mk, mk64 = image_dir / "initbuild.img", image_dir / "mkfs.img", image_dir / "mkfs64.img"
    return [
        (
            "initbuild erofs",
            [sys.executable, "-m", "initbuild", "erofs", "-q", "--force", "SRC", str(ib)],
            ib,
        ),
        ("mkfs.erofs -zlz4hc", ["mkfs.erofs", "-T0", "-zlz4hc", str(mk), "SRC"], mk),
        ("mkfs.erofs -zlz4hc -C65536", ["mkfs.erofs", "-T0", "-zlz4hc", "-C65536", str(mk64), "SRC"], mk64),
    ]


def measure(argv: list[str], image: Path) -> Sample:
    """Run a child to completion: wall time, and its own CPU time and peak RSS from wait4."""
    image.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = run.spawn(argv)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{out.decode(errors='replace')}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, image.stat().st_size)


def python_tree() -> Path:
    for p in (Path("/usr/lib/python3.11"), Path(sysconfig.get_paths()["stdlib"])):
        if (p / "os.py").is_file():
            return p
    raise SystemExit("no Python standard library tree found")


def modules_tree(work: Path, kver: str) -> Path:
    """/lib/modules/KVER/kernel and /lib/firmware (if present) side by side in one directory, as
    hard links where the file system allows (else copies)."""
    dest = work / "modules-firmware"
    if dest.exists():
        return dest
    sources = {"kernel": Path(f"/lib/modules/{kver}/kernel"), "firmware": Path("/lib/firmware")}
    if not sources["kernel"].is_dir():
        raise SystemExit(f"{sources['kernel']} is missing (pass --kver)")

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for name, src in sources.items():
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, copy_function=link)
    return dest


def stage2_tree(work: Path, kver: str) -> Path:
    """The systemd profile's stage two, unpacked."""
    dest = work / "stage2-systemd"
    if dest.exists():
        return dest
    profile = work / "systemd.yaml"
    profile.write_text(PROFILE.format(kver=kver))
    out = work / "systemd-build"
    initbuild = [sys.executable, "-m", "initbuild"]
    run.run(
        [*initbuild, "build", str(profile), "-o", str(out), "--force", "-q"], env={"PYTHONPATH": str(REPO)}
    )
    report = json.loads((out / "build.json").read_text())
    image = next(o["path"] for o in report["outputs"] if o["kind"] == "stage2")
    run.run([*initbuild, "unpack", str(out / image), str(dest)], env={"PYTHONPATH": str(REPO)})
    return dest


def tree_size(root: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                files += 1
                total += p.stat().st_size
    return files, total


def fsck_ok(image: Path) -> bool:
    cp = run.run(["fsck.erofs", "--extract", str(image)], check=False)
    return cp.returncode == 0 and b"<E>" not in cp.stdout + cp.stderr


def bench_shape(shape: str, src: Path, work: Path, runs: int) -> list[Row]:
    image_dir = work / "images"
    image_dir.mkdir(exist_ok=True)
    plan = builders(image_dir)
    samples: dict[str, list[Sample]] = {label: [] for label, _, _ in plan}
    for _ in range(runs):  # paired: every writer once per round, same order
        for label, argv, image in plan:
            samples[label].append(measure([str(src) if a == "SRC" else a for a in argv], image))
    if not fsck_ok(plan[0][2]):
        raise SystemExit(f"fsck.erofs rejects initbuild's image of {src}")
    rows = []
    for label, got in samples.items():
        rows.append(
            Row(
                shape,
                label,
                statistics.median(s.wall for s in got),
                statistics.median(s.cpu for s in got),
                statistics.median(s.rss_kib for s in got) / 1024,
                int(statistics.median(s.size for s in got)),
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| shape | build | wall (s) | CPU (s) | image (MB) | peak RSS (MiB) "
        "| wall / mkfs -zlz4hc | size / mkfs -C65536 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = {x.build: x for x in rows if x.shape == r.shape}
        wall_ratio = r.wall / ref["mkfs.erofs -zlz4hc"].wall
        size_ratio = r.size / ref["mkfs.erofs -zlz4hc -C65536"].size
        lines.append(
            f"| {r.shape} | {r.build} | {r.wall:.2f} | {r.cpu:.2f} | {r.size / 1e6:.2f} | {r.rss_mib:.0f} "
            f"| {wall_ratio:.2f} | {size_ratio:.4f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="paired rounds per shape (median of these)")
    ap.add_argument("--kver", default=DEFAULT_KVER, help="kernel of the modules tree and the stage two")
    ap.add_argument("--workdir", type=Path, help="build the trees here and keep them (else a temporary dir)")
    ap.add_argument("--lz4", choices=["native", "python"], help=f"set {LZ4_PATH_ENV} for initbuild")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    if args.lz4:
        os.environ[LZ4_PATH_ENV] = args.lz4
    os.environ["PYTHONPATH"] = str(REPO)  # children: `python -m initbuild` of this checkout
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-erofs-"))
    work.mkdir(parents=True, exist_ok=True)
    shapes = [
        ("small files (python3 stdlib)", python_tree()),
        ("kernel modules + firmware", modules_tree(work, args.kver)),
        ("stage two, systemd profile", stage2_tree(work, args.kver)),
    ]
    codec = lz4_codec("lz4hc", 9)
    lz4 = codec.path if codec else "-"
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; initbuild's LZ4: {lz4}")
    for shape, src in shapes:
        files, total = tree_size(src)
        print(f"{shape}: {src}, {files} files, {total / 1e6:.1f} MB")
    rows: list[Row] = []
    for shape, src in shapes:
        rows += bench_shape(shape, src, work, args.runs)
    print(f"\nmedians of {args.runs} paired rounds, load afterwards {os.getloadavg()[0]:.2f}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

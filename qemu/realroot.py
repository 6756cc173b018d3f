#!/usr/bin/env python3
"""Boot benchmark of a REAL Debian bookworm system: initramfs-tools, dracut and initbuild, one root disk.

    .venv/bin/python qemu/realroot.py                     # Linux 6.1, 3 boots per variant (~30 min)
    .venv/bin/python qemu/realroot.py --quick             # one boot per variant
    .venv/bin/python qemu/realroot.py --kernel 6.12 --boots 5 --update-readme

What it does (issue #11, points 4-5):
1. Makes two Debian bookworm roots with mmdebstrap (--mode=auto: rootless with user namespaces and
   /etc/subuid, `root` when run as root): the issue's package list with initramfs-tools, and a sibling
   with dracut instead (the two conflict). Both are cached under ~/.cache/initbuild/realroot/<hash of
   suite + mirrors + package list> ($INITBUILD_CACHE moves it); a cold run downloads ~150 MB.
2. In per-run copies: /etc/fstab by UUID (as Debian's installer writes it), a fixed machine-id, and the
   measuring units (initbuild/boot/debroot.py): a first unit of the real root reporting MemAvailable at
   the switch, a unit after multi-user.target printing one marker line (uptime, MemAvailable, failed
   units) and `systemd-analyze`, then `systemctl poweroff`; a systemd-shutdown hook dumps the kernel log.
3. Builds every initrd of that system, timed: `update-initramfs -c` (chroot, Debian's MODULES=most),
   `dracut --no-hostonly` (in the dracut root: same kernel package), and initbuild with --sysroot
   (initoverlayfs with the systemd module or busybox stage two, plain with busybox or systemd).
   The benchmark disk is an emulated NVDIMM: a peer lacking its drivers gets them as it documents
   (/etc/initramfs-tools/modules, dracut --add-drivers), and the output says so.
4. Stage-two images go into the root filesystem's /boot, then ONE ext4 disk (fixed UUID) is made from
   the tree (mkfs.ext4 -d, no root) and every variant boots it as an NVDIMM (deterministic under
   -icount), with the tree's own kernel and Debian's GRUB-like command line
   (`root=UUID=... ro quiet`, plus the harness's console=ttyS0 panic=-1 and nokaslr).
5. Reads printk times and the markers: Run /init, the switch (the real root's systemd version line),
   multi-user.target, systemd-analyze, MemAvailable at the switch and at multi-user, failed units,
   a clean power-off, and the console warnings of the issue. Writes qemu/results/realroot/<kernel>/
   (results.json, table.md, plot.svg) and, with --update-readme, README's realroot block.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl  # also puts the checkout on sys.path

from initbuild.boot import debroot as dr
from initbuild.boot.harness import PMEM_ALIGN, VM, Disk, boot
from initbuild.run import run

# The root disk. NVDIMM (ACPI NFIT, `-device nvdimm`): guest memory, flushes are a CPU barrier, so
# every boot repeats to the microsecond under -icount. virtio-pmem, deterministic for the read-only disks
# of qemu/bench.py, is not for a root that is written to: the guest's flushes (fsck, journald, ext4
# commits) are fdatasync()s that a host thread completes; dracut's switch varied by 368 ms across boots.
DISK_MODULES = {
    "nvdimm": ("libnvdimm", "nfit", "nd_pmem", "nd_btt"),
    "virtio-pmem": ("libnvdimm", "nd_virtio", "virtio_pmem", "nd_pmem", "nd_btt"),
}
BOOT_DRIVERS = {"nvdimm": ("nfit", "nd_pmem"), "virtio-pmem": ("virtio_pmem", "nd_pmem")}
DISK = "nvdimm"  # --disk


@dataclass(frozen=True)
class NvdimmVM(VM):
    """The harness's VM with the root disk as an emulated NVDIMM (not a harness disk kind yet)."""

    nvdimm: Path | None = None

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.nvdimm is None:
            return argv
        size = self.nvdimm.stat().st_size
        argv[argv.index("-m") + 1] += f",slots=2,maxmem={self.memory_mb + 8192}M"
        argv[argv.index("-machine") + 1] += ",nvdimm=on"
        return argv + [
            "-object", f"memory-backend-file,id=nv0,share=off,mem-path={self.nvdimm},size={size}",
            "-device", "nvdimm,memdev=nv0,id=nvdimm0",
        ]  # fmt: skip


APPEND = f"root=UUID={dr.ROOT_UUID} ro quiet nokaslr"  # + the harness's console=ttyS0 panic=-1


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    tool: str  # initramfs-tools | dracut | initbuild
    mode: str = ""
    systemd: bool = False

    @property
    def stage2_name(self) -> str:  # the image's name in the root filesystem's /boot
        return "initoverlayfs-{kver}.img" if self.systemd else "initoverlayfs-busybox-{kver}.img"


VARIANTS = (
    Variant("initramfs-tools", "initramfs-tools (Debian default, MODULES=most)", "initramfs-tools"),
    Variant("dracut", "dracut 059 --no-hostonly", "dracut"),
    Variant("ovl-systemd", "initbuild initoverlayfs, systemd stage two", "initbuild", "initoverlayfs", True),
    Variant("ovl-busybox", "initbuild initoverlayfs, busybox stage two", "initbuild", "initoverlayfs"),
    Variant("plain-busybox", "initbuild plain, busybox", "initbuild", "plain"),
    Variant("plain-systemd", "initbuild plain, systemd", "initbuild", "plain", True),
)


@dataclass
class Built:
    variant: Variant
    initrd: Path
    initrd_bytes: int
    stage2_bytes: int = 0
    build_seconds: float = 0.0  # median of build_samples
    build_samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    boots: list[dr.BootReading] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--kernel", choices=sorted(dr.KERNEL_PACKAGES), default="6.1", help="kernel series (default 6.1)"
    )
    ap.add_argument("--boots", type=int, default=3, help="identical boots per variant (default 3)")
    ap.add_argument("--quick", action="store_true", help="one boot per variant (a smoke run)")
    ap.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated subset")
    ap.add_argument(
        "--build-repeats",
        type=int,
        default=3,
        help="builds per initrd; the table shows the median (default 3)",
    )
    ap.add_argument(
        "--disk",
        choices=sorted(DISK_MODULES),
        default="nvdimm",
        help="how the root disk is attached (default nvdimm: repeats under -icount; virtio-pmem does not "
        "once the root is written to)",
    )
    ap.add_argument(
        "--no-icount",
        action="store_true",
        help="plain TCG: NOT repeatable, and no faster here "
        "(icount's sleep=off skips the guest's idle waits)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="host seconds per boot (default 900)")
    ap.add_argument("--workdir", type=Path, help="trees, images, console logs (default: the cache dir)")
    ap.add_argument("--out", type=Path, default=bl.REPO / "qemu" / "results" / "realroot")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md's realroot block")
    args = ap.parse_args(argv)
    if args.quick:
        args.boots = 1
    return args


def lists(tree: Path, image: str, tool: str) -> str:
    """The file list of an initrd, by the generator's own lister run inside its tree."""
    lister = ["lsinitramfs", image] if tool == "initramfs-tools" else ["lsinitrd", image]
    return run(["chroot", str(tree), *lister]).stdout.decode(errors="replace")


def missing_pmem(listing: str) -> list[str]:
    return [m for m in DISK_MODULES[DISK] if not re.search(rf"/{m}\.ko", listing)]


def timed(repeats: int, once) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """Run a build `repeats` times (the machine is shared: one build time is noise): median and all."""
    samples = [once() for _ in range(max(1, repeats))]
    return statistics.median(samples), [round(x, 2) for x in samples]


def build_initramfs_tools(tree: Path, kver: str, work: Path, repeats: int) -> Built:
    v = VARIANTS[0]
    image = f"/boot/initrd.img-{kver}"
    notes = []
    seconds = (
        dr.in_tree(tree, ["update-initramfs", "-c", "-k", kver]) if not (tree / image[1:]).exists() else 0.0
    )
    missing = missing_pmem(lists(tree, image, v.tool))
    if missing:
        with open(tree / "etc/initramfs-tools/modules", "a") as f:
            f.write(f"# {DISK}, the benchmark's disk (qemu/realroot.py)\n" + "\n".join(missing) + "\n")
        notes.append(f"added to /etc/initramfs-tools/modules: {' '.join(missing)}")

    def once() -> float:
        (tree / image[1:]).unlink()
        return dr.in_tree(tree, ["update-initramfs", "-c", "-k", kver])

    seconds, samples = timed(repeats, once)
    if still := missing_pmem(lists(tree, image, v.tool)):
        raise SystemExit(f"initramfs-tools' image still lacks {still}")
    out = work / "initrd-initramfs-tools.img"
    shutil.copy(tree / image[1:], out)
    return Built(v, out, out.stat().st_size, 0, seconds, samples, notes)


def build_dracut(tree: Path, kver: str, work: Path, repeats: int) -> Built:
    v = VARIANTS[1]
    image = "/boot/initrd-dracut.img"
    argv = ["dracut", "--no-hostonly", "--force", "--kver", kver]
    dr.in_tree(tree, [*argv, image])
    notes = []
    if missing := missing_pmem(lists(tree, image, v.tool)):
        argv += ["--add-drivers", " ".join(missing)]
        notes.append(f"dracut --add-drivers '{' '.join(missing)}'")
    seconds, samples = timed(repeats, lambda: dr.in_tree(tree, [*argv, image]))
    if still := missing_pmem(lists(tree, image, v.tool)):
        raise SystemExit(f"dracut's image still lacks {still}")
    out = work / "initrd-dracut.img"
    shutil.copy(tree / image[1:], out)
    return Built(v, out, out.stat().st_size, 0, seconds, samples, notes)


def build_initbuild(v: Variant, tree: Path, kver: str, work: Path, repeats: int) -> Built:
    profile = work / "profiles" / f"{v.name}.yaml"
    profile.parent.mkdir(parents=True, exist_ok=True)
    image = v.stage2_name if v.mode == "initoverlayfs" else None
    text = dr.profile_text(
        v.title, v.mode, kver, systemd=v.systemd, stage2_image=image, boot_drivers=BOOT_DRIVERS[DISK]
    )
    profile.write_text(text)
    out = work / "out" / v.name
    argv = [sys.executable, "-m", "initbuild", "-q", "build", str(profile), "--sysroot", str(tree)]
    argv += ["-o", str(out), "--force", "--json"]
    result: list[bytes] = []

    def once() -> float:
        t0 = time.perf_counter()
        result[:] = [run(argv).stdout]
        return time.perf_counter() - t0

    seconds, samples = timed(repeats, once)
    report = json.loads(result[0])
    paths = {o["kind"]: o for o in report["outputs"]}
    initrd = out / paths["initramfs"]["path"]
    stage2 = 0
    if v.mode == "initoverlayfs":
        src = out / paths["stage2"]["path"]
        stage2 = src.stat().st_size
        shutil.copy(src, tree / "boot" / v.stage2_name.format(kver=kver))
    return Built(v, initrd, initrd.stat().st_size, stage2, seconds, samples)


def boot_variant(b: Built, kernel: Path, disk: Path, args: argparse.Namespace, logs: Path) -> None:
    for i in range(args.boots):
        vm = NvdimmVM(
            kernel=kernel,
            initrd=b.initrd,
            append=APPEND,
            memory_mb=2048,
            disks=(Disk(disk, kind="pmem"),) if DISK == "virtio-pmem" else (),
            nvdimm=disk if DISK == "nvdimm" else None,
            accel="tcg",
            machine="pc",
            icount=not args.no_icount,
            timeout=args.timeout,
            expect=(dr.POWER_DOWN,),
        )
        log_path = logs / f"{b.variant.name}.{i + 1}.log"
        res = boot(vm, log_path=log_path)
        r = dr.read_boot(res.console)
        b.boots.append(r)
        state = (
            f"switch {r.switch:.3f} s, multi-user {r.multi_user:.3f} s, failed units {r.failed_units}"
            if r.reached and r.switch and r.multi_user
            else f"FAILED ({'timed out' if res.timed_out else 'no marker'}; log {log_path})"
        )
        bl.say(f"  {b.variant.name} boot {i + 1}/{args.boots}: {state}, {res.wall:.0f} s host")


# -- summary ----------------------------------------------------------------------------------------


def stat(b: Built, get) -> bl.Stat | None:  # type: ignore[no-untyped-def]
    return bl.Stat.of([v for r in b.boots if (v := get(r)) is not None])


METRICS = {
    "run_init": lambda r: r.run_init,
    "switch": lambda r: r.switch,
    "switch_unit": lambda r: r.switch_unit,
    "multi_user": lambda r: r.multi_user,
    "switch_mem_mib": lambda r: r.switch_mem_kb / 1024 if r.switch_mem_kb else None,
    "multi_user_mem_mib": lambda r: r.multi_user_mem_kb / 1024 if r.multi_user_mem_kb else None,
    **{
        f"analyze_{k}": (lambda r, k=k: r.analyze.get(k))
        for k in ("kernel", "initrd", "userspace", "multi-user")
    },
}


def summary(b: Built) -> dict[str, Any]:
    stats = {k: stat(b, f) for k, f in METRICS.items()}
    warn = {w: max((r.warnings.get(w, 0) for r in b.boots), default=0) for w in dr.WARNINGS}
    return {
        "variant": b.variant.name,
        "title": b.variant.title,
        "initrd_bytes": b.initrd_bytes,
        "stage2_bytes": b.stage2_bytes,
        "build_seconds": round(b.build_seconds, 2),
        "build_samples": b.build_samples,
        "notes": b.notes,
        "boots": len(b.boots),
        "reached": sum(r.reached for r in b.boots),
        "failed_units_max": max((r.failed_units or 0 for r in b.boots), default=None),
        "failed": sorted({u for r in b.boots for u in r.failed}),
        "clean_shutdown": sum(r.clean_shutdown for r in b.boots),
        "warnings_max": warn,
        "stats": {k: (v.to_json() if v else None) for k, v in stats.items()},
        "switch_spread_ms": round(stats["switch"].spread * 1000, 3) if stats["switch"] else None,
        "samples": [asdict(r) for r in b.boots],
    }


def cell(st: dict[str, float] | None, nd: int = 3) -> str:
    if not st:
        return "-"
    if round(st["min"], nd) == round(st["max"], nd):
        return f"{st['median']:.{nd}f}"
    return f"{st['median']:.{nd}f} ({st['min']:.{nd}f}-{st['max']:.{nd}f})"


def med(s: dict[str, Any], key: str) -> float | None:
    st = s["stats"].get(key)
    return st["median"] if st else None


def table(sums: list[dict[str, Any]]) -> str:
    rows = [
        "| initrd | size MB | build s | `Run /init` s | switch to real root s (median, range) | spread ms | "
        "multi-user s | systemd-analyze kernel + initrd + userspace s | "
        "MemAvailable MiB switch / multi-user | "
        "failed units | clean power-off | blockdev / module / loop warnings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sums:
        size = f"{s['initrd_bytes'] / 1e6:.2f}" + (
            f" + {s['stage2_bytes'] / 1e6:.2f}" if s["stage2_bytes"] else ""
        )
        a = [med(s, f"analyze_{k}") for k in ("kernel", "initrd", "userspace")]
        an = " + ".join("-" if x is None else f"{x:.2f}" for x in a)
        mem = " / ".join(
            "-" if (x := med(s, k)) is None else f"{x:.0f}" for k in ("switch_mem_mib", "multi_user_mem_mib")
        )
        w = " / ".join(str(s["warnings_max"][k]) for k in dr.WARNINGS)
        spread = "-" if s["switch_spread_ms"] is None else f"{s['switch_spread_ms']:.1f}"
        rows.append(
            f"| {s['title']} | {size} | {s['build_seconds']:.1f} | {cell(s['stats']['run_init'])} | "
            f"{cell(s['stats']['switch'])} | {spread} | {cell(s['stats']['multi_user'])} | {an} | {mem} | "
            f"{s['failed_units_max']} | {s['clean_shutdown']}/{s['boots']} | {w} |"
        )
    return "\n".join(rows)


def goals(sums: list[dict[str, Any]]) -> list[str]:
    """The issue's acceptance goals 2-3, from this run."""
    by = {s["variant"]: s for s in sums}
    out = []
    spreads = [
        f"{s['variant']} {s['switch_spread_ms']:.1f} ms" for s in sums if s["switch_spread_ms"] is not None
    ]
    out.append("- Repeatability (goal: identical boots within 5 ms at the switch): " + ", ".join(spreads))
    peers = [by[n] for n in ("initramfs-tools", "dracut") if n in by and med(by[n], "switch")]
    ovl = by.get("ovl-systemd")
    if peers and ovl and med(ovl, "switch"):
        fast = min(peers, key=lambda s: med(s, "switch"))  # type: ignore[arg-type,return-value]
        r = med(ovl, "switch") / med(fast, "switch")  # type: ignore[operator]
        out.append(
            f"- Switch to the real root, initoverlayfs+systemd vs {fast['variant']}: {r:.2f}x (goal <= 0.6x)"
        )
        mu = [(p["variant"], med(p, "multi_user")) for p in peers]
        mine = med(ovl, "multi_user")
        out.append(
            "- multi-user.target: ovl-systemd "
            + (f"{mine:.3f} s" if mine else "-")
            + "; "
            + ", ".join(f"{n} {x:.3f} s" for n, x in mu if x)
            + " (goal: no later than either)"
        )
        fastb = min(p["build_seconds"] for p in peers)
        out.append(
            f"- Build time: ovl-systemd {ovl['build_seconds']:.1f} s = {ovl['build_seconds'] / fastb:.2f}x "
            f"the faster peer's {fastb:.1f} s (goal <= 0.2x)"
        )
    for s in sums:
        if s["notes"]:
            out.append(f"- {s['variant']}: " + "; ".join(s["notes"]))
        if s["failed"]:
            out.append(f"- {s['variant']}: failed units: {', '.join(s['failed'])}")
    return out


COLORS = ("#7f7f7f", "#1f77b4", "#2ca02c")


def svg(sums: list[dict[str, Any]], subtitle: str) -> str:
    """Stacked bars per variant: kernel (to Run /init), initrd (to the switch), real root (to multi-user)."""
    W, row, left, top = 760, 34, 250, 40
    h = top + row * len(sums) + 60
    ends = [med(s, "multi_user") or 0 for s in sums]
    xmax = max(ends + [1.0])
    xmax = float(int(xmax) + 1)
    scale = (W - left - 30) / xmax
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">Debian bookworm: power-on to '
        "multi-user.target (median guest seconds)</text>",
    ]
    for i in range(int(xmax) + 1):
        x = left + i * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{h - 50}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 38}" text-anchor="middle">{i}</text>')
    for j, s in enumerate(sums):
        y = top + j * row
        pts = [0.0] + [med(s, k) or 0.0 for k in ("run_init", "switch", "multi_user")]
        out.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{s["variant"]}</text>')
        for k in range(3):
            a, b = pts[k], max(pts[k], pts[k + 1])
            out.append(
                f'<rect x="{left + a * scale:.1f}" y="{y + 4}" width="{(b - a) * scale:.1f}" '
                f'height="{row - 10}" '
                f'fill="{COLORS[k]}"/>'
            )
        if pts[3]:
            out.append(f'<text x="{left + pts[3] * scale + 4:.1f}" y="{y + 16}">{pts[3]:.2f}</text>')
    for k, name in enumerate(
        ("kernel (to Run /init)", "initrd (to the real root's systemd)", "real root (to multi-user)")
    ):
        lx = left + k * 170
        out.append(f'<rect x="{lx}" y="{h - 26}" width="12" height="8" fill="{COLORS[k]}"/>')
        out.append(f'<text x="{lx + 16}" y="{h - 18}">{name}</text>')
    out.append(f'<text x="{W / 2}" y="{h - 4}" text-anchor="middle" fill="#555">{subtitle}</text>')
    return "\n".join(out) + "\n</svg>\n"


def update_readme(block: str, series: str) -> bool:
    readme = bl.REPO / "README.md"
    begin, end = f"<!-- realroot:begin {series} -->", f"<!-- realroot:end {series} -->"
    text = readme.read_text(encoding="utf-8")
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        return False
    readme.write_text(pat.sub(lambda _m: f"{begin}\n{block.strip()}\n{end}", text, count=1), encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global DISK
    DISK = args.disk
    names = args.variants.split(",")
    variants = [v for v in VARIANTS if v.name in names]
    work = args.workdir or dr.cache_root() / f"work-{args.kernel}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src, _ = dr.make_root(dr.bench_spec(args.kernel, "initramfs-tools"), log=bl.say)
    tree = dr.copy_tree(src, work / "tree")
    dr.configure(tree)
    kvers = dr.tree_kernels(tree)
    if len(kvers) != 1:
        raise SystemExit(f"{tree}: expected one kernel, found {kvers}")
    kver = kvers[0]
    dr.install_bench_units(tree)
    bl.say(f"root ready: Debian {dr.SUITE}, kernel {kver} ({time.perf_counter() - t0:.0f} s)")
    built: list[Built] = []
    for v in variants:
        if v.tool == "initramfs-tools":
            built.append(build_initramfs_tools(tree, kver, work, args.build_repeats))
        elif v.tool == "dracut":
            dsrc, _ = dr.make_root(dr.bench_spec(args.kernel, "dracut"), log=bl.say)
            dtree = dr.copy_tree(dsrc, work / "tree-dracut")
            dr.configure(dtree)
            if dr.tree_kernels(dtree) != [kver] or pkg_version(dtree, kver) != pkg_version(tree, kver):
                raise SystemExit(
                    f"the dracut root's kernel differs from {kver} {pkg_version(tree, kver)}: "
                    f"remove {dsrc.parent} and run again"
                )
            built.append(build_dracut(dtree, kver, work, args.build_repeats))
        else:
            built.append(build_initbuild(v, tree, kver, work, args.build_repeats))
        b = built[-1]
        bl.say(
            f"built {v.name}: {b.initrd_bytes / 1e6:.2f} MB"
            + (f" + {b.stage2_bytes / 1e6:.2f} MB" if b.stage2_bytes else "")
            + f" in {b.build_seconds:.1f} s "
            + "; ".join(b.notes)
        )
    disk = dr.make_disk(tree, work / "root.img", align=PMEM_ALIGN)
    kernel = tree / "boot" / f"vmlinuz-{kver}"
    logs = work / "logs"
    for b in built:
        boot_variant(b, kernel, disk, args, logs)
    sums = [summary(b) for b in built]
    accel = "tcg" if args.no_icount else "tcg+icount (shift=0, sleep=off)"
    rev = bl.source_revision()
    note = (
        f"{args.boots} boot(s) per variant, Debian {dr.SUITE} ({kver}, "
        f"packages: {', '.join(dr.BENCH_PACKAGES)} "
        f"+ the generator), {accel}, machine pc, 2 GiB, 1 vCPU, root disk {DISK}, command line "
        f"`{APPEND}`; initbuild {rev}. Times are guest seconds since power-on (printk)."
    )
    md = table(sums) + "\n\n" + note + "\n\n" + "\n".join(goals(sums)) + "\n"
    out = args.out / args.kernel
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "kernel": kver,
        "initbuild_commit": rev,
        "accel": accel,
        "append": APPEND,
        "boots": args.boots,
        "packages": list(dr.BENCH_PACKAGES),
        "variants": sums,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "table.md").write_text(md)
    (out / "plot.svg").write_text(svg(sums, f"{kver}, {accel}, initbuild {rev}"))
    print(md)
    if args.update_readme:
        cmd = f"    .venv/bin/python qemu/realroot.py --kernel {args.kernel} --boots {args.boots}"
        cmd += " --update-readme"
        cmd += "\n\n"
        plot = f"![boot phases](qemu/results/realroot/{args.kernel}/plot.svg)\n\n"
        if not update_readme(cmd + md + "\n" + plot, args.kernel):
            bl.say(f"README.md has no realroot markers for {args.kernel}: not updated")
    bl.say(f"results in {out}; console logs in {logs}")
    return 0 if all(s["reached"] == s["boots"] for s in sums) else 1


def pkg_version(tree: Path, kver: str) -> str:
    """The installed version of linux-image-KVER (dpkg's status file)."""
    status = (tree / "var/lib/dpkg/status").read_text(errors="replace")
    m = re.search(rf"^Package: linux-image-{re.escape(kver)}\n(?:.+\n)*?Version: (\S+)", status, re.M)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())

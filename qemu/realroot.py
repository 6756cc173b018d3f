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
import realroot_report as rep

from initbuild.boot import debroot as dr
from initbuild.boot.harness import PMEM_ALIGN, VM, Disk, boot, qemu_opt_value
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
        path = qemu_opt_value(self.nvdimm)
        argv[argv.index("-m") + 1] += f",slots=2,maxmem={self.memory_mb + 8192}M"
        argv[argv.index("-machine") + 1] += ",nvdimm=on"
        return argv + [
            "-object", f"memory-backend-file,id=nv0,share=off,mem-path={path},size={size}",
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
    ap.add_argument(
        "--append",
        default="",
        metavar="ARGS",
        help="extra kernel command line for a diagnostic run, e.g. 'systemd.log_target=kmsg' "
        "(results then differ from the table's: not with --update-readme)",
    )
    ap.add_argument("--workdir", type=Path, help="trees, images, console logs (default: the cache dir)")
    ap.add_argument("--out", type=Path, default=bl.REPO / "qemu" / "results" / "realroot")
    ap.add_argument(
        "--render", action="store_true", help="only re-render table, plot and README from results.json"
    )
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
            append=f"{APPEND} {args.append}".strip(),
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        data = json.loads((args.out / args.kernel / "results.json").read_text())
        print(rep.render(data, args.out / args.kernel, args.kernel if args.update_readme else None))
        return 0
    if args.append and args.update_readme:
        print("realroot.py: --append is for diagnostic runs; it cannot --update-readme", file=sys.stderr)
        return 2
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
    data = {
        "kernel": kver,
        "initbuild_commit": bl.source_revision(),
        "accel": "tcg" if args.no_icount else "tcg+icount (shift=0, sleep=off)",
        "disk": DISK,
        "append": APPEND,
        "boots": args.boots,
        "packages": list(dr.BENCH_PACKAGES),
        "variants": sums,
    }
    out = args.out / args.kernel
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    print(rep.render(data, out, args.kernel if args.update_readme else None))
    bl.say(f"results in {out}; console logs in {logs}")
    return 0 if all(s["reached"] == s["boots"] for s in sums) else 1


def pkg_version(tree: Path, kver: str) -> str:
    """The installed version of linux-image-KVER (dpkg's status file)."""
    status = (tree / "var/lib/dpkg/status").read_text(errors="replace")
    m = re.search(rf"^Package: linux-image-{re.escape(kver)}\n(?:.+\n)*?Version: (\S+)", status, re.M)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())

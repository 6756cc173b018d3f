"""Shared machinery of the qemu/ benchmarks: build variants, make the real root, boot N times, measure.

Fairness (docs/boot.md §1): every variant boots the *same* QEMU machine -- same kernel, memory
and virtio-pmem disks (pmem0: the real root, ext4; pmem1: the stage-two EROFS) -- and differs only in
`-initrd`. Plain and initoverlayfs load the same storage drivers (the profile's boot drivers plus
virtio-pmem) and mount the same real root, whose /sbin/init prints the final marker.

Timing: the deterministic mode (default) runs TCG with `-icount shift=0,sleep=off` and a VM clock, so
guest time is a function of executed instructions; virtio-pmem keeps disk reads out of the host's timing;
the CPU has no RDRAND/RDSEED (bootharness) and the kernel runs `nokaslr`, so identical boots repeat to the
microsecond and every variant's kernel sits at the same address whatever the initrd's size.
The kernel runs `quiet` (a serial console under TCG is slow); after its marker the real root's init dumps
the kernel log lines we time (`Run /init`, the `initbuild:` steps) to the console.

Memory is read at two moments of the same boot: `initbuild.marker=1` makes stage two's /init report
MemAvailable as it starts (for a plain initramfs: all content unpacked in tmpfs; for initoverlayfs: the
overlay over EROFS mounted), and the real root's init reports it again (a plain initramfs has freed its
tmpfs by then, so only the first moment shows what it pins).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python3 qemu/<tool>.py` from a checkout
    sys.path.insert(0, str(REPO))

from initbuild import log  # noqa: E402
from initbuild.boot.disks import make_ext4, make_root_tree, pad_to  # noqa: E402
from initbuild.boot.harness import MACHINES, PMEM_ALIGN, VM, BootResult, Disk, boot, resolve_accel  # noqa: E402
from initbuild.build import BuildReport, build  # noqa: E402
from initbuild.config import load_profile  # noqa: E402
from initbuild.errors import ToolError  # noqa: E402  (also re-exported for the tools)
from initbuild.formats.compress import Compression  # noqa: E402
from initbuild.formats.cpio.writer import CpioOptions, write_initramfs  # noqa: E402
from initbuild.manifest import Entry, Kind, Manifest  # noqa: E402
from initbuild.profile import FileSpec, HostOnly, Mode, Profile  # noqa: E402
from initbuild.resolve.kernels import host_kernels  # noqa: E402
from initbuild.run import run  # noqa: E402
from initbuild.sysroot import Sysroot  # noqa: E402

PMEM_DRIVERS = ("virtio_pmem", "nd_pmem")
ROOT_MARKER = "real-root"
STAGE2_MARKER = "stage-two"  # printed by stage two's /init with initbuild.marker=1
FLOOR_MARKER = "floor"
DONE = "initbuild-bench: done"
ROOT_UUID = "6a1b2c3d-0000-4000-8000-00000000be01"
# After the marker (so it costs no measured time): the kernel log lines the benchmark parses.
DUMP_KLOG = f"dmesg | grep -e 'Run /init' -e 'initbuild' > /dev/console\necho '{DONE}' > /dev/console"
# nokaslr: the kernel's place must not depend on the initrd's size (a fair comparison), and with KASLR on
# identical boots of plain-lz4 at 500 MB spread 3.6-11 ms; initbuild.marker=1: the stage-two marker.
APPEND_COMMON = "quiet nokaslr initbuild.panic=poweroff initbuild.marker=1"
ROOT_ARGS = "root=/dev/pmem0 rootfstype=ext4"
STAGE1_ARGS = "initbuild.bootfs=/dev/pmem1 initbuild.attach=direct"
BAD_SIGNS = ("Initramfs unpacking failed",)  # a truncated rootfs that may still boot: a failure
# Kernel log lines as dumped by dmesg: the printk time has microseconds, /proc/uptime only 10 ms.
_KSTEP_RE = re.compile(r"\[\s*(\d+\.\d+)\] initbuild: \[[\d.?]+\] (.*)")
_KMARK_RE = re.compile(r"\[\s*(\d+\.\d+)\] initbuild-marker: (\S+) uptime=")


@dataclass(frozen=True)
class Variant:
    """One way to build the same content: initoverlayfs (stage one lz4) or a plain cpio."""

    name: str
    mode: Mode
    compression: str

    @property
    def overlay(self) -> bool:
        return self.mode is Mode.INITOVERLAYFS


OVERLAY = Variant("initoverlayfs", Mode.INITOVERLAYFS, "lz4")
PLAIN_LZ4 = Variant("plain-lz4", Mode.PLAIN, "lz4")
PLAIN_ZSTD = Variant("plain-zstd", Mode.PLAIN, "zstd")
VARIANTS = (OVERLAY, PLAIN_LZ4, PLAIN_ZSTD)


def kernel_version(requested: str | None = None) -> str:
    """The kernel to benchmark: the requested one, else the newest installed."""
    if requested:
        return requested
    found = host_kernels(Sysroot("/"))
    if not found:
        raise SystemExit("no kernel installed (/boot/vmlinuz-V with /lib/modules/V)")
    return found[-1]


def bench_profile(
    variant: Variant, kver: str, files: Sequence[FileSpec] = (), profile: Path | None = None
) -> Profile:
    """A profile (the shipped default when None), booting from virtio-pmem, with optional extra
    stage-two content.

    The only changes to it are what the benchmark machine needs (pmem boot drivers; generic images,
    hostonly: no, since the machine is QEMU's and not this host), the variant's mode and cpio
    compression, and the payload files.
    """
    base = load_profile(profile)
    return dataclasses.replace(
        base,
        kernel=kver,
        hostonly=HostOnly.NO,
        mode=variant.mode,
        compression=variant.compression,
        boot_drivers=tuple(dict.fromkeys(base.boot_drivers + PMEM_DRIVERS)),
        files=base.files + tuple(files),
    )


@dataclass
class Images:
    """A built variant: its initrd, its stage two (initoverlayfs only) and their sizes."""

    variant: Variant
    initrd: Path
    stage2: Path | None
    initrd_bytes: int
    stage2_bytes: int
    build_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "initrd_bytes": self.initrd_bytes,
            "stage2_bytes": self.stage2_bytes,
            "build_seconds": round(self.build_seconds, 3),
        }


def build_variant(
    variant: Variant, kver: str, outdir: Path, files: Sequence[FileSpec] = (), profile: Path | None = None
) -> Images:
    """Build one variant in-process; the stage-two image is padded for virtio-pmem afterwards."""
    t0 = time.perf_counter()
    report: BuildReport = build(bench_profile(variant, kver, files, profile), outdir, force=True)
    seconds = time.perf_counter() - t0
    initrd = outdir / report.output("initramfs").path
    stage2 = None
    stage2_bytes = 0
    if variant.overlay:
        stage2 = outdir / report.output("stage2").path
        stage2_bytes = report.output("stage2").size
        pad_to(stage2, PMEM_ALIGN)
    return Images(variant, initrd, stage2, initrd.stat().st_size, stage2_bytes, seconds)


def make_real_root(workdir: Path) -> Path:
    """The real root every variant reaches: an ext4 image on virtio-pmem (pmem0)."""
    tree = workdir / "realroot-tree"
    if tree.exists():
        shutil.rmtree(tree)
    make_root_tree(tree, marker=ROOT_MARKER, extra=DUMP_KLOG)
    image = make_ext4(tree, workdir / "realroot.img", label="realroot", uuid=ROOT_UUID, align=PMEM_ALIGN)
    return pad_to(image, PMEM_ALIGN)


FLOOR_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read -r up idle < /proc/uptime
mem=$(/bin/busybox sed -n 's/^MemAvailable: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo)
echo "<2>initbuild-marker: {marker} uptime=$up memavailable_kb=$mem" > /dev/kmsg
echo "initbuild-marker: {marker} uptime=$up memavailable_kb=$mem" > /dev/console
/bin/busybox dmesg | /bin/busybox grep -e 'Run /init' -e initbuild > /dev/console
echo '{done}' > /dev/console
/bin/busybox poweroff -f
"""


def make_floor_initrd(path: Path, busybox: str = "/bin/busybox") -> Path:
    """The kernel-only floor: a cpio with only busybox and an /init that prints a marker at once."""
    m = Manifest()
    m.add(Entry("/init", Kind.FILE, 0o755, data=FLOOR_INIT.format(marker=FLOOR_MARKER, done=DONE).encode()))
    for d in ("/bin", "/proc", "/dev"):
        m.add(Entry(d, Kind.DIR, 0o755))
    m.add(Entry("/dev/console", Kind.CHAR, 0o600, rdev=(5, 1)))
    m.add(Entry("/dev/kmsg", Kind.CHAR, 0o644, rdev=(1, 11)))
    m.add(Entry("/bin/busybox", Kind.FILE, 0o755, source=os.path.realpath(busybox)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write_initramfs(f, [(m, Compression.LZ4)], Sysroot("/"), CpioOptions(mtime=0))
    return path


# -- booting and measuring -------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The QEMU machine every variant of one comparison boots (only the initrd differs)."""

    kernel: Path
    disks: tuple[Disk, ...]
    memory_mb: int = 2048
    deterministic: bool = True
    timeout: float = 300.0
    machine_type: str = "pc"  # one of MACHINES

    def vm(self, initrd: Path, *, memory_mb: int | None = None, timeout: float | None = None) -> VM:
        return VM(
            kernel=self.kernel,
            initrd=initrd,
            append=f"{APPEND_COMMON} {ROOT_ARGS} {STAGE1_ARGS}",
            memory_mb=memory_mb or self.memory_mb,
            disks=self.disks,
            accel="tcg" if self.deterministic else "auto",
            machine=self.machine_type,
            icount=self.deterministic,
            timeout=timeout or self.timeout,
            expect=(DONE,),
        )

    def accel(self) -> str:
        return "tcg+icount" if self.deterministic else resolve_accel("auto", self.kernel)

    def describe(self) -> str:
        return f"{self.accel()}, machine {self.machine_type}"


def machine_from_args(kver: str, root: Path, stage2: Path, args: argparse.Namespace) -> Machine:
    """The machine of compare.py and bench.py (--memory, --no-icount, --timeout, --machine)."""
    return Machine(
        kernel=Path(f"/boot/vmlinuz-{kver}"),
        disks=pmem_disks(root, stage2),
        memory_mb=args.memory,
        deterministic=not args.no_icount,
        timeout=args.timeout,
        machine_type=args.machine,
    )


def add_machine_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--machine",
        choices=MACHINES,
        default="pc",
        help="QEMU machine type (default pc, QEMU's own default). q35 saves about 170 ms of every boot: "
        "on pc the guest evaluates an AML loop building the PCI interrupt table for each PCI device",
    )


def pmem_disks(root: Path, stage2: Path) -> tuple[Disk, ...]:
    return (Disk(root, kind="pmem"), Disk(stage2, kind="pmem"))


@dataclass
class Sample:
    """What one boot measured (guest seconds are kernel uptime; wall is host seconds)."""

    ok: bool
    log: str
    wall: float
    run_init: float | None = None
    stage1_start: float | None = None
    stage2_start: float | None = None
    userspace: float | None = None  # printk time of the final marker (microseconds)
    userspace_uptime: float | None = None  # /proc/uptime in the marker (10 ms resolution)
    memavailable_kb: int | None = None  # at the real root (a plain initramfs has freed its tmpfs)
    stage2_marker: float | None = None  # printk time of stage two's marker (initbuild.marker=1)
    stage2_memavailable_kb: int | None = None  # as stage two's /init starts: the initramfs's userspace
    error: str = ""
    steps: list[tuple[float, str]] = field(default_factory=list)

    def to_json(self, with_steps: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "steps"}
        d["wall"] = round(self.wall, 2)
        if with_steps:
            d["steps"] = [[t, s] for t, s in self.steps]
        return d


def first_step(steps: list[tuple[float, str]], prefix: str) -> float | None:
    return next((t for t, s in steps if s.startswith(prefix)), None)


def kernel_steps(console: str) -> list[tuple[float, str]]:
    """The `initbuild:` lines of the dumped kernel log, with their printk times, once each."""
    seen: dict[tuple[float, str], None] = {}
    for m in _KSTEP_RE.finditer(console):
        seen[(float(m.group(1)), m.group(2).strip())] = None
    return sorted(seen)


def marker_printk(console: str, marker: str) -> float | None:
    return next((float(m.group(1)) for m in _KMARK_RE.finditer(console) if m.group(2) == marker), None)


def sample_from(res: BootResult, marker: str, log_path: Path, *, need_stage2: bool = False) -> Sample:
    """Extract the timestamps of one boot; a boot without the marker (or with a bad sign) failed, and so
    does one without the stage-two marker when need_stage2 (the primary memory number would be lost)."""
    steps = kernel_steps(res.console)
    s = Sample(ok=False, log=str(log_path), wall=res.wall, steps=steps)
    s.run_init = res.run_init_time()
    s.stage1_start = first_step(steps, "stage one started")
    s.stage2_start = first_step(steps, "stage two started")
    bad = [b for b in BAD_SIGNS if b in res.console]
    if marker in res.markers:
        s.userspace_uptime, s.memavailable_kb = res.markers[marker]
        s.userspace = marker_printk(res.console, marker) or s.userspace_uptime
    if STAGE2_MARKER in res.markers:
        uptime, s.stage2_memavailable_kb = res.markers[STAGE2_MARKER]
        s.stage2_marker = marker_printk(res.console, STAGE2_MARKER) or uptime
    if need_stage2 and STAGE2_MARKER not in res.markers and not bad:
        bad = [f"no {STAGE2_MARKER} marker (does stage two's /init know initbuild.marker=1?)"]
    if not res.ok or marker not in res.markers or bad:
        s.error = "; ".join(bad) or res.explain().splitlines()[0]
        return s
    s.ok = True
    return s


def boot_once(
    vm: VM, marker: str, log_path: Path, *, quiet_failure: bool = False, need_stage2: bool = False
) -> Sample:
    res = boot(vm, log_path=log_path)
    s = sample_from(res, marker, log_path, need_stage2=need_stage2)
    if not s.ok and not quiet_failure:
        say(f"warning: boot failed ({s.error}); console log kept in {log_path}")
    return s


def boot_n(
    machine: Machine,
    initrd: Path,
    n: int,
    log_dir: Path,
    name: str,
    *,
    marker: str = ROOT_MARKER,
    progress: Callable[[str], None] | None = None,
) -> list[Sample]:
    """Boot the same machine n times; every console log is kept under log_dir. Boots to the real root
    must also report stage two's start (its MemAvailable is the benchmark's primary memory number)."""
    out = []
    for i in range(n):
        log_path = log_dir / f"{name}.{i + 1}.log"
        s = boot_once(machine.vm(initrd), marker, log_path, need_stage2=marker == ROOT_MARKER)
        out.append(s)
        if progress:
            state = f"{s.userspace:.3f} s guest" if s.ok and s.userspace else f"FAILED: {s.error}"
            progress(f"  {name} boot {i + 1}/{n}: {state}, {s.wall:.1f} s host")
    return out


@dataclass(frozen=True)
class Stat:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values))

    @property
    def spread(self) -> float:
        return self.max - self.min

    def to_json(self) -> dict[str, float]:
        return {"min": round(self.min, 6), "median": round(self.median, 6), "max": round(self.max, 6)}


METRICS = (
    "run_init",
    "stage1_start",
    "stage2_start",
    "userspace",
    "userspace_uptime",
    "memavailable_kb",
    "stage2_marker",
    "stage2_memavailable_kb",
    "wall",
)


def summarize(samples: Sequence[Sample]) -> dict[str, Stat | None]:
    """min/median/max of every metric over the successful boots."""
    good = [s for s in samples if s.ok]
    out: dict[str, Stat | None] = {}
    for m in METRICS:
        vals = [float(v) for s in good if (v := getattr(s, m)) is not None]
        out[m] = Stat.of(vals)
    return out


def stats_json(stats: dict[str, Stat | None]) -> dict[str, Any]:
    return {k: (v.to_json() if v else None) for k, v in stats.items()}


def step_deltas(steps: Sequence[tuple[float, str]], start: float | None) -> list[tuple[float, float, str]]:
    """(uptime, seconds since the previous step, message) for a per-step breakdown."""
    out = []
    prev = start if start is not None else (steps[0][0] if steps else 0.0)
    for t, msg in steps:
        out.append((t, t - prev, msg))
        prev = t
    return out


def median_of(stats: dict[str, Stat | None], metric: str) -> float | None:
    st = stats.get(metric)
    return st.median if st else None


def source_revision() -> str:
    """The commit the numbers belong to: `git rev-parse --short HEAD`, `+dirty` when the code that
    builds or measures (initbuild/, templates/, modules.d/, qemu/ but its results) differs from it."""
    paths = ["initbuild", "templates", "modules.d", "qemu", ":(exclude)qemu/results"]
    try:
        head = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]).stdout.decode().strip()
        diff = run(["git", "-C", REPO, "status", "--porcelain", "--", *paths])
    except ToolError:
        return "unknown"
    return head + ("+dirty" if diff.stdout.strip() else "")


def quiet_builds() -> None:
    """initbuild's own progress lines would drown the benchmark's: warnings and errors only."""
    log.set_level(log.QUIET)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

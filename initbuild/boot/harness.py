"""Boot images under QEMU and read what happened: used by the VM tests and the qemu/ benchmarks.

The guest decides success: a final init prints `initbuild-marker: NAME uptime=S memavailable_kb=N`
(templates/initlib.sh ib_marker). A boot says exactly what it waits for (`VM.expect`, e.g.
`expect=(marker("real-root"),)`): never "any marker", since a stage that reports itself early
(`initbuild.marker=1`) would end the boot before the line a test asserts. The harness waits for
every expected line, a kernel panic, or the host timeout, keeps the whole console log, and parses
boot times from it.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..run import find_tool, spawn

MARKER = "initbuild-marker:"
PANIC_PATTERNS = ("Kernel panic", "Attempted to kill init")
_MARKER_RE = re.compile(r"initbuild-marker: (\S+) uptime=([\d.]+) memavailable_kb=(\d+)")
_PRINTK_RE = re.compile(r"\[\s*(\d+\.\d+)\]")
_STEP_RE = re.compile(r"initbuild: \[([\d.]+)\] (.*)")
PMEM_ALIGN = 2 << 20  # virtio-pmem backing files must be sized to a 2 MiB multiple


# QEMU machine types the harness boots. On pc (i440fx) the guest's ACPI _PRT method builds the PCI
# interrupt routing table in an AML loop, and the kernel evaluates it for every PCI device it enables:
# loading virtio_pci with two virtio-pmem devices takes 185 ms of guest time there, 13 ms on q35.
MACHINES = ("pc", "q35")


def marker(name: str) -> str:
    """The exact console text of the marker NAME (what a boot that asserts it must wait for)."""
    return f"{MARKER} {name} uptime="


@dataclass(frozen=True)
class Disk:
    path: Path
    kind: str = "virtio"  # virtio (virtio-blk) | pmem (virtio-pmem, deterministic under icount)
    readonly: bool = True


@dataclass(frozen=True)
class VM:
    kernel: Path
    initrd: Path | None = None
    append: str = ""
    memory_mb: int = 512
    disks: tuple[Disk, ...] = ()
    accel: str = "auto"  # auto | kvm | tcg
    machine: str = "pc"  # QEMU machine type: pc (i440fx, QEMU's default) | q35 (PCIe; see MACHINES)
    icount: bool = False  # deterministic guest time (-icount shift=0,sleep=off, rtc clock=vm)
    timeout: float = 120.0  # host seconds
    expect: tuple[str, ...] = ()  # stop when every one of these substrings was seen (required)
    devices: tuple[str, ...] = ()  # more -device specs, e.g. "virtio-rng-pci"
    cpu: str | None = None  # -cpu model; None: host under KVM, max under TCG (see _cpu_model)
    # UEFI firmware (-bios, e.g. /usr/share/ovmf/OVMF.fd): it starts `kernel` as an EFI program, such
    # as a Unified Kernel Image; then, unless `append` is given, no -append: the UKI's .cmdline rules
    bios: Path | None = None

    def argv(self) -> list[str]:
        qemu = find_tool(
            "qemu-system-x86_64", reason="boot images under QEMU", hint="apt-get install qemu-system-x86"
        )
        accel = resolve_accel(self.accel, self.kernel)
        deterministic = self.icount and accel == "tcg"
        mem = f"{self.memory_mb}"
        pmem = [d for d in self.disks if d.kind == "pmem"]
        if pmem:
            mem += f",slots={len(pmem) + 1},maxmem={self.memory_mb + 8192}M"
        argv = [
            qemu,
            "-nodefaults",
            "-no-reboot",
            "-display", "none",
            "-serial", "stdio",
            "-monitor", "none",
            "-machine", self.machine,
            "-accel", accel,
            "-cpu", self.cpu or _cpu_model(accel, deterministic),
            "-smp", "1",
            "-m", mem,
            "-kernel", str(self.kernel),
        ]  # fmt: skip
        if self.bios is not None:
            argv += ["-bios", str(self.bios)]
        if self.initrd is not None:
            argv += ["-initrd", str(self.initrd)]
        if self.bios is None or self.append:
            argv += ["-append", f"console=ttyS0 panic=-1 {self.append}".strip()]
        if deterministic:
            argv += ["-icount", "shift=0,sleep=off", "-rtc", "base=2024-01-01T00:00:00,clock=vm"]
        for i, d in enumerate(self.disks):
            if d.kind == "pmem":
                size = os.path.getsize(d.path)
                if size % PMEM_ALIGN:
                    raise ValueError(f"{d.path}: pmem backing file size {size} is not a multiple of 2 MiB")
                path = qemu_opt_value(d.path)
                argv += [
                    "-object", f"memory-backend-file,id=pm{i},share=off,mem-path={path},size={size}",
                    "-device", f"virtio-pmem-pci,memdev=pm{i},id=pmem{i}",
                ]  # fmt: skip
            else:
                ro = ",readonly=on" if d.readonly else ""
                argv += ["-drive", f"file={qemu_opt_value(d.path)},format=raw,if=virtio,cache=unsafe{ro}"]
        for dev in self.devices:
            argv += ["-device", dev]
        return argv


def qemu_opt_value(value: object) -> str:
    """A value inside a QEMU `key=value,...` option: a comma there is written twice (QEMU's escape),
    so a disk under a path such as /tmp/a,b is not cut into a bogus second option."""
    return str(value).replace(",", ",,")


def _cpu_model(accel: str, deterministic: bool) -> str:
    """The guest CPU. Under icount, RDRAND/RDSEED are hidden: QEMU answers them from the host's entropy,
    so the kernel's KASLR offset, hash seeds and freelist order changed from boot to boot (plain-lz4 at
    500 MB spread 4-11 ms and MemAvailable 50 MiB); without them identical boots repeat to the microsecond.
    """
    if accel != "tcg":
        return "host"
    return "max,-rdrand,-rdseed" if deterministic else "max"


@dataclass
class BootResult:
    argv: list[str]
    console: str
    returncode: int | None
    wall: float  # host seconds
    timed_out: bool
    panicked: bool
    markers: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (uptime s, MemAvailable kB)

    @property
    def ok(self) -> bool:
        return bool(self.markers) and not self.panicked and not self.timed_out

    def command(self) -> str:
        return shlex.join(self.argv)

    def explain(self) -> str:
        tail = "\n".join(self.console.splitlines()[-40:])
        state = "timed out" if self.timed_out else f"exit {self.returncode}"
        return (
            f"qemu {state} after {self.wall:.1f} s\ncommand: {self.command()}\n"
            f"--- console (last 40 lines) ---\n{tail}"
        )

    def run_init_time(self) -> float | None:
        """printk time of 'Run /init as init process' (the kernel handing over to userspace)."""
        for line in self.console.splitlines():
            if "Run /init as init process" in line and (m := _PRINTK_RE.search(line)):
                return float(m.group(1))
        return None

    def steps(self) -> list[tuple[float, str]]:
        """The `initbuild: [uptime] message` lines /init logged, in order."""
        out = []
        for line in self.console.splitlines():
            if m := _STEP_RE.search(line):
                out.append((float(m.group(1)), m.group(2).strip()))
        return out


def boot(vm: VM, *, log_path: Path | None = None) -> BootResult:
    """Run the VM until every `expect` substring was seen (then stop it), it exits, or timeout."""
    if not vm.expect:
        raise ValueError("VM.expect is empty: say which console line ends the boot, e.g. marker('real-root')")
    argv = vm.argv()
    start = time.monotonic()
    proc = spawn(argv)
    chunks: list[str] = []
    done = threading.Event()

    def reader() -> None:
        out = proc.stdout
        assert isinstance(out, io.BufferedReader)  # Popen's default buffering: read1 returns what is there
        buf = ""
        for raw in iter(lambda: out.read1(4096), b""):
            text = raw.decode("utf-8", errors="replace")
            chunks.append(text)
            buf = (buf + text)[-200000:]
            if (
                all(e in buf for e in vm.expect)
                and _complete(buf, vm.expect)
                or any(p in buf for p in PANIC_PATTERNS)
            ):
                done.set()
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    finished = done.wait(vm.timeout)
    timed_out = not finished
    if proc.poll() is None:
        if finished:
            time.sleep(0.2)  # let the guest flush the rest of the line
        proc.kill()
    proc.wait()
    t.join(5)
    wall = time.monotonic() - start
    console = "".join(chunks)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"# {shlex.join(argv)}\n{console}", encoding="utf-8")
    markers = {m.group(1): (float(m.group(2)), int(m.group(3))) for m in _MARKER_RE.finditer(console)}
    panicked = any(p in console for p in PANIC_PATTERNS)
    return BootResult(argv, console, proc.returncode, wall, timed_out, panicked, markers)


def _complete(buf: str, expect: tuple[str, ...]) -> bool:
    """An expected substring counts once the line holding it has ended."""
    for e in expect:
        i = buf.rfind(e)
        if i < 0 or "\n" not in buf[i:]:
            return False
    return True


@functools.cache
def kvm_works(kernel: Path) -> bool:
    """/dev/kvm can exist while guests hang (docs/boot.md §1.6): probe with a short boot."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    vm = VM(
        kernel=kernel,
        accel="kvm",
        append="initbuild.probe",
        timeout=15,
        expect=("VFS: Unable to mount root", "Kernel panic"),
    )
    try:
        res = boot(vm)
    except OSError:
        return False
    return "Linux version" in res.console and ("Kernel panic" in res.console or "VFS" in res.console)


def resolve_accel(accel: str, kernel: Path) -> str:
    if accel != "auto":
        return accel
    forced = os.environ.get("INITBUILD_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    return "kvm" if kvm_works(kernel) else "tcg"

"""The QEMU harness's command line (no boot: tests/vm boots)."""

from __future__ import annotations

import re
from pathlib import Path

from initbuild.boot.harness import PMEM_ALIGN, VM, Disk, qemu_opt_value


def qemu_split(value: str) -> dict[str, str]:
    """Split a `key=value,...` option the way QEMU's option parser does: `,,` is a literal comma."""
    parts = [p.replace(",,", ",") for p in re.split(r"(?<!,),(?!,)", value)]
    return dict(p.split("=", 1) for p in parts if "=" in p)


def option(argv: list[str], flag: str, prefix: str) -> str:
    return next(v for f, v in zip(argv, argv[1:], strict=False) if f == flag and v.startswith(prefix))


def test_disk_paths_with_commas_survive_qemu_option_parsing(tmp_path: Path) -> None:
    d = tmp_path / "run,1"
    d.mkdir()
    blk, pmem = d / "a,b.img", d / "c,,d.img"
    blk.write_bytes(b"\0" * 512)
    pmem.write_bytes(b"\0" * PMEM_ALIGN)
    vm = VM(kernel=tmp_path / "vmlinuz", accel="tcg", disks=(Disk(blk), Disk(pmem, kind="pmem")))
    argv = vm.argv()
    assert qemu_split(option(argv, "-drive", "file="))["file"] == str(blk)
    assert qemu_split(option(argv, "-object", "memory-backend-file"))["mem-path"] == str(pmem)


def test_qemu_opt_value_plain_paths_unchanged() -> None:
    assert qemu_opt_value(Path("/var/tmp/x.img")) == "/var/tmp/x.img"

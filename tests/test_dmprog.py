"""The device-mapper ioctl program (initbuild/formats/dmprog.py) against oracles: `objdump` for the
machine code, pyelftools for the ELF, the kernel's dm-ioctl.h numbers, and the host kernel, which runs
it. The device-mapper requests themselves are exercised by the boots of tests/vm/test_verity.py (this
sandbox's kernel has no device-mapper)."""

from __future__ import annotations

import errno
import re
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from initbuild.formats import dmprog, mountprog
from initbuild.run import have_tool


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dmprog") / "dm-ioctl"
    path.write_bytes(dmprog.build())
    path.chmod(0o755)
    return path


def test_reproducible_small_and_static(prog: Path) -> None:
    assert dmprog.build() == dmprog.build() and len(dmprog.build()) < 256
    with open(prog, "rb") as f:
        elf = ELFFile(f)
        assert elf.header.e_machine == "EM_X86_64" and elf.header.e_type == "ET_EXEC"
        assert [s.header.p_type for s in elf.iter_segments()] == ["PT_LOAD"]  # no interpreter, no libc
    assert dmprog.build().endswith(b"/dev/mapper/control\0")
    with pytest.raises(mountprog.UnsupportedArch, match="x86-64 only, not aarch64"):
        dmprog.build(mountprog.EM_AARCH64)


@pytest.mark.skipif(not have_tool("objdump"), reason="binutils not installed")
def test_objdump_disassembles_the_listing(prog: Path) -> None:
    end = dmprog.BASE + dmprog.CODE_SIZE  # the control path's string follows the code
    cp = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel",
         f"--adjust-vma={mountprog.LOAD_ADDRESS:#x}", f"--start-address={dmprog.BASE:#x}",
         f"--stop-address={end:#x}", str(prog)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = []
    for line in cp.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(.*)$", line)
        if m:
            got.append((int(m[1], 16), bytes.fromhex(m[2]), " ".join(m[3].split())))
    assert got == [(ln.address, ln.code, ln.asm) for ln in dmprog.lines()]
    assert "; SYS_ioctl" in dmprog.listing() and ".string '/dev/mapper/control'" in dmprog.listing()


def test_requests_follow_dm_ioctl_h() -> None:
    # _IOWR(0xfd, nr, struct dm_ioctl): the values libdevmapper sends
    assert (dmprog.DM_DEV_CREATE, dmprog.DM_DEV_SUSPEND, dmprog.DM_TABLE_LOAD) == (
        0xC138FD03, 0xC138FD06, 0xC138FD09,
    )  # fmt: skip
    reqs = dmprog.requests("initbuild-stage2", 3432)
    assert set(reqs) == {"create", "load", "resume"}
    number, _pad = struct.unpack_from("<II", reqs["load"])
    assert number == dmprog.DM_TABLE_LOAD
    fields = struct.unpack_from(dmprog.DM_IOCTL_FORMAT, reqs["load"], 8)
    version, data_start, target_count, flags, name = fields[:3], fields[4], fields[5], fields[7], fields[11]
    assert version == (4, 0, 0) and data_start == 312 and target_count == 1
    assert flags == dmprog.DM_READONLY_FLAG and name.rstrip(b"\0") == b"initbuild-stage2"
    start, length, _status, _next, target = struct.unpack_from(
        dmprog.DM_TARGET_SPEC_FORMAT, reqs["load"], 8 + 312
    )
    assert (start, length, target.rstrip(b"\0")) == (0, 3432, b"verity")
    assert len(reqs["load"]) == 8 + 312 + 40  # stage one appends the table's parameters
    assert len(reqs["create"]) == len(reqs["resume"]) == 8 + 312
    with pytest.raises(ValueError):
        dmprog.DmIoctl("a/b").pack()


@pytest.mark.parametrize(
    ("args", "status"),
    [
        ([], mountprog.USAGE_STATUS),
        (["a", "b"], mountprog.USAGE_STATUS),
        (["/nonexistent/request"], errno.ENOENT),
    ],
)
def test_exit_status_is_the_errno(prog: Path, args: list[str], status: int) -> None:
    cp = subprocess.run([str(prog), *args], capture_output=True, check=False)
    assert cp.returncode == status and cp.stdout == cp.stderr == b""


def test_without_device_mapper_the_control_node_is_missing(prog: Path, tmp_path: Path) -> None:
    if Path("/dev/mapper/control").exists():
        pytest.skip("this host has device-mapper: the request would reach it")
    req = tmp_path / "create"
    req.write_bytes(dmprog.requests("initbuild-test", 8)["create"])
    cp = subprocess.run([str(prog), str(req)], capture_output=True, check=False)
    assert cp.returncode == errno.ENOENT  # open("/dev/mapper/control") after reading the request

"""The file-backed mount program (initbuild/formats/mountprog.py) against real oracles: pyelftools and
`readelf` for the ELF, `objdump` for the machine code, and the host kernel, which runs it (in a private
mount namespace) to mount a tmpfs and an EROFS image straight from a regular file."""

from __future__ import annotations

import errno
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from initbuild import build as ib_build
from initbuild.config import load_profile_text
from initbuild.errors import ConfigError
from initbuild.formats import mountprog
from initbuild.formats.inspect import find, open_image
from initbuild.formats.mountprog import CODE_OFFSET, LOAD_ADDRESS, PROGRAM, assemble, build, listing

REPO = Path(__file__).resolve().parent.parent
# the installed kernels (a /boot/vmlinuz-V with /lib/modules/V), as the build's kernel: auto finds them
KVERS = sorted(
    p.name.removeprefix("vmlinuz-")
    for p in Path("/boot").glob("vmlinuz-*")
    if Path("/lib/modules", p.name.removeprefix("vmlinuz-")).is_dir()
)
MOUNT_FILE = "/usr/lib/initbuild/mount-file"


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mountprog") / "mount-file"
    path.write_bytes(build())
    path.chmod(0o755)
    return path


def test_reproducible_and_small() -> None:
    assert build() == build()
    assert len(build()) == CODE_OFFSET + sum(len(i.code) for i in PROGRAM) < 256


def test_other_architectures_are_a_clear_error() -> None:
    with pytest.raises(mountprog.UnsupportedArch, match="x86-64 only, not aarch64"):
        build(mountprog.EM_AARCH64)


def test_elf_machine_reads_the_header() -> None:
    assert mountprog.elf_machine(build()) == mountprog.EM_X86_64
    assert mountprog.elf_machine(Path("/bin/sh").read_bytes()[:64]) == mountprog.EM_X86_64
    assert mountprog.elf_machine(b"#!/bin/sh\n" + bytes(20)) is None


def test_pyelftools_sees_a_static_x86_64_executable(prog: Path) -> None:
    with open(prog, "rb") as f:
        elf = ELFFile(f)
        h = elf.header
        assert elf.elfclass == 64 and elf.little_endian
        assert h.e_type == "ET_EXEC" and h.e_machine == "EM_X86_64"
        assert h.e_ehsize == 64 and h.e_phentsize == 56 and h.e_phnum == 1 and h.e_shnum == 0
        segments = list(elf.iter_segments())
        assert [s.header.p_type for s in segments] == ["PT_LOAD"]  # no PT_INTERP, no PT_DYNAMIC
        load = segments[0].header
        assert load.p_offset == 0 and load.p_vaddr == LOAD_ADDRESS and load.p_align == 0x1000
        assert load.p_filesz == load.p_memsz == prog.stat().st_size
        assert load.p_flags == mountprog.PF_R | mountprog.PF_X  # not writable
        assert load.p_vaddr <= h.e_entry < load.p_vaddr + load.p_filesz
        assert h.e_entry == LOAD_ADDRESS + CODE_OFFSET
        assert elf.get_section_by_name(".dynamic") is None


@pytest.mark.skipif(not have_tool("readelf"), reason="binutils not installed")
def test_readelf_agrees(prog: Path) -> None:
    cp = subprocess.run(["readelf", "-W", "-h", "-l", str(prog)], capture_output=True, text=True, check=True)
    assert cp.stderr == "", cp.stderr  # no warnings about the headers
    out = cp.stdout
    assert re.search(r"Type:\s+EXEC \(Executable file\)", out)
    assert re.search(r"Machine:\s+Advanced Micro Devices X86-64", out)
    assert re.search(rf"Entry point address:\s+0x{LOAD_ADDRESS + CODE_OFFSET:x}\b", out)
    loads = re.findall(r"^\s+LOAD\s+(0x[0-9a-f]+) (0x[0-9a-f]+) 0x[0-9a-f]+ (0x[0-9a-f]+) .* R E ", out, re.M)
    assert loads == [("0x000000", f"0x{LOAD_ADDRESS:016x}", f"0x{prog.stat().st_size:06x}")], out
    assert "INTERP" not in out and "DYNAMIC" not in out


def _objdump(prog: Path) -> list[tuple[int, bytes, str]]:
    """objdump's disassembly of a program's code: (address, bytes, Intel syntax) per instruction."""
    entry = LOAD_ADDRESS + CODE_OFFSET
    cp = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel"]
        + [f"--adjust-vma={LOAD_ADDRESS:#x}", f"--start-address={entry:#x}", str(prog)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = []
    for line in cp.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(.*)$", line)
        if m:
            got.append((int(m[1], 16), bytes.fromhex(m[2]), " ".join(m[3].split())))
    return got


@pytest.mark.skipif(not have_tool("objdump"), reason="binutils not installed")
def test_objdump_disassembles_the_listing(prog: Path) -> None:
    got = _objdump(prog)
    want = [(ln.address, ln.code, ln.asm) for ln in assemble()]
    # the mnemonics first (the clearest failure), then operands, addresses and instruction boundaries
    assert [g[2].split()[0] for g in got] == [w[2].split()[0] for w in want]
    assert got == want
    assert all(ln.comment for ln in assemble())
    text = listing()
    assert text.count("\n") == len(PROGRAM) and "syscall" in text and "; SYS_mount" in text


def _run_in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _can_unshare() -> bool:
    if not have_tool("unshare"):
        return False
    return _run_in_namespace("true").returncode == 0


needs_ns = pytest.mark.skipif(
    not _can_unshare(), reason="needs root and unshare -m (a private mount namespace)"
)


@needs_ns
def test_mounts_a_tmpfs_read_only(prog: Path, tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    cp = _run_in_namespace(
        f'{prog} tmpfs {target} tmpfs size=64k,mode=0700; echo "rc=$?"; cat /proc/self/mountinfo'
    )
    assert "rc=0" in cp.stdout, cp.stdout + cp.stderr
    line = next(ln for ln in cp.stdout.splitlines() if f" {target} " in ln)
    fields = line.split()
    assert fields[5].split(",")[0] == "ro"  # MS_RDONLY
    assert fields[-3:-1] == ["tmpfs", "tmpfs"] and "size=64k" in fields[-1], line  # DATA was passed
    # the namespace was private: nothing is left mounted outside it
    assert f" {target} " not in Path("/proc/self/mountinfo").read_text()


@needs_ns
@pytest.mark.parametrize(
    ("args", "status"),
    [
        ("tmpfs /nonexistent/initbuild-target tmpfs", errno.ENOENT),
        ("{dir} {target} nosuchfs", errno.ENODEV),
        ("{dir} {target} erofs", errno.ENOTBLK),  # a directory is neither a block device nor a file
        ("tmpfs {target}", mountprog.USAGE_STATUS),
        ("", mountprog.USAGE_STATUS),
    ],
)
def test_exit_status_is_the_errno(prog: Path, tmp_path: Path, args: str, status: int) -> None:
    if "erofs" in args and not _kernel_has("erofs"):
        pytest.skip("the host kernel has no erofs")
    target = tmp_path / "mnt"
    target.mkdir()
    cp = _run_in_namespace(f"{prog} {args.format(dir=tmp_path, target=target)}")
    assert cp.returncode == status, cp.stderr
    assert cp.stdout == cp.stderr == ""  # the program writes nothing


def _kernel_has(fstype: str) -> bool:
    if have_tool("modprobe"):
        subprocess.run(["modprobe", "-q", fstype], capture_output=True, check=False)
    return any(line.split()[-1] == fstype for line in Path("/proc/filesystems").read_text().splitlines())


@needs_ns
@pytest.mark.skipif(not have_tool("mkfs.erofs"), reason="erofs-utils not installed")
def test_mounts_an_erofs_image_from_a_regular_file(prog: Path, tmp_path: Path) -> None:
    if not _kernel_has("erofs"):
        pytest.skip("the host kernel has no erofs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("stage two says hello\n")
    image = tmp_path / "stage2.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(src)], check=True, capture_output=True)
    target = tmp_path / "lower"
    target.mkdir()
    loops_before = _loop_backing_files()
    cp = _run_in_namespace(
        f'{prog} {image} {target} erofs; echo "rc=$?"; cat {target}/hello.txt; cat /proc/self/mountinfo; '
        'for f in /sys/block/loop*/loop/backing_file; do [ -r "$f" ] && echo "loop: $(cat $f)"; done'
    )
    out = cp.stdout
    if "rc=15" in out:
        pytest.skip("the host kernel mounts EROFS only from block devices (no EROFS_FS_BACKED_BY_FILE)")
    assert "rc=0" in out and "stage two says hello" in out, out + cp.stderr
    line = next(ln for ln in out.splitlines() if f" {target} " in ln)
    fields = line.split()
    # an anonymous device (major 0), the image file itself as the source: no loop device in between
    assert fields[2].startswith("0:") and fields[-3:-1] == ["erofs", str(image)], line
    assert fields[5].split(",")[0] == "ro"
    assert str(image) not in "\n".join(ln for ln in out.splitlines() if ln.startswith("loop: "))
    assert _loop_backing_files() == loops_before


def _loop_backing_files() -> set[str]:
    out = set()
    for f in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            out.add(f.read_text().strip())
        except OSError:
            pass
    return out


def test_init_names_every_errno_it_maps() -> None:
    """initlib.sh's ib_errno names agree with the kernel's numbers (Python's errno module)."""
    lib = (REPO / "templates" / "initlib.sh").read_text()
    body = lib[lib.index("ib_errno() {") : lib.index("ib_mount_file() {")]
    pairs = re.findall(r"^\s+(\d+)\) IB_ERRNO=\"(E[A-Z]+) ", body, re.M)
    assert len(pairs) >= 15
    for number, name in pairs:
        assert getattr(errno, name) == int(number), (number, name)
    names = {name for _, name in pairs}
    assert {"ENOENT", "ENOTBLK", "ENODEV", "EINVAL", "EIO", "EACCES", "EBUSY", "ENXIO", "EUCLEAN"} <= names
    assert f"{mountprog.USAGE_STATUS})" in body
    # the path /init runs is the one the module installs
    module = (REPO / "modules.d" / "20initoverlayfs" / "module.py").read_text()
    path = re.search(r'^MOUNT_FILE = "([^"]+)"', module, re.M)
    assert path and f"IB_MOUNT_FILE={path[1]}\n" in lib


# -- modules.d/20initoverlayfs: what a build for each installed kernel ships ------------------------


def _file_backed(kver: str) -> bool:
    """The oracle: the kernel's own config (CONFIG_EROFS_FS_BACKED_BY_FILE=y)."""
    config = Path(f"/boot/config-{kver}")
    return config.is_file() and "CONFIG_EROFS_FS_BACKED_BY_FILE=y" in config.read_text().splitlines()


def _build_stage_one(tmp_path: Path, kver: str, overlay: str = "") -> tuple[dict[str, bytes | None], str]:
    text = f"mode: initoverlayfs\nkernel: {kver}\nhostonly: no\n{overlay}"
    ib_build.build(load_profile_text(text, str(tmp_path / "p.yaml")), tmp_path / "out", force=True)
    image = open_image(tmp_path / "out" / f"initramfs-{kver}.img")
    members = {m.path: m for m in image.members()}
    helper = image.read(find(image, MOUNT_FILE)) if MOUNT_FILE in members else None
    names = {p.rsplit("/", 1)[-1]: None for p in members}
    conf = (tmp_path / "out" / "initoverlayfs.conf").read_text()
    return {**names, MOUNT_FILE: helper}, conf


def _is_loop_ko(name: str) -> bool:
    return name == "loop.ko" or name.startswith("loop.ko.")


@pytest.mark.parametrize("kver", KVERS or [pytest.param(None, marks=pytest.mark.skip(reason="no kernel"))])
def test_stage_one_gets_the_program_or_loop_as_the_kernel_allows(tmp_path: Path, kver: str) -> None:
    files, conf = _build_stage_one(tmp_path, kver)
    attach = [line.split()[1] for line in conf.splitlines() if line.startswith("attach ")]
    if _file_backed(kver):
        assert files[MOUNT_FILE] == build() and attach == ["file"], conf
        assert not any(_is_loop_ko(n) for n in files)
    else:
        assert files[MOUNT_FILE] is None and attach == ["loop"], conf
        assert any(_is_loop_ko(n) for n in files)


@pytest.mark.parametrize("kver", KVERS or [pytest.param(None, marks=pytest.mark.skip(reason="no kernel"))])
def test_profile_attach_loop_and_file(tmp_path: Path, kver: str) -> None:
    files, conf = _build_stage_one(tmp_path / "loop", kver, "overlay: {attach: loop}\n")
    assert files[MOUNT_FILE] is None and "\nattach loop\n" in conf
    assert any(_is_loop_ko(n) for n in files)
    if _file_backed(kver):
        files, conf = _build_stage_one(tmp_path / "file", kver, "overlay: {attach: file}\n")
        assert files[MOUNT_FILE] == build() and "\nattach file\n" in conf
    else:
        with pytest.raises(ConfigError, match="overlay.attach: file, but kernel .* cannot mount EROFS"):
            _build_stage_one(tmp_path / "file", kver, "overlay: {attach: file}\n")


# -- pivot-root (mountprog.PIVOT_PROGRAM): stage two's way out of the overlay root ------------------


@pytest.fixture(scope="module")
def pivot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pivot") / "pivot-root"
    path.write_bytes(build(program=mountprog.PIVOT_PROGRAM))
    path.chmod(0o755)
    return path


@pytest.mark.skipif(not have_tool("objdump"), reason="binutils not installed")
def test_objdump_disassembles_the_pivot_listing(pivot: Path) -> None:
    got = _objdump(pivot)
    assert got == [(ln.address, ln.code, ln.asm) for ln in assemble(mountprog.PIVOT_PROGRAM)]
    assert len(pivot.read_bytes()) < 256


def _static_busybox() -> str | None:
    path = shutil.which("busybox")
    if path is None:
        return None
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return None if any(s.header.p_type == "PT_INTERP" for s in elf.iter_segments()) else path


@needs_ns
@pytest.mark.skipif(_static_busybox() is None, reason="needs a static busybox to run in the new root")
def test_pivot_root_leaves_only_the_new_root(pivot: Path, tmp_path: Path) -> None:
    """The kernel runs it: the calling shell's root moves to the new root, and the old root (the host's /
    in this private namespace, with every mount under it) is detached: only the new root and what is
    mounted after remain."""
    new = tmp_path / "new"
    new.mkdir()
    cp = _run_in_namespace(
        f"mount -t tmpfs newroot {new} && cp {_static_busybox()} {new}/busybox && mkdir {new}/proc && "
        f'{pivot} {new}; echo "rc=$?"; /busybox mount -t proc proc /proc; /busybox cat /proc/self/mountinfo'
    )
    assert "rc=0" in cp.stdout, cp.stdout + cp.stderr
    mounts = [ln.split() for ln in cp.stdout.splitlines() if re.match(r"\d+ \d+ ", ln)]
    assert [(m[4], m[-3]) for m in mounts] == [("/", "tmpfs"), ("/proc", "proc")], cp.stdout


@needs_ns
@pytest.mark.parametrize(
    ("args", "status"),
    [("/nonexistent/initbuild-root", errno.ENOENT), ("", mountprog.USAGE_STATUS)],
)
def test_pivot_root_exit_status(pivot: Path, args: str, status: int) -> None:
    cp = _run_in_namespace(f"{pivot} {args}; echo rc=$?; cat /proc/self/mountinfo | wc -l")
    assert f"rc={status}" in cp.stdout, cp.stdout + cp.stderr
    assert int(cp.stdout.split()[-1]) > 1  # nothing was detached


@needs_ns
def test_pivot_root_refuses_a_directory_that_is_no_mount(pivot: Path, tmp_path: Path) -> None:
    """pivot_root(2) wants a mount point: the status is its errno, below 128 (nothing changed)."""
    cp = _run_in_namespace(f"{pivot} {tmp_path}; echo rc=$?")
    rc = int(cp.stdout.split("rc=")[1].split()[0])
    assert 0 < rc < mountprog.UMOUNT_FAILED, cp.stdout

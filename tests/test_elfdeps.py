"""ElfResolver: the host's ldd as the oracle, plus a fake sysroot built from tests/data/elf sources."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from initbuild import run
from initbuild.errors import ResolveError
from initbuild.resolve.elf import ElfResolver
from initbuild.sysroot import Sysroot

DATA = Path(__file__).parent / "data" / "elf"

# Programs an initoverlayfs image typically carries; only the ones installed on the host are compared.
HOST_PROGRAMS = [
    "bash", "sh", "mount", "umount", "busybox", "python3", "ls", "cp", "tar", "gzip", "ssh", "systemctl",
    "udevadm", "kmod", "losetup", "blkid", "switch_root", "sfdisk", "e2fsck", "mkfs.ext4", "qemu-img",
    "find", "grep", "sed", "git", "curl", "openssl", "zstd", "xz", "cpio", "mkfs.erofs", "dmesg", "perl",
    "gcc", "ldconfig", "modprobe", "fsck", "findmnt", "lsblk", "sulogin",
]  # fmt: skip
MIN_COMPARED = 15


def ldd_closure(binary: str) -> set[str]:
    """Real paths of everything ldd lists for `binary` (the vDSO has no file and is left out)."""
    cp = run.run(["ldd", binary], check=False)
    out = cp.stdout.decode()
    if "not a dynamic executable" in out + cp.stderr.decode() or "statically linked" in out:
        return set()
    assert cp.returncode == 0, cp.stderr
    paths = set()
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0]
            assert target != "not found", f"ldd: {line}"
        else:
            target = line.split(" (", 1)[0]
        if target.startswith("/"):
            paths.add(os.path.realpath(target))
    return paths


@pytest.mark.skipif(not run.have_tool("ldd"), reason="ldd not installed")
def test_closure_matches_ldd_for_host_binaries() -> None:
    resolver = ElfResolver(Sysroot("/"))
    compared = []
    for name in HOST_PROGRAMS:
        found = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if found is None:
            continue
        ours = {n.real for n in resolver.needed_with_links(found)}
        assert ours == ldd_closure(found), found
        assert ours == {os.path.realpath(p) for p in resolver.needed(found)}
        compared.append(name)
    assert len(compared) >= MIN_COMPARED, f"only {compared} installed"


def test_static_binary_needs_nothing() -> None:
    busybox = shutil.which("busybox")
    if busybox is None or ldd_closure(busybox):
        pytest.skip("no static busybox on this host")
    assert ElfResolver(Sysroot("/")).needed(busybox) == []


def test_script_interpreter_missing(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("#!/nonexistent/interp\n")
    with pytest.raises(ResolveError, match=r"^interpreter /nonexistent/interp of /s not found"):
        ElfResolver(Sysroot(tmp_path)).needed("/s")


def test_corrupt_elf_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x7fELF" + b"\x02\x01\x01" + b"\xff" * 9 + b"\x00" * 10)
    resolver = ElfResolver(Sysroot(tmp_path))
    assert resolver.is_elf("/bad")
    with pytest.raises(ResolveError, match=r"cannot parse ELF file /bad"):
        resolver.needed("/bad")


def test_parse_cache_reuses_results() -> None:
    resolver = ElfResolver(Sysroot("/"))
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if not Sysroot("/").is_file(libc):
        pytest.skip("no Debian multiarch libc")
    assert resolver.parse(libc) is resolver.parse(libc)


# -- a fake sysroot built from tests/data/elf ------------------------------------------------------
def gcc(*args: str | os.PathLike[str], cwd: Path) -> None:
    run.run(["gcc", *args], cwd=cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile the fixtures (recipe in tests/data/elf/README.md) into a temporary directory."""
    if not run.have_tool("gcc"):
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("elf")
    gcc("-shared", "-fPIC", "-Wl,-soname,libbar.so.2", "-o", "libbar.so.2", DATA / "bar.c", cwd=out)
    gcc(
        "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o", "libfoo.so.1", DATA / "foo.c",
        "-L.", "-l:libbar.so.2", cwd=out,
    )  # fmt: skip
    link = ["-L.", "-l:libfoo.so.1", "-Wl,-rpath-link,."]
    gcc("-o", "prog", DATA / "prog.c", *link, "-Wl,-rpath,$ORIGIN/../lib", cwd=out)
    gcc("-o", "prog-rpath", DATA / "prog.c", *link, "-Wl,--disable-new-dtags,-rpath,/opt/rp", cwd=out)
    gcc("-o", "prog-runpath", DATA / "prog.c", *link, "-Wl,-rpath,/opt/rp", cwd=out)
    return out


def make_sysroot(root: Path) -> Path:
    """A usr-merged Debian-like skeleton with the host's libc and loader."""
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (root / "usr/lib64").mkdir()
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/lib64", root / "lib64")
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy(os.path.realpath(f"/lib/x86_64-linux-gnu/{name}"), libdir / name)
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "usr/lib64/ld-linux-x86-64.so.2")
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("# comment\ninclude /etc/ld.so.conf.d/*.conf\n")
    return root


def put(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def elf32_header() -> bytes:
    """A bare ELFCLASS32 i386 shared-object header: what a 32-bit libbar.so.2 looks like to ld.so."""
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHIIIIIHHHHHH", 3, 3, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)


def with_machine(data: bytes, machine: int) -> bytes:
    return data[:18] + struct.pack("<H", machine) + data[20:]  # e_machine (EM_AARCH64 = 183)


def without_section_headers(data: bytes) -> bytes:
    b = bytearray(data)
    struct.pack_into("<Q", b, 0x28, 0)  # e_shoff
    struct.pack_into("<HH", b, 0x3C, 0, 0)  # e_shnum, e_shstrndx
    return bytes(b)


@pytest.fixture
def fake(tmp_path: Path, built: Path) -> Path:
    if not os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        pytest.skip("needs an x86_64 Debian-style host libc to copy")
    root = make_sysroot(tmp_path / "root")
    put(built / "prog", root / "opt/app/bin/prog")
    put(built / "libfoo.so.1", root / "opt/app/lib/libfoo.so.1")
    # libbar sits in an unusual directory listed by an included ld.so.conf fragment, *after* two
    # directories holding incompatible files of the same name, which ld.so skips
    (root / "etc/ld.so.conf.d/00-wrong.conf").write_text("/srv/lib32\n/srv/arm64 # other machine\n")
    (root / "etc/ld.so.conf.d/50-weird.conf").write_text("/srv/weird\n")
    (root / "srv/lib32").mkdir(parents=True)
    (root / "srv/lib32/libbar.so.2").write_bytes(elf32_header())
    (root / "srv/arm64").mkdir(parents=True)
    (root / "srv/arm64/libbar.so.2").write_bytes(with_machine((built / "libbar.so.2").read_bytes(), 183))
    put(built / "libbar.so.2", root / "srv/weird/libbar.so.2.0")
    os.symlink("libbar.so.2.0", root / "srv/weird/libbar.so.2")
    return root


LD = "/lib64/ld-linux-x86-64.so.2"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def test_fake_sysroot_runpath_origin_ldsoconf_and_wrong_class(fake: Path) -> None:
    resolver = ElfResolver(Sysroot(fake))
    assert resolver.ld_so_conf_dirs() == ["/srv/lib32", "/srv/arm64", "/srv/weird"]
    assert resolver.needed("/opt/app/bin/prog") == [
        LD,
        "/opt/app/lib/libfoo.so.1",
        LIBC,
        "/srv/weird/libbar.so.2",
    ]
    by_path = {n.path: n for n in resolver.needed_with_links("/opt/app/bin/prog")}
    assert by_path["/srv/weird/libbar.so.2"].real == "/srv/weird/libbar.so.2.0"
    assert by_path["/srv/weird/libbar.so.2"].links == (("/srv/weird/libbar.so.2", "libbar.so.2.0"),)
    assert by_path[LD].real == "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert by_path[LD].links == (
        ("/lib64", "usr/lib64"),
        ("/usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ("/lib", "usr/lib"),
    )


def test_script_needs_its_interpreter_and_its_libraries(fake: Path) -> None:
    (fake / "bin").mkdir()
    (fake / "bin/hello").write_text("#! /opt/app/bin/prog -e\necho hello\n")
    (fake / "bin/data").write_bytes(b"plain data\n")
    resolver = ElfResolver(Sysroot(fake))
    assert not resolver.is_elf("/bin/hello") and resolver.is_elf("/opt/app/bin/prog")
    assert resolver.needed("/bin/data") == []
    assert resolver.needed("/bin/hello") == ["/opt/app/bin/prog", *resolver.needed("/opt/app/bin/prog")]


def test_fake_sysroot_without_section_headers(fake: Path) -> None:
    prog = fake / "opt/app/bin/prog"
    prog.write_bytes(without_section_headers(prog.read_bytes()))
    assert ElfResolver(Sysroot(fake)).needed("/opt/app/bin/prog")[1] == "/opt/app/lib/libfoo.so.1"


def test_missing_library_error(fake: Path) -> None:
    for p in (fake / "srv/weird").iterdir():
        p.unlink()
    with pytest.raises(ResolveError) as e:
        ElfResolver(Sysroot(fake)).needed("/opt/app/bin/prog")
    assert str(e.value) == (
        "libbar.so.2 needed by /opt/app/lib/libfoo.so.1 not found in /srv/lib32, /srv/arm64, /srv/weird, "
        "/lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib64, /usr/lib64, /lib, /usr/lib"
    )


def test_rpath_is_inherited_but_runpath_is_not(fake: Path, built: Path) -> None:
    """libbar, needed by libfoo, lives only in /opt/rp: the executable's DT_RPATH reaches it, its
    DT_RUNPATH does not (glibc applies RUNPATH to the object's own DT_NEEDED only)."""
    for p in (fake / "srv/weird").iterdir():
        p.unlink()
    put(built / "libbar.so.2", fake / "opt/rp/libbar.so.2")
    put(built / "libfoo.so.1", fake / "opt/rp/libfoo.so.1")
    put(built / "prog-rpath", fake / "bin/prog-rpath")
    put(built / "prog-runpath", fake / "bin/prog-runpath")
    resolver = ElfResolver(Sysroot(fake))
    assert resolver.needed("/bin/prog-rpath") == [LD, "/opt/rp/libfoo.so.1", LIBC, "/opt/rp/libbar.so.2"]
    with pytest.raises(ResolveError, match=r"^libbar.so.2 needed by /opt/rp/libfoo.so.1 not found in /srv"):
        resolver.needed("/bin/prog-runpath")


@pytest.mark.parametrize(
    ("runpath", "libdir"),
    [(b"/opt/$LIB", "/opt/lib/x86_64-linux-gnu"), (b"${ORIGIN}/../l", "/opt/app/l")],
)
def test_runpath_tokens_expand(fake: Path, built: Path, runpath: bytes, libdir: str) -> None:
    """$LIB is Debian's lib/<triplet> when that directory exists; the ${ORIGIN} spelling works too."""
    src = (built / "prog").read_bytes()
    old = b"$ORIGIN/../lib\0"
    assert src.count(old) == 1 and len(runpath) < len(old)  # patch in place: every offset stays valid
    (fake / "opt/app/bin/prog").write_bytes(src.replace(old, runpath.ljust(len(old), b"\0")))
    (fake / "opt/app/lib/libfoo.so.1").unlink()
    put(built / "libfoo.so.1", fake / libdir.lstrip("/") / "libfoo.so.1")
    assert ElfResolver(Sysroot(fake)).needed("/opt/app/bin/prog")[1] == f"{libdir}/libfoo.so.1"

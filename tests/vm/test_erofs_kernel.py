"""The kernel is the final oracle for the native EROFS writer: Linux 6.1 mounts the image from a
virtio disk, and the guest reports every entry it reads (type, mode, size, sha256, link target).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
from pathlib import Path

import pytest

from initbuild.boot.harness import VM, Disk, boot
from initbuild.build import build
from initbuild.config import load_profile_text
from initbuild.formats.erofs.compressor import LZ4_PATH_ENV
from initbuild.formats.erofs.writer import ErofsOptions, write_erofs
from initbuild.manifest import from_tree
from initbuild.publish import atomic_output
from initbuild.resources import shipped_modules_dir
from initbuild.sysroot import Sysroot

pytestmark = pytest.mark.vm
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory, kver: str) -> Path:
    """Real files (kernel modules, busybox) plus the shapes that stress compressed layouts."""
    root = tmp_path_factory.mktemp("erofs-src")
    shutil.copytree(f"/lib/modules/{kver}/kernel/fs", root / "fs")
    shutil.copy2("/bin/busybox", root / "busybox")
    rnd = random.Random(1)
    edge = root / "edge"
    edge.mkdir()
    for size in (0, 1, 4095, 4096, 4097, 8192, 65535, 65536, 65537, 300_000):
        (edge / f"text-{size}").write_bytes((b"initbuild edge case " * (size // 20 + 1))[:size])
        (edge / f"random-{size}").write_bytes(rnd.randbytes(size))
    (edge / "mixed").write_bytes(b"".join(rnd.randbytes(3000) + b"\0" * 9000 for _ in range(40)))
    (edge / ("n" * 255)).write_bytes(b"long name")
    (edge / "!first").write_bytes(b"sorts before the dot")
    big = edge / "bigdir"
    big.mkdir()
    for i in range(700):
        (big / f"entry-{i:04d}").write_text(str(i))
    deep = edge
    for i in range(20):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    os.symlink("busybox", root / "sh")
    os.symlink("../" * 3 + "x" * 200, edge / "longlink")
    os.link(root / "busybox", edge / "busybox-hardlink")
    os.mkfifo(edge / "fifo")
    return root


@pytest.fixture(scope="module")
def checker_initrd(tmp_path_factory: pytest.TempPathFactory, kver: str) -> Path:
    out = tmp_path_factory.mktemp("erofscheck") / "out"
    profile = load_profile_text(
        f"kernel: {kver}\nhostonly: no\nmode: plain\nmodules: [erofscheck]\n", "erofscheck.yaml"
    )
    report = build(
        profile, out, force=True, modules_dirs=[shipped_modules_dir(), HERE / "modules_erofscheck"]
    )
    return out / report.output("initramfs").path


def _expected(src: Path) -> set[str]:
    lines = set()
    for dirpath, dirnames, filenames in os.walk(src):
        for n in [".", *dirnames, *filenames] if dirpath == str(src) else [*dirnames, *filenames]:
            p = Path(dirpath) / n if n != "." else Path(dirpath)
            rel = "." if p == src else "./" + p.relative_to(src).as_posix()
            st = os.lstat(p)
            perm = f"{stat.S_IMODE(st.st_mode):o}"
            if stat.S_ISLNK(st.st_mode):
                lines.add(f"E l 777 {os.readlink(p)} {rel}")
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                lines.add(f"E f {perm} {st.st_size} {digest} {rel}")
            elif stat.S_ISDIR(st.st_mode):
                lines.add(f"E d {perm} {rel}")
            else:
                lines.add(f"E o {perm} fifo 0:0 {rel}")
    return lines


@pytest.mark.parametrize(
    ("compression", "pcluster", "lz4"),
    [
        ("lz4hc", 65536, "native"),
        ("lz4hc", 65536, "python"),  # the python-lz4 fallback (docs/erofs-format.md §7.11)
        ("lz4hc", 16384, "native"),
        ("lz4", 65536, "native"),
        ("none", 65536, "native"),
    ],
)
def test_kernel_reads_every_file_of_the_image(
    tmp_path: Path,
    kernel: Path,
    source_tree: Path,
    checker_initrd: Path,
    log_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
    pcluster: int,
    lz4: str,
) -> None:
    monkeypatch.setenv(LZ4_PATH_ENV, lz4)
    image = tmp_path / "img.erofs"
    manifest = from_tree(Sysroot(source_tree), preserve_owner=False, preserve_mtime=False)
    with atomic_output(image) as f:
        write_erofs(
            manifest, Sysroot(source_tree), f, ErofsOptions(compression=compression, pcluster_size=pcluster)
        )
    vm = VM(
        kernel=kernel,
        initrd=checker_initrd,
        append="initbuild.erofscheck=1 initbuild.panic=poweroff loglevel=1",  # no printk lines among ours,
        disks=(Disk(image),),
        memory_mb=512,
        timeout=600,
        expect=("EROFS-CHECK-END",),
    )
    name = f"erofs-kernel-{compression}-{pcluster}-{lz4}-{kernel.name.removeprefix('vmlinuz-')}"
    res = boot(vm, log_path=log_dir / f"{name}.log")
    assert "EROFS-MOUNT-FAILED" not in res.console, res.explain()
    assert "EROFS-CHECK-END" in res.console, res.explain()
    body = res.console.split("EROFS-CHECK-BEGIN", 1)[1].split("EROFS-CHECK-END", 1)[0]
    got = {line.strip() for line in body.splitlines() if line.startswith("E ")}
    errors = [
        line
        for line in res.console.splitlines()
        if "erofs" in line.lower() and ("error" in line.lower() or "corrupt" in line.lower())
    ]
    assert not errors, errors
    want = _expected(source_tree)
    assert got == want, (sorted(want - got)[:10], sorted(got - want)[:10])

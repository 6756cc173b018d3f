"""The build reads the target kernel's config: what it cannot boot is a located config error (exit 2),
and `initbuild plan` prints what was read. The kernel's own config file is the oracle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "initbuild"]
KVER = "9.9.9-test"


def _sysroot(tmp_path: Path, drop: tuple[str, ...]) -> Path:
    real = sorted(Path("/boot").glob("config-*"))
    if not real:
        pytest.skip("no installed kernel config (bash .ci/setup.sh)")
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "lib" / "modules" / KVER / "kernel").mkdir(parents=True)
    (root / "lib" / "modules" / KVER / "modules.dep").write_text("")
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"not a kernel")
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "usr" / "bin" / "busybox")  # busybox-static: no libraries
    lines = [ln for ln in real[0].read_text().splitlines() if not ln.startswith(drop)]
    (root / "boot" / f"config-{KVER}").write_text("\n".join(lines) + "\n")
    return root


def _plan(root: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [*CLI, "plan", str(profile), "--sysroot", str(root), "--kver", KVER, *extra]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_a_compression_the_kernel_cannot_unpack_is_a_located_error(tmp_path: Path) -> None:
    root = _sysroot(tmp_path, ("CONFIG_RD_ZSTD=",))
    profile = tmp_path / "p.yaml"
    profile.write_text("mode: initoverlayfs\ncompression: zstd\n")
    cp = _plan(root, profile)
    assert cp.returncode == 2, cp.stderr
    assert f"{profile}:2:14: compression: kernel {KVER} cannot unpack a zstd initramfs" in cp.stderr
    assert "CONFIG_RD_ZSTD is not set" in cp.stderr
    profile.write_text("mode: initoverlayfs\ncompression: lz4\n")
    assert _plan(root, profile).returncode == 0


def test_no_erofs_means_no_initoverlayfs(tmp_path: Path) -> None:
    root = _sysroot(tmp_path, ("CONFIG_EROFS_FS",))
    profile = tmp_path / "p.yaml"
    profile.write_text("mode: initoverlayfs\n")
    cp = _plan(root, profile)
    assert cp.returncode == 2 and "has no EROFS (CONFIG_EROFS_FS is not set" in cp.stderr, cp.stderr


def test_plan_prints_what_it_read(tmp_path: Path) -> None:
    root = _sysroot(tmp_path, ())
    profile = tmp_path / "p.yaml"
    profile.write_text("mode: initoverlayfs\n")
    cp = _plan(root, profile)
    assert cp.returncode == 0, cp.stderr
    assert f"kernel config: /boot/config-{KVER}" in cp.stdout
    cp = _plan(root, profile, "--json")
    data = json.loads(cp.stdout)["kernel_config"]
    config = (root / "boot" / f"config-{KVER}").read_text()
    assert data["erofs_file_backed"] == ("CONFIG_EROFS_FS_BACKED_BY_FILE=y" in config)

"""initbuild as users install it: a wheel and an sdist built from this checkout, installed into a
fresh virtualenv, run from a directory with no checkout in sight, and the image it writes booted.

The package must carry its data (modules.d, templates, profiles, the kernel-install plugin) and find
it through importlib.resources; an installation that only works next to a checkout fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from initbuild.boot.harness import VM, boot, marker
from initbuild.resolve.kernels import host_kernels
from initbuild.sysroot import Sysroot

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    cp = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert cp.returncode == 0, f"{argv} failed ({cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
    return cp.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist of this checkout, built the way a packager builds them."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(out), str(REPO)], cwd=out)
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = os.environ.get("HOME", str(home))
    return env


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_package_builds_and_boots(
    kind: str, dists: dict[str, Path], tmp_path: Path, log_dir: Path
) -> None:
    kvers = host_kernels(Sysroot("/"))
    if not kvers:
        pytest.skip("no kernel installed (bash .ci/setup.sh)")
    kver = kvers[0]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    work = tmp_path / "elsewhere"  # no checkout here, nor on sys.path
    work.mkdir()
    env = _clean_env(tmp_path)
    _run([str(py), "-m", "pip", "install", "-q", str(dists[kind])], cwd=work, env=env)
    where = _run([str(py), "-c", "import initbuild, sys; print(initbuild.__file__)"], cwd=work, env=env)
    assert str(env_dir) in where and str(REPO) not in where, where

    ib = str(env_dir / "bin" / "initbuild")
    modules = _run([ib, "modules"], cwd=work, env=env)
    assert "20initoverlayfs" in modules and "90test" in modules, modules
    plugin = Path(_run([ib, "--plugin-path"], cwd=work, env=env).strip())
    assert plugin.is_file() and str(env_dir) in str(plugin), plugin

    # the default profile (shipped data) in initoverlayfs mode, and a plain image to boot
    _run([ib, "-q", "build", "--generic", "--kver", kver, "-o", "out"], cwd=work, env=env)
    assert sorted(p.name for p in (work / "out").glob("*.img")) == [
        f"initoverlayfs-{kver}.img",
        f"initramfs-{kver}.img",
    ]
    (work / "plain.yaml").write_text("mode: plain\nmodules: [test]\n")
    _run([ib, "-q", "build", "--generic", "plain.yaml", "--kver", kver, "-o", "plain"], cwd=work, env=env)
    vm = VM(
        kernel=Path(f"/boot/vmlinuz-{kver}"),
        initrd=work / "plain" / f"initramfs-{kver}.img",
        append=f"initbuild.test={kind} initbuild.panic=poweroff",
        timeout=300,
        expect=(marker(f"stage-two-{kind}"),),
    )
    res = boot(vm, log_path=log_dir / f"package-{kind}.log")
    assert res.ok and f"stage-two-{kind}" in res.markers, res.explain()

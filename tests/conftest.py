"""Shared fixtures: the installed kernels, in-process builds, and the `vm` marker.

Tests about a kernel never take "the newest installed" (that changes when a kernel is installed):
`kver` runs a test once per installed kernel, each named explicitly. `.ci/setup.sh` installs Debian's
6.1 (modules as plain `.ko`) and 6.12 (`.ko.xz`), so both module formats are always exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initbuild.resolve.kernels import host_kernels
from initbuild.sysroot import Sysroot

TESTS = Path(__file__).resolve().parent
KVERS = host_kernels(Sysroot("/"))  # oldest first


def kver_id(kver: str | None) -> str:
    """A short test id: "6.1", "6.12"."""
    return "no-kernel" if kver is None else ".".join(kver.split("-")[0].split(".")[:2])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--keep-logs", metavar="DIR", default=None, help="keep VM console logs in DIR")


@pytest.fixture(scope="session", params=KVERS or [None], ids=kver_id)
def kver(request: pytest.FixtureRequest) -> str:
    """Each installed kernel in turn (a kernel with /boot/vmlinuz-V and /lib/modules/V)."""
    if request.param is None:
        pytest.skip("no kernel installed (apt-get install linux-image-cloud-amd64)")
    return str(request.param)


@pytest.fixture(scope="session")
def kernel(kver: str) -> Path:
    return Path(f"/boot/vmlinuz-{kver}")


@pytest.fixture(scope="session")
def log_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = request.config.getoption("--keep-logs") or os.environ.get("INITBUILD_TEST_LOGS")
    return Path(keep) if keep else tmp_path_factory.mktemp("vm-logs")

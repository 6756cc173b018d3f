"""Shared fixtures: the installed kernel, in-process builds, and the `vm` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initbuild.modules.context import host_kernels
from initbuild.sysroot import Sysroot

TESTS = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--keep-logs", metavar="DIR", default=None, help="keep VM console logs in DIR")


@pytest.fixture(scope="session")
def kver() -> str:
    found = host_kernels(Sysroot("/"))
    if not found:
        pytest.skip("no kernel installed (apt-get install linux-image-cloud-amd64)")
    return found[-1]


@pytest.fixture(scope="session")
def kernel(kver: str) -> Path:
    return Path(f"/boot/vmlinuz-{kver}")


@pytest.fixture(scope="session")
def log_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = request.config.getoption("--keep-logs") or os.environ.get("INITBUILD_TEST_LOGS")
    return Path(keep) if keep else tmp_path_factory.mktemp("vm-logs")

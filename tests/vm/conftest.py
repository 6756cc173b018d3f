"""VM tests run on every installed kernel, each chosen explicitly (never "the newest installed").

`.ci/setup.sh` installs Debian's two cloud kernels: 6.1 (modules as plain `.ko`, stage two through a
loop device) and 6.12 (`.ko.xz` modules, file-backed EROFS mounts). Each boot test is parametrized
over them, and builds its images for the kernel it boots (`kernel:` in the profile).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from initbuild.resolve.kernels import host_kernels
from initbuild.sysroot import Sysroot

KVERS = host_kernels(Sysroot("/"))


def _id(kver: str | None) -> str:
    return "no-kernel" if kver is None else ".".join(kver.split("-")[0].split(".")[:2])


@pytest.fixture(scope="session", params=KVERS or [None], ids=_id)
def kver(request: pytest.FixtureRequest) -> str:
    if request.param is None:
        pytest.skip("no kernel installed (bash .ci/setup.sh installs Debian's 6.1 and 6.12)")
    return str(request.param)


@pytest.fixture(scope="session")
def kernel(kver: str) -> Path:
    return Path(f"/boot/vmlinuz-{kver}")


def kernel_option(kver: str, option: str) -> str | None:
    """The kernel's own config (the oracle for what a kernel can do): `y`, `m`, or None."""
    path = Path(f"/boot/config-{kver}")
    for line in path.read_text().splitlines():
        if line.startswith(f"{option}="):
            return line.split("=", 1)[1]
    return None

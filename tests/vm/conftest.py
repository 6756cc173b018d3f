"""VM tests run on every installed kernel, each chosen explicitly (never "the newest installed"):
the `kver` and `kernel` fixtures of tests/conftest.py run each test once per installed kernel, and
every boot builds its images for the kernel it boots (`kernel:` in the profile). `.ci/setup.sh`
installs Debian's 6.1 (plain `.ko`, stage two through a loop device) and 6.12 (`.ko.xz` modules,
file-backed EROFS mounts).
"""

from __future__ import annotations

from pathlib import Path


def kernel_option(kver: str, option: str) -> str | None:
    """The kernel's own config (the oracle for what a kernel can do): `y`, `m`, or None."""
    path = Path(f"/boot/config-{kver}")
    for line in path.read_text().splitlines():
        if line.startswith(f"{option}="):
            return line.split("=", 1)[1]
    return None

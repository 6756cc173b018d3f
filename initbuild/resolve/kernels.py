"""The kernels of a sysroot: which versions are installed, and which one a profile builds for."""

from __future__ import annotations

import re

from ..errors import ResolveError
from ..profile import Profile
from ..sysroot import Sysroot


def host_kernels(sysroot: Sysroot) -> list[str]:
    """Kernel versions with both /boot/vmlinuz-V and /lib/modules/V, oldest first."""
    out = []
    if sysroot.is_dir("/lib/modules"):
        for v in sysroot.listdir("/lib/modules"):
            if sysroot.is_file(f"/boot/vmlinuz-{v}") and sysroot.is_dir(f"/lib/modules/{v}"):
                out.append(v)
    return sorted(out, key=_version_key)


def _version_key(v: str) -> list[tuple[int, int | str]]:
    """Numeric parts compare as numbers ("6.12" after "6.1.0"), other parts as text."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", v)]


def resolve_kernel(sysroot: Sysroot, profile: Profile) -> str:
    """The profile's kernel version: as written (it must be installed), or for `auto` the newest one."""
    found = host_kernels(sysroot)
    if profile.kernel != "auto":
        if not sysroot.is_dir(f"/lib/modules/{profile.kernel}"):
            raise ResolveError(
                f"kernel {profile.kernel}: /lib/modules/{profile.kernel} not found "
                f"in the sysroot {sysroot.root}",
                location=profile.where("kernel"),
                hint=f"installed: {', '.join(found) or 'none'}",
            )
        return profile.kernel
    if not found:
        raise ResolveError(
            f"no kernel found in the sysroot {sysroot.root}: need /boot/vmlinuz-V and /lib/modules/V",
            hint="install a kernel (Debian: apt-get install linux-image-cloud-amd64) or pass --kver",
        )
    return found[-1]

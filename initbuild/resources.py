"""The one place that finds initbuild's shipped data, installed or in a checkout.

Everything initbuild ships besides code lives under the package's ``data/`` directory and is found
through :mod:`importlib.resources`, so a wheel, an sdist build and an editable checkout behave the
same. In the repository, ``initbuild/data/modules.d`` and ``initbuild/data/templates`` are symlinks
to the top-level ``modules.d/`` and ``templates/`` (that layout is part of the design); building a
wheel or an sdist copies their content in.

Module search order, like dracut's: the shipped modules, then the administrator's
``/etc/initbuild/modules.d`` (a module there overrides a shipped one of the same name), then every
``--modules-dir`` in the order given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from .errors import InitbuildError

#: The administrator's modules; ``INITBUILD_ADMIN_MODULES_DIR`` moves it (tests use that).
ADMIN_MODULES_DIR = Path("/etc/initbuild/modules.d")


def _data(*parts: str) -> Path:
    path = Path(str(files("initbuild").joinpath("data", *parts)))
    if not path.exists():
        raise InitbuildError(
            f"{path}: shipped data missing from the initbuild installation",
            hint="reinstall initbuild (wheels and sdists built from the repository carry it)",
        )
    return path


def shipped_modules_dir() -> Path:
    return _data("modules.d")


def templates_dir() -> Path:
    return _data("templates")


def default_profile() -> Path:
    return _data("profiles", "default.yaml")


def kernel_install_plugin() -> Path:
    return _data("kernel-install", "50-initbuild.install")


def kernel_hook(name: str) -> Path:
    """A shipped kernel hook of ``data/kernel-install`` (Debian's ``debian-postinst``, ``debian-postrm``)."""
    return _data("kernel-install", name)


def admin_modules_dir() -> Path:
    return Path(os.environ.get("INITBUILD_ADMIN_MODULES_DIR", str(ADMIN_MODULES_DIR)))


def module_dirs(extra: Sequence[Path] = ()) -> list[Path]:
    """The module search path: shipped, then the administrator's (when it exists), then ``extra``."""
    dirs = [shipped_modules_dir()]
    admin = admin_modules_dir()
    if admin.is_dir():
        dirs.append(admin)
    dirs.extend(Path(d) for d in extra)
    return dirs

"""Debian's kernel hooks: install or remove /etc/kernel/{postinst,postrm}.d/initbuild.

On Debian nothing calls kernel-install: a kernel package's postinst runs
``DEB_MAINT_PARAMS="configure ..." run-parts --report --exit-on-error --arg=KVER --arg=/boot/vmlinuz-KVER
/etc/kernel/postinst.d`` and its postrm does the same over ``/etc/kernel/postrm.d`` with ``remove``.
initramfs-tools, dracut and GRUB (``zz-update-grub``) hook in there, and so does initbuild.

The hooks are ``data/kernel-install/debian-postinst`` and ``debian-postrm``. They are installed as
copies named ``initbuild``: run-parts runs only names made of letters, digits, ``_`` and ``-`` (a
name with a dot is silently skipped), in lexical order, and ``initbuild`` sorts before
``zz-update-grub``, so the new images exist when GRUB's menu is regenerated. The postinst hook
gets the absolute path of the initbuild command that installed it, so it does not depend on
``PATH`` (dpkg's is minimal) or on which Python environment is active.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, InitbuildError
from .resources import kernel_hook

HOOK_NAME = "initbuild"
#: (directory under the root, shipped script)
HOOKS = (("etc/kernel/postinst.d", "debian-postinst"), ("etc/kernel/postrm.d", "debian-postrm"))
PLACEHOLDER = "@INITBUILD@"
#: Every installed hook contains this; a file without it is not ours and is never replaced or removed.
MARKER = b"initbuild install-hooks"
#: Other initramfs generators whose hook writes /boot/initrd.img-KVER, which GRUB prefers.
OTHER_GENERATORS = ("initramfs-tools", "dracut")


@dataclass(frozen=True)
class HookChange:
    path: Path
    action: str  # installed | updated | unchanged | removed | absent

    def __str__(self) -> str:
        return f"{self.action} {self.path}"


def initbuild_executable() -> Path:
    """The initbuild command running now: ``$INITBUILD``, argv[0], or the script next to Python."""
    candidates: list[Path] = []
    env = os.environ.get("INITBUILD")
    if env:
        candidates.append(Path(env))
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "initbuild":
        candidates.append(argv0)
    # `python -m initbuild` from a venv or pipx environment: its console script is beside python.
    candidates.append(Path(sys.executable).parent / "initbuild")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return Path(os.path.abspath(c))
    raise InitbuildError(
        "cannot find the initbuild command to write into the hooks "
        f"(tried {', '.join(str(c) for c in candidates)})",
        hint="run the `initbuild` command of a pip/pipx installation, or set INITBUILD=/path/to/initbuild",
    )


def render(script: str, initbuild: Path) -> bytes:
    """The shipped script with the initbuild command substituted (as one shell word)."""
    text = kernel_hook(script).read_text()
    if script == "debian-postinst" and text.count(PLACEHOLDER) != 1:
        raise InitbuildError(f"{kernel_hook(script)}: expected one {PLACEHOLDER} placeholder")
    return text.replace(PLACEHOLDER, shlex.quote(str(initbuild))).encode()


def hook_paths(root: Path) -> list[Path]:
    return [root / d / HOOK_NAME for d, _ in HOOKS]


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise ConfigError(f"--root {root}: not a directory")


def _check_ours(path: Path) -> bytes | None:
    """The current content of an installed hook (None if absent); refuse files initbuild did not write."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise InitbuildError(f"{path} exists and is not a regular file; leaving it alone")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InitbuildError(f"cannot read {path}: {e.strerror}") from e
    if MARKER not in data:
        raise InitbuildError(
            f"{path} exists and was not installed by initbuild; leaving it alone",
            hint="move it away, then run initbuild install-hooks again",
        )
    return data


def _write(path: Path, data: bytes) -> None:
    """Write an executable file atomically: a temporary file in the same directory, then rename."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o755)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise InitbuildError(f"cannot write {path}: {e.strerror}") from e


def install_hooks(root: Path = Path("/"), *, initbuild: Path | None = None) -> list[HookChange]:
    """Install both hooks under root (mode 0755); existing initbuild hooks are replaced."""
    _check_root(root)
    exe = initbuild if initbuild is not None else initbuild_executable()
    planned = [(root / d / HOOK_NAME, render(script, exe)) for d, script in HOOKS]
    current = [_check_ours(path) for path, _ in planned]  # refuse before writing anything
    changes = []
    for (path, data), old in zip(planned, current, strict=True):
        if old == data and os.stat(path).st_mode & 0o777 == 0o755:
            changes.append(HookChange(path, "unchanged"))
            continue
        _write(path, data)
        changes.append(HookChange(path, "installed" if old is None else "updated"))
    return changes


def remove_hooks(root: Path = Path("/")) -> list[HookChange]:
    """Remove both hooks from under root; absent ones are fine, foreign files are refused."""
    _check_root(root)
    paths = hook_paths(root)
    present = [_check_ours(p) is not None for p in paths]
    changes = []
    for path, here in zip(paths, present, strict=True):
        if not here:
            changes.append(HookChange(path, "absent"))
            continue
        try:
            path.unlink()
        except OSError as e:
            raise InitbuildError(f"cannot remove {path}: {e.strerror}") from e
        changes.append(HookChange(path, "removed"))
    return changes


def shadowing_generators(root: Path = Path("/")) -> list[Path]:
    """Other generators' postinst hooks under root: their initrd.img-KVER wins in GRUB's 10_linux."""
    found = []
    for name in OTHER_GENERATORS:
        p = root / HOOKS[0][0] / name
        if p.is_file() and os.access(p, os.X_OK):
            found.append(p)
    return found

"""The one place initbuild runs other programs: argv lists, logged with --debug, failures explained."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from . import log
from .errors import ToolError

Argv = Sequence[str | os.PathLike[str]]

_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_tool(name: str, *, reason: str, hint: str | None = None) -> str:
    """Absolute path of a program, or ToolError saying why it was wanted."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SAFE_PATH)
    if path is None:
        raise ToolError(f"could not find '{name}', which is needed to {reason}", hint=hint)
    return path


def have_tool(name: str) -> bool:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SAFE_PATH) is not None


def spawn(argv: Argv) -> subprocess.Popen[bytes]:
    """Start argv in the background (never through a shell) with stdout+stderr on one pipe.

    For long-running programs read while they run (QEMU's serial console); the caller waits.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args))
    try:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except FileNotFoundError as e:
        raise ToolError(f"'{args[0]}' not found (exit 127): {shlex.join(args)}") from e


def run(
    argv: Argv,
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (never through a shell). stdout/stderr are captured by default."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(args))
    full_env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", _SAFE_PATH)}
    full_env.update({k: v for k, v in os.environ.items() if k in ("HOME", "TMPDIR", "SOURCE_DATE_EPOCH")})
    if env:
        full_env.update(env)
    try:
        cp = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise ToolError(f"'{args[0]}' not found (exit 127): {shlex.join(args)}") from e
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"'{args[0]}' did not finish within {timeout} s: {shlex.join(args)}") from e
    if check and cp.returncode != 0:
        err = (cp.stderr or b"").decode(errors="replace").strip()
        raise ToolError(
            f"'{os.path.basename(args[0])}' failed with exit status {cp.returncode}: {shlex.join(args)}"
            + (f"\n{err[-4000:]}" if err else "")
        )
    return cp

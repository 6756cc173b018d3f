"""Publishing outputs: atomic replacement and the build's timestamp (SOURCE_DATE_EPOCH).

Kept apart from build.py so that `initbuild erofs` does not import the whole build pipeline.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError

DEFAULT_EPOCH = 0  # timestamps when SOURCE_DATE_EPOCH is unset: fixed, so builds are reproducible


def source_date_epoch() -> int:
    v = os.environ.get("SOURCE_DATE_EPOCH")
    if v is None or v == "":
        return DEFAULT_EPOCH
    try:
        n = int(v)
    except ValueError:
        raise ConfigError(f"SOURCE_DATE_EPOCH={v!r} is not an integer number of seconds") from None
    if n < 0 or n > 0xFFFFFFFF:
        raise ConfigError(f"SOURCE_DATE_EPOCH={v} is out of range")
    return n


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file next to `path`, then rename over it: never a torn output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

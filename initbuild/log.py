"""Logging: messages to stderr, `step()` for progress lines with timings that end up in build.json."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

QUIET, NORMAL, VERBOSE, DEBUG = 0, 1, 2, 3
_level = NORMAL
_depth = 0
timings: list[tuple[str, float]] = []


def set_level(level: int) -> None:
    global _level
    _level = level


def level() -> int:
    return _level


def _emit(min_level: int, msg: str) -> None:
    if _level >= min_level:
        print("  " * _depth + msg, file=sys.stderr, flush=True)


def info(msg: str) -> None:
    _emit(NORMAL, msg)


def verbose(msg: str) -> None:
    _emit(VERBOSE, msg)


def debug(msg: str) -> None:
    _emit(DEBUG, msg)


def warning(msg: str) -> None:
    _emit(QUIET, f"warning: {msg}")


def error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    """A named, timed piece of work: prints `title...` then `title: 1.23 s`, nested by indentation."""
    global _depth
    _emit(NORMAL, f"{title}...")
    start = time.perf_counter()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        elapsed = time.perf_counter() - start
        timings.append((title, elapsed))
        _emit(VERBOSE, f"{title}: {elapsed:.2f} s")

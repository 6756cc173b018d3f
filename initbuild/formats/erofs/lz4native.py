"""LZ4's fixed-output compression from the system's liblz4, through ctypes.

`LZ4_compress_HC_destSize` and `LZ4_compress_destSize` compress as much input as fits into a given
number of bytes: exactly what a pcluster needs (docs/erofs-format.md §7.8), in one call, where
python-lz4 (which lacks the call) needs several compressions and checks. liblz4.so.1 is on every
Debian system (apt and systemd link it); ctypes is the standard library and releases the GIL during
the call, so compression threads run on all cores. No compiler and no new Python dependency.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

# 1.9.3 fixed LZ4_compress_HC_destSize on long runs of one byte (lz4 issue #784): older versions end
# such blocks early or badly. Debian 11 ships 1.9.3, Debian 12 1.9.4.
MIN_VERSION = 10903
SONAME = "liblz4.so.1"
FUNCTIONS = (
    "LZ4_compress_HC_destSize",
    "LZ4_compress_destSize",
    "LZ4_compress_HC_extStateHC",
    "LZ4_compress_default",
    "LZ4_sizeofStateHC",
)

_c_int_p = ctypes.POINTER(ctypes.c_int)


@dataclass(frozen=True)
class Liblz4:
    """The loaded library; `version` as LZ4_versionNumber() (10904 is 1.9.4)."""

    lib: ctypes.CDLL
    version: int

    @property
    def name(self) -> str:
        v = self.version
        return f"liblz4 {v // 10000}.{v // 100 % 100}.{v % 100}"

    def dest_size(self, buf: bytes, start: int, end: int, cap: int, level: int | None) -> tuple[bytes, int]:
        """Compress a prefix of buf[start:end] into at most `cap` bytes; returns (LZ4 block without
        size prefix, input bytes it encodes). `level`: lz4hc level, or None for fast LZ4."""
        local = _scratch(self, cap)
        src = _address(buf, start, end)
        local.size.value = end - start
        if level is None:
            n = self.lib.LZ4_compress_destSize(src, local.dst, ctypes.byref(local.size), cap)
        else:
            n = self.lib.LZ4_compress_HC_destSize(
                local.state, src, local.dst, ctypes.byref(local.size), cap, level
            )
        return ctypes.string_at(local.dst, n), local.size.value if n else 0

    def shrinks(self, buf: bytes, start: int, end: int, limit: int) -> bool:
        """Whether fast LZ4 encodes buf[start:end] in at most `limit` bytes: a cheap test of
        whether lz4hc is worth trying on it (about 30 times faster)."""
        local = _scratch(self, limit)
        return self.lib.LZ4_compress_default(_address(buf, start, end), local.dst, end - start, limit) > 0

    def compress_hc(self, buf: bytes, start: int, end: int, level: int, limit: int) -> bytes:
        """All of buf[start:end] as one lz4hc block of at most `limit` bytes; b"" if it needs more."""
        local = _scratch(self, limit)
        src = _address(buf, start, end)
        n = self.lib.LZ4_compress_HC_extStateHC(local.state, src, local.dst, end - start, limit, level)
        return ctypes.string_at(local.dst, n)


def _address(buf: bytes, start: int, end: int) -> int:
    """The address of buf[start] (bytes are immutable: no copy, and nothing writes there)."""
    base = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
    assert base is not None and 0 <= start <= end <= len(buf)
    return base + start


class _Scratch:
    """One thread's compression state (about 256 KiB) and output buffer."""

    def __init__(self, state_size: int, cap: int):
        self.state = ctypes.create_string_buffer(state_size)
        self.dst = ctypes.create_string_buffer(cap)
        self.size = ctypes.c_int()


_local = threading.local()


def _scratch(lib: Liblz4, cap: int) -> _Scratch:
    local: _Scratch | None = getattr(_local, "scratch", None)
    if local is None or len(local.dst) < cap:
        state_size = lib.lib.LZ4_sizeofStateHC()
        local = _local.scratch = _Scratch(state_size, max(cap, 1 << 16))
    return local


def load() -> Liblz4 | None:
    """The system liblz4 if it has fixed-output compression that is safe to use, else None."""
    try:
        lib = ctypes.CDLL(SONAME)
        version = int(lib.LZ4_versionNumber())
        for fn in FUNCTIONS:
            getattr(lib, fn)
    except (OSError, AttributeError):
        return None
    if version < MIN_VERSION:
        return None
    vp, cp, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.LZ4_compress_HC_destSize.argtypes = [vp, vp, cp, _c_int_p, ip, ip]
    lib.LZ4_compress_destSize.argtypes = [vp, cp, _c_int_p, ip]
    lib.LZ4_compress_HC_extStateHC.argtypes = [vp, vp, cp, ip, ip, ip]
    lib.LZ4_compress_default.argtypes = [vp, cp, ip, ip]
    for fn in FUNCTIONS:
        getattr(lib, fn).restype = ip
    return Liblz4(lib, version)

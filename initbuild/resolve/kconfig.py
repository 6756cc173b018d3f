"""The target kernel's configuration, and the facts a build derives from it.

The build asks the kernel, not its version number, whether it can mount EROFS straight from a file,
which EROFS algorithms and initramfs compressions it decodes, and how its modules are compressed.
Sources, first found wins:

* `/boot/config-KVER` (or Fedora's `/lib/modules/KVER/config`): the `.config` the kernel was built with.
* CONFIG_IKCONFIG data (kernel/configs.c): the `.config` gzipped between the 8-byte markers `IKCFG_ST`
  and `IKCFG_ED`, in `kernel/kernel/configs.ko*` when IKCONFIG=m, else inside the kernel image. An
  x86 bzImage keeps the compressed vmlinux where its setup header says (payload_offset and
  payload_length, boot protocol 2.08+); other images are tried uncompressed, then at each gzip, xz,
  zstd or lz4-legacy magic, as scripts/extract-ikconfig does.

Option names are those of fs/erofs/Kconfig, usr/Kconfig (RD_*), kernel/module/Kconfig
(MODULE_COMPRESS_*, MODULE_SIG) and drivers/block, drivers/md, fs/overlayfs.
"""

from __future__ import annotations

import gzip
import io
import itertools
import lzma
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

import lz4.block  # type: ignore[import-untyped]
import zstandard

from .. import log
from ..errors import FormatError, Location
from ..formats.compress import decompress_all
from ..sysroot import Sysroot
from .kmod import MODULE_SUFFIXES

IKCFG_ST, IKCFG_ED = b"IKCFG_ST", b"IKCFG_ED"
# stream magics, as lib/decompress.c knows them (gzip with its deflate method byte, as extract-ikconfig)
_GZIP, _XZ, _ZSTD, _LZ4 = b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18"
_ANY_MAGIC = re.compile(b"|".join(map(re.escape, (_GZIP, _XZ, _ZSTD, _LZ4))))
CHUNK = 1 << 20  # decompressed bytes handled at a time
MAX_IMAGE = 256 << 20  # a kernel image file larger than this is not read
MAX_VMLINUX = 1 << 30  # stop decompressing a payload after this many bytes
MAX_CONFIG = 16 << 20  # an uncompressed .config is ~150 KiB
MAX_CANDIDATES = 16  # compressed-stream magics tried in an image without a bzImage header
_LZ4_BLOCK = 8 << 20  # lz4 legacy: each block decodes to at most 8 MiB (lib/decompress_unlz4.c)

_LINE = re.compile(r'(CONFIG_[A-Za-z0-9_]+)=(y|m|n|"(?:[^"\\]|\\.)*"|-?[0-9]+|0[xX][0-9a-fA-F]+)')
_NOT_SET = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")


class Tristate(StrEnum):
    BUILTIN = "y"
    MODULE = "m"
    ABSENT = "n"


def _name(name: str) -> str:
    return name if name.startswith("CONFIG_") else f"CONFIG_{name}"


@dataclass(frozen=True)
class KernelConfig:
    source: str
    options: Mapping[str, str]  # set options only: "# CONFIG_X is not set" lines are not kept

    def tristate(self, name: str) -> Tristate:
        """y/m as BUILTIN/MODULE; anything else (unset, "n", a string or number) is ABSENT."""
        v = self.options.get(_name(name))
        return Tristate(v) if v in ("y", "m") else Tristate.ABSENT

    def value(self, name: str) -> str | None:
        return self.options.get(_name(name))


def parse_config(text: str, source: str) -> KernelConfig:
    """Parse a kernel .config; a line that is neither blank, a comment nor CONFIG_X=value is an error."""
    options: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), 1):  # kconfig splits lines at "\n" only
        line = line.strip()
        if not line or (line.startswith("#") and not _NOT_SET.fullmatch(line)):
            continue
        if _NOT_SET.fullmatch(line):
            options.pop(line.split()[1], None)
            continue
        m = _LINE.fullmatch(line)
        if not m:
            raise FormatError(
                f"malformed kernel config line {n}: {line[:80]!r}", location=Location(source, n)
            )
        options[m[1]] = m[2]
    return KernelConfig(source, MappingProxyType(options))


# -- IKCONFIG ---------------------------------------------------------------------------------------


def _ikconfig(chunks: Iterable[bytes], limit: int = MAX_VMLINUX) -> str | None:
    """The config text of the IKCONFIG block in a byte stream given in pieces; None if it has none.

    Only a small window of the stream is held: the gzip data after IKCFG_ST is inflated as it
    arrives, and ends by itself where IKCFG_ED follows."""
    start = IKCFG_ST + _GZIP
    carry, seen = b"", 0
    dec: zlib._Decompress | None = None
    out = bytearray()
    try:
        for chunk in chunks:
            seen += len(chunk)
            if dec is None:
                data = carry + chunk
                i = data.find(start)
                if i < 0:
                    carry = data[-(len(start) - 1) :]
                    if seen > limit:
                        return None
                    continue
                dec, chunk = zlib.decompressobj(16 + zlib.MAX_WBITS), data[i + len(IKCFG_ST) :]
            out += dec.decompress(chunk, MAX_CONFIG + 1 - len(out))
            if len(out) > MAX_CONFIG:
                raise FormatError(f"IKCONFIG data inflates to more than {MAX_CONFIG} bytes")
            if dec.eof:
                rest = dec.unused_data
                if not rest.startswith(IKCFG_ED[: len(rest)]):
                    raise FormatError("IKCONFIG gzip data is not followed by IKCFG_ED")
                return out.decode("utf-8", errors="replace")
    except zlib.error as e:
        raise FormatError(f"corrupt IKCONFIG gzip data: {e}") from e
    if dec is not None:
        raise FormatError("IKCONFIG gzip data is truncated")
    return None


class _Reader(Protocol):
    def read1(self, size: int, /) -> bytes: ...


def _inflate(data: bytes) -> Iterator[bytes]:
    """Decompressed pieces (at most a few MiB each) of the gzip, xz, zstd or lz4-legacy stream that
    starts `data`. What follows the stream (a bzImage appends the vmlinux size) is ignored, and so is
    corrupt data: it ends the stream, as for extract-ikconfig."""
    if data.startswith(_LZ4):
        yield from _unlz4(data)
        return
    reader: _Reader
    if data.startswith(_ZSTD):
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
    elif data.startswith(_XZ):
        reader = lzma.LZMAFile(io.BytesIO(data))
    elif data.startswith(_GZIP):
        reader = gzip.GzipFile(fileobj=io.BytesIO(data))
    else:
        return
    while True:
        try:  # one decoder step per read1: what it returned is not lost to an error after it
            piece = reader.read1(CHUNK)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError):
            return
        if not piece:
            return
        yield piece


def _unlz4(data: bytes) -> Iterator[bytes]:
    """lz4 legacy (lib/decompress_unlz4.c): magic, then (le32 size, lz4 block) repeated."""
    pos = 4
    while pos + 4 <= len(data):
        if data[pos : pos + 4] == _LZ4:
            pos += 4
            continue
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0 or pos + 4 + size > len(data):
            return
        try:
            piece = lz4.block.decompress(data[pos + 4 : pos + 4 + size], uncompressed_size=_LZ4_BLOCK)
        except lz4.block.LZ4BlockError:
            return
        pos += 4 + size
        yield piece


def _payloads(image: bytes) -> Iterator[bytes]:
    """Where a kernel image may hold its compressed vmlinux: a bzImage's payload, else every magic."""
    if image[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", image, 0x206)[0] >= 0x208:
        setup_sects = image[0x1F1] or 4  # 0 means 4 (boot protocol)
        offset, length = struct.unpack_from("<II", image, 0x248)
        start = (setup_sects + 1) * 512 + offset
        yield image[start : start + length]
        return
    for m in itertools.islice(_ANY_MAGIC.finditer(image), MAX_CANDIDATES):
        yield image[m.start() :]


def image_ikconfig(image: bytes) -> str | None:
    """The IKCONFIG text in a kernel image (uncompressed, bzImage or a compressed vmlinux), or None.

    The image itself is searched first, ignoring errors: a compressed image can hold the start of the
    gzip data as literals. Errors in a decompressed payload are raised if no payload has IKCONFIG."""
    error: FormatError | None = None
    for n, chunks in enumerate(itertools.chain([[image]], map(_inflate, _payloads(image)))):
        try:
            text = _ikconfig(chunks)
        except FormatError as e:
            error = e if n else None
            continue
        if text is not None:
            return text
    if error is not None:
        raise error
    return None


# -- sources ----------------------------------------------------------------------------------------


def read_kernel_config(sysroot: Sysroot, kver: str) -> KernelConfig | None:
    """The configuration of kernel `kver` in the sysroot, from the first source that has it; None if
    no source does (the caller warns). A config file with a malformed line raises FormatError."""
    mods = f"/lib/modules/{kver}"
    for path in (f"/boot/config-{kver}", f"{mods}/config"):
        if sysroot.is_file(path):
            return parse_config(sysroot.read_text(path), path)
    sources: list[tuple[str, bool]] = [(f"{mods}/kernel/kernel/configs{s}", False) for s in MODULE_SUFFIXES]
    sources += [(f"/boot/vmlinuz-{kver}", True), (f"{mods}/vmlinuz", True)]
    for path, is_image in sources:
        if not sysroot.is_file(path):
            continue
        if sysroot.stat(path).st_size > MAX_IMAGE:
            log.warning(f"{path}: larger than {MAX_IMAGE >> 20} MiB, not searched for IKCONFIG")
            continue
        try:
            data = sysroot.read_bytes(path)
            text = image_ikconfig(data) if is_image else _ikconfig([decompress_all(data)])
        except FormatError as e:
            log.warning(f"{path}: cannot read its IKCONFIG data: {e}")
            continue
        if text is not None:
            return parse_config(text, f"{path} IKCONFIG")
    return None


# -- what the build needs to know -------------------------------------------------------------------

_TRISTATES = {  # field: (option, what it is)
    "erofs": ("EROFS_FS", "erofs"),
    "overlay": ("OVERLAY_FS", "overlayfs"),
    "loop": ("BLK_DEV_LOOP", "loop devices"),
    "dm_verity": ("DM_VERITY", "dm-verity"),
    "dm": ("BLK_DEV_DM", "device mapper"),
}
EROFS_ALGORITHMS = {  # fs/erofs/Kconfig: EROFS_FS_ZIP is the lz4 decompressor
    "EROFS_FS_ZIP": "lz4",
    "EROFS_FS_ZIP_LZMA": "lzma",
    "EROFS_FS_ZIP_DEFLATE": "deflate",
    "EROFS_FS_ZIP_ZSTD": "zstd",
}
RD_COMPRESSIONS = {  # usr/Kconfig; named as profiles name initramfs compressions
    "RD_GZIP": "gzip", "RD_BZIP2": "bzip2", "RD_LZMA": "lzma", "RD_XZ": "xz",
    "RD_LZO": "lzo", "RD_LZ4": "lz4", "RD_ZSTD": "zstd",
}  # fmt: skip
MODULE_COMPRESSIONS = {
    "MODULE_COMPRESS_XZ": "xz",
    "MODULE_COMPRESS_ZSTD": "zstd",
    "MODULE_COMPRESS_GZIP": "gzip",
}


def _ordered(names: Mapping[str, str], chosen: frozenset[str]) -> list[str]:
    return [n for n in names.values() if n in chosen]


@dataclass(frozen=True)
class KernelFeatures:
    kver: str
    config_source: str | None  # None: no config found, the values are conservative assumptions
    erofs: Tristate = Tristate.MODULE
    overlay: Tristate = Tristate.MODULE
    loop: Tristate = Tristate.MODULE
    dm_verity: Tristate = Tristate.MODULE
    dm: Tristate = Tristate.MODULE
    erofs_file_backed: bool = False
    erofs_algorithms: frozenset[str] = frozenset({"lz4"})
    rd_compressions: frozenset[str] = frozenset({"none", "gzip"})
    module_compression: str | None = None
    module_sig: bool = False

    def describe(self) -> list[str]:
        """Human lines for `initbuild plan`: where the facts come from and what they mean."""
        assumed = self.config_source is None

        def why(option: str, on: bool | Tristate) -> str:
            if assumed:
                return "assumed"
            if on is False or on is Tristate.ABSENT:
                return f"CONFIG_{option} is not set"
            return f"{option}={'y' if on is True else on}"

        lines = [
            f"kernel config: none found for {self.kver} (no /boot/config-{self.kver}, no IKCONFIG in "
            "configs.ko or the kernel image); assuming a conservative kernel"
            if assumed
            else f"kernel config: {self.config_source}"
        ]
        for attr, (option, what) in _TRISTATES.items():
            state: Tristate = getattr(self, attr)
            name = "absent" if state is Tristate.ABSENT else state.name.lower()
            lines.append(f"{what}: {name} ({why(option, state)})")
        fb, sig = self.erofs_file_backed, self.module_sig
        lines += [
            f"file-backed EROFS mounts: {'yes' if fb else 'no, the stage-two image needs a loop device'}"
            f" ({why('EROFS_FS_BACKED_BY_FILE', fb)})",
            "EROFS decompressors: "
            + (", ".join(_ordered(EROFS_ALGORITHMS, self.erofs_algorithms)) or "none"),
            "initramfs compressions: "
            + ", ".join(_ordered({"": "none", **RD_COMPRESSIONS}, self.rd_compressions)),
            f"module compression: {self.module_compression or 'none'}" + (" (assumed)" if assumed else ""),
            f"module signing: {'yes' if sig else 'no'} ({why('MODULE_SIG', sig)})",
        ]
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "kver": self.kver,
            "config_source": self.config_source,
            **{attr: str(getattr(self, attr)) for attr in _TRISTATES},
            "erofs_file_backed": self.erofs_file_backed,
            "erofs_algorithms": sorted(self.erofs_algorithms),
            "rd_compressions": sorted(self.rd_compressions),
            "module_compression": self.module_compression,
            "module_sig": self.module_sig,
        }


def features_from_config(kver: str, cfg: KernelConfig) -> KernelFeatures:
    def on(option: str) -> bool:
        return cfg.value(option) == "y"

    return KernelFeatures(
        kver=kver,
        config_source=cfg.source,
        **{attr: cfg.tristate(option) for attr, (option, _) in _TRISTATES.items()},  # type: ignore[arg-type]
        erofs_file_backed=cfg.tristate("EROFS_FS") is not Tristate.ABSENT and on("EROFS_FS_BACKED_BY_FILE"),
        erofs_algorithms=frozenset(a for o, a in EROFS_ALGORITHMS.items() if on(o)),
        rd_compressions=frozenset({"none", *(c for o, c in RD_COMPRESSIONS.items() if on(o))}),
        module_compression=next((c for o, c in MODULE_COMPRESSIONS.items() if on(o)), None),
        module_sig=on("MODULE_SIG"),
    )


def kernel_features(sysroot: Sysroot, kver: str) -> KernelFeatures:
    """What kernel `kver` supports, read from its configuration; conservative guesses when it has none."""
    cfg = read_kernel_config(sysroot, kver)
    return KernelFeatures(kver, None) if cfg is None else features_from_config(kver, cfg)

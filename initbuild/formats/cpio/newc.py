"""The newc cpio header ("SVR4 portable ASCII, no checksum"), as the kernel's init/initramfs.c reads it.

newc is the only cpio format the kernel unpacks (it rejects the old "070707" format). A record is a
110-byte ASCII header (magic and 13 fields of 8 hex digits), the NUL-terminated name padded so that
header+name is a multiple of 4, then the data padded to 4. An archive ends with an entry named
TRAILER!!!. Field names are those of cpio(5) and of initramfs.c; nothing in this module does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from ...errors import FormatError

NEWC_MAGIC = b"070701"  # "new" portable ASCII format without checksum; the only one the kernel reads
OLD_ASCII_MAGIC = b"070707"  # odc: the kernel says "incorrect cpio method used: use -H newc option"
CPIO_MAGIC_PREFIX = b"07070"  # common to all ASCII cpio formats (newc, crc, odc)
TRAILER = "TRAILER!!!"
FIELD_NAMES = (  # the 13 numeric fields, in on-disk order after the magic
    "c_ino",
    "c_mode",
    "c_uid",
    "c_gid",
    "c_nlink",
    "c_mtime",
    "c_filesize",
    "c_devmajor",
    "c_devminor",
    "c_rdevmajor",
    "c_rdevminor",
    "c_namesize",
    "c_check",
)
FIELD_DIGITS = 8  # each field is 8 hex digits
FIELD_MAX = (1 << 4 * FIELD_DIGITS) - 1
HEADER_SIZE = len(NEWC_MAGIC) + FIELD_DIGITS * len(FIELD_NAMES)
ALIGN = 4  # header+name and data are each padded to a multiple of 4 bytes
PATH_MAX = 4096  # the kernel collects names and symlink targets into PATH_MAX-sized buffers

_HEX_FIELD = rb"[0-9A-Fa-f]{%d}" % FIELD_DIGITS
_HEX_HEADER = re.compile(re.escape(NEWC_MAGIC) + _HEX_FIELD * len(FIELD_NAMES))


def field_offset(name: str) -> int:
    """Offset of the field `name` from the start of its header (for error reports)."""
    return len(NEWC_MAGIC) + FIELD_DIGITS * FIELD_NAMES.index(name)


def padding(n: int, align: int = ALIGN) -> int:
    """Bytes needed after `n` bytes to reach a multiple of `align`."""
    return -n % align


@dataclass(frozen=True)
class NewcHeader:
    """One newc header.

    `c_namesize` is derived from `name` (the name's length plus its NUL), so a header can never
    disagree with its name.
    """

    c_ino: int = 0
    c_mode: int = 0
    c_uid: int = 0
    c_gid: int = 0
    c_nlink: int = 1
    c_mtime: int = 0
    c_filesize: int = 0
    c_devmajor: int = 0
    c_devminor: int = 0
    c_rdevmajor: int = 0
    c_rdevminor: int = 0
    c_check: int = 0  # always 0 in newc ("070702" would hold a checksum here)
    name: bytes = b""

    @property
    def c_namesize(self) -> int:
        return len(self.name) + 1

    def values(self) -> tuple[int, ...]:
        """The 13 numeric fields in on-disk order (FIELD_NAMES)."""
        return tuple(getattr(self, name) for name in FIELD_NAMES)

    def pack(self) -> bytes:
        """Header + name + NUL, padded with NULs to a multiple of 4. FormatError if a field overflows."""
        for name, value in zip(FIELD_NAMES, self.values(), strict=True):
            if not 0 <= value <= FIELD_MAX:
                raise FormatError(
                    f"cpio header of {self.name!r}: {value} does not fit in {FIELD_DIGITS} hex digits",
                    field=name,
                )
        if b"\0" in self.name:
            raise FormatError(f"cpio name {self.name!r} contains a NUL byte", field="name")
        head = NEWC_MAGIC + b"".join(b"%0*X" % (FIELD_DIGITS, v) for v in self.values())
        raw = head + self.name + b"\0"
        return raw + b"\0" * padding(len(raw))

    @classmethod
    def parse(cls, buf: bytes | memoryview, offset: int) -> tuple[NewcHeader, int]:
        """Decode the header at `buf[offset]`; returns it and the offset of its (aligned) data.

        Raises FormatError naming the offset and field of the first thing that is wrong.
        """
        raw = bytes(buf[offset : offset + HEADER_SIZE])
        if len(raw) < HEADER_SIZE:
            raise FormatError("cpio header is truncated", offset=offset, field="header")
        if not raw.startswith(NEWC_MAGIC):
            what = "old ASCII (odc) cpio; the kernel needs newc" if raw.startswith(OLD_ASCII_MAGIC) else ""
            raise FormatError(
                f"bad cpio magic {raw[: len(NEWC_MAGIC)]!r} {what}".rstrip(), offset=offset, field="c_magic"
            )
        texts = [raw[field_offset(name) :][:FIELD_DIGITS] for name in FIELD_NAMES]
        if not _HEX_HEADER.fullmatch(raw):
            bad = next(name for name, text in zip(FIELD_NAMES, texts, strict=True) if not _is_hex(text))
            raise FormatError(
                "cpio header field is not hexadecimal", offset=offset + field_offset(bad), field=bad
            )
        kw = {name: int(text, 16) for name, text in zip(FIELD_NAMES, texts, strict=True)}
        namesize = kw.pop("c_namesize")
        if not 1 <= namesize <= PATH_MAX:
            raise FormatError(
                f"cpio name size {namesize} is not in 1..{PATH_MAX}",
                offset=offset + field_offset("c_namesize"),
                field="c_namesize",
            )
        name_at = offset + HEADER_SIZE
        name = bytes(buf[name_at : name_at + namesize])
        if len(name) < namesize:
            raise FormatError("cpio name is truncated", offset=name_at, field="name")
        if name[-1] != 0 or b"\0" in name[:-1]:
            raise FormatError("cpio name is not a NUL-terminated string", offset=name_at, field="name")
        header = cls(**kw, name=name[:-1])
        data_at = name_at + namesize
        return header, data_at + padding(data_at)


def _is_hex(text: bytes) -> bool:
    return re.fullmatch(_HEX_FIELD, text) is not None


assert HEADER_SIZE == 110
assert [f.name for f in fields(NewcHeader) if f.name != "name"] == [
    n for n in FIELD_NAMES if n != "c_namesize"
]
assert len(NewcHeader().pack()) == HEADER_SIZE + 2  # 110 + NUL, padded to 112
assert NewcHeader(c_ino=0xABC).pack()[field_offset("c_ino") :][:FIELD_DIGITS] == b"00000ABC"

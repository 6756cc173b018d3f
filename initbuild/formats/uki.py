"""Unified Kernel Images: systemd-stub with the kernel, stage one, command line and os-release inside.

The layout follows the UAPI Group's UKI specification and what systemd's `ukify` produces: the
resources are PE sections appended after the stub's own, in ukify's order, `.linux` last. See
docs/uki.md for the facts about systemd-stub 252 this relies on and for the chain of trust.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .. import run
from ..errors import FormatError
from . import pe

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # Debian's systemd-boot-efi
IMAGE_SUBSYSTEM_EFI_APPLICATION = 10

# the resource sections the stub looks up, in the order ukify appends them; .linux always comes last
SECTION_ORDER = (".osrel", ".cmdline", ".dtb", ".uname", ".splash", ".pcrpkey", ".initrd", ".linux")
LINUX_FLAGS = pe.IMAGE_SCN_CNT_CODE | pe.IMAGE_SCN_MEM_READ  # as ukify marks it
DATA_FLAGS = pe.IMAGE_SCN_CNT_INITIALIZED_DATA | pe.IMAGE_SCN_MEM_READ


class UkiSection(NamedTuple):
    name: str
    vaddr: int  # VirtualAddress (RVA): where the stub finds it in memory
    size: int  # VirtualSize: the content length the stub uses
    offset: int  # PointerToRawData: where it is in the file


@dataclass(frozen=True)
class UkiParts:
    kernel: bytes
    initrd: bytes
    cmdline: str
    osrel: str
    uname: str | None = None

    def sections(self) -> list[pe.NewSection]:
        text = {".osrel": self.osrel, ".cmdline": self.cmdline, ".uname": self.uname}
        out = [pe.NewSection(n, t.encode(), DATA_FLAGS) for n, t in text.items() if t is not None]
        out.append(pe.NewSection(".initrd", self.initrd, DATA_FLAGS))
        out.append(pe.NewSection(".linux", self.kernel, LINUX_FLAGS))
        return sorted(out, key=lambda s: SECTION_ORDER.index(s.name))


def _check_inputs(stub: pe.PeImage, kernel: bytes, cmdline: str) -> None:
    if stub.optional_header.Subsystem != IMAGE_SUBSYSTEM_EFI_APPLICATION:
        raise FormatError("the stub is not an EFI application (Subsystem 10)", field="Subsystem")
    # the stub finds a resource by comparing the first len(name) bytes only, so ".linuxX" would match too
    clash = [s.name for s in stub.sections if s.name.startswith(SECTION_ORDER)]
    if clash:
        raise FormatError(f"the stub already has UKI sections {clash}; give a bare systemd-stub")
    k = pe.parse(kernel)  # the stub starts the kernel as a PE program, so it must be one
    machine, stub_machine = k.file_header.Machine, stub.file_header.Machine
    if machine != stub_machine:
        raise FormatError(f"kernel machine 0x{machine:x} differs from the stub's 0x{stub_machine:x}")
    if k.optional_header.SizeOfImage < len(kernel):
        # systemd-stub 252 copies .linux into a SizeOfImage buffer and asserts it fits
        raise FormatError("the kernel file is larger than its SizeOfImage", field="SizeOfImage")
    if "\0" in cmdline:
        raise FormatError("the kernel command line contains a NUL byte")


def build_uki(
    stub: bytes, kernel: bytes, initrd: bytes, cmdline: str, osrel: str, uname: str | None
) -> bytes:
    """The UKI's bytes: `stub` plus .osrel, .cmdline, [.uname], .initrd and .linux sections.

    Deterministic: the same inputs give the same bytes (no timestamps are written).
    """
    img = pe.parse(stub)
    _check_inputs(img, kernel, cmdline)
    return pe.append_sections(stub, UkiParts(kernel, initrd, cmdline, osrel, uname).sections())


def write_uki(
    out: str | os.PathLike[str],
    *,
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    cmdline: str,
    osrel: str,
    uname: str | None = None,
    stub: str | os.PathLike[str] = STUB,
) -> None:
    """Build a UKI from files and write it to `out` (atomically: a temporary name, then rename)."""
    data = build_uki(
        Path(stub).read_bytes(), Path(kernel).read_bytes(), Path(initrd).read_bytes(), cmdline, osrel, uname
    )
    tmp = Path(f"{os.fspath(out)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)


def read_uki(data: bytes) -> list[UkiSection]:
    """Every section of a PE image (the stub's and the UKI's), in section-table order."""
    img = pe.parse(data)
    return [UkiSection(s.name, s.VirtualAddress, s.VirtualSize, s.PointerToRawData) for s in img.sections]


def is_uki(data: bytes) -> bool:
    """A PE image with a .linux section: the only section the UKI specification requires."""
    try:
        return any(s.name == ".linux" for s in read_uki(data))
    except FormatError:
        return False


def extract_section(data: bytes, name: str) -> bytes:
    """A section's contents (VirtualSize bytes), e.g. ".initrd" for the embedded stage one."""
    img = pe.parse(data)
    return img.section_data(img.section(name))


def sign_uki(
    unsigned: str | os.PathLike[str],
    signed: str | os.PathLike[str],
    *,
    key: str | os.PathLike[str],
    cert: str | os.PathLike[str],
) -> None:
    """Sign for Secure Boot with sbsign (an Authenticode signature in the Security directory).

    The key and certificate are PEM files; the firmware (db) or shim (MOK) must trust the certificate.
    """
    sbsign = run.find_tool(
        "sbsign", reason="sign the Unified Kernel Image", hint="apt-get install sbsigntool"
    )
    run.run([sbsign, "--key", key, "--cert", cert, "--output", signed, unsigned])

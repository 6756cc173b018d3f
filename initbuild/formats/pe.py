"""PE/COFF images, just enough to read a UEFI program's headers and append sections to it.

Field names follow the Microsoft PE/COFF specification (IMAGE_DOS_HEADER, IMAGE_FILE_HEADER,
IMAGE_OPTIONAL_HEADER64, IMAGE_SECTION_HEADER) so the code can be read next to it. Only PE32+
(the format of x86-64 and AArch64 UEFI programs) is handled; anything else is refused clearly.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import astuple, dataclass, replace

from ..errors import FormatError

DOS_MAGIC = b"MZ"  # IMAGE_DOS_HEADER.e_magic
E_LFANEW_OFFSET = 0x3C  # IMAGE_DOS_HEADER.e_lfanew: file offset of the PE signature
PE_SIGNATURE = b"PE\0\0"
PE32PLUS_MAGIC = 0x20B  # IMAGE_OPTIONAL_HEADER64.Magic
COFF_SYMBOL_SIZE = 18  # one IMAGE_SYMBOL record in the (deprecated, for images) COFF symbol table

# IMAGE_FILE_HEADER.Characteristics
IMAGE_FILE_LOCAL_SYMS_STRIPPED = 0x0008
# IMAGE_SECTION_HEADER.Characteristics
IMAGE_SCN_CNT_CODE = 0x00000020
IMAGE_SCN_CNT_INITIALIZED_DATA = 0x00000040
IMAGE_SCN_MEM_READ = 0x40000000
# indices into the optional header's data directories
IMAGE_DIRECTORY_ENTRY_SECURITY = 4  # its VirtualAddress is a file offset: the Authenticode signatures
IMAGE_DIRECTORY_ENTRY_DEBUG = 6  # its entries carry PointerToRawData file offsets
SECTION_NAME_MAX = 8  # executables have no string table, so names are at most 8 bytes

IMAGE_FILE_HEADER = struct.Struct("<HHIIIHH")
assert IMAGE_FILE_HEADER.size == 20
IMAGE_OPTIONAL_HEADER64 = struct.Struct("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII")  # up to the data directories
assert IMAGE_OPTIONAL_HEADER64.size == 112
IMAGE_DATA_DIRECTORY = struct.Struct("<II")
assert IMAGE_DATA_DIRECTORY.size == 8
IMAGE_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
assert IMAGE_SECTION_HEADER.size == 40
CHECKSUM_FIELD_OFFSET = 64  # IMAGE_OPTIONAL_HEADER64.CheckSum, from the start of the optional header


def round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class FileHeader:
    Machine: int
    NumberOfSections: int
    TimeDateStamp: int
    PointerToSymbolTable: int
    NumberOfSymbols: int
    SizeOfOptionalHeader: int
    Characteristics: int


@dataclass(frozen=True)
class OptionalHeader64:
    Magic: int
    MajorLinkerVersion: int
    MinorLinkerVersion: int
    SizeOfCode: int
    SizeOfInitializedData: int
    SizeOfUninitializedData: int
    AddressOfEntryPoint: int
    BaseOfCode: int
    ImageBase: int
    SectionAlignment: int
    FileAlignment: int
    MajorOperatingSystemVersion: int
    MinorOperatingSystemVersion: int
    MajorImageVersion: int
    MinorImageVersion: int
    MajorSubsystemVersion: int
    MinorSubsystemVersion: int
    Win32VersionValue: int
    SizeOfImage: int
    SizeOfHeaders: int
    CheckSum: int
    Subsystem: int
    DllCharacteristics: int
    SizeOfStackReserve: int
    SizeOfStackCommit: int
    SizeOfHeapReserve: int
    SizeOfHeapCommit: int
    LoaderFlags: int
    NumberOfRvaAndSizes: int


@dataclass(frozen=True)
class SectionHeader:
    Name: bytes  # 8 bytes, NUL padded
    VirtualSize: int
    VirtualAddress: int
    SizeOfRawData: int
    PointerToRawData: int
    PointerToRelocations: int = 0
    PointerToLinenumbers: int = 0
    NumberOfRelocations: int = 0
    NumberOfLinenumbers: int = 0
    Characteristics: int = 0

    @property
    def name(self) -> str:
        return self.Name.rstrip(b"\0").decode("ascii", errors="replace")

    @property
    def virtual_end(self) -> int:
        return self.VirtualAddress + (self.VirtualSize or self.SizeOfRawData)

    def pack(self) -> bytes:
        return IMAGE_SECTION_HEADER.pack(*astuple(self))


@dataclass(frozen=True)
class PeImage:
    """A parsed image: its headers, section table, and where each lives in `data`."""

    data: bytes
    e_lfanew: int
    file_header: FileHeader
    optional_header: OptionalHeader64
    data_directories: tuple[tuple[int, int], ...]  # (VirtualAddress, Size) each
    sections: tuple[SectionHeader, ...]

    @property
    def optional_header_offset(self) -> int:
        return self.e_lfanew + len(PE_SIGNATURE) + IMAGE_FILE_HEADER.size

    @property
    def section_table_offset(self) -> int:
        return self.optional_header_offset + self.file_header.SizeOfOptionalHeader

    def directory(self, index: int) -> tuple[int, int]:
        """Data directory `index` as (VirtualAddress, Size); (0, 0) when absent."""
        return self.data_directories[index] if index < len(self.data_directories) else (0, 0)

    def section(self, name: str) -> SectionHeader:
        found = [s for s in self.sections if s.name == name]
        if not found:
            raise FormatError(f"no section {name!r} (has {', '.join(s.name for s in self.sections)})")
        return found[0]

    def section_data(self, sec: SectionHeader) -> bytes:
        """A section's contents as loaded: VirtualSize bytes, zero-filled past SizeOfRawData."""
        size = sec.VirtualSize or sec.SizeOfRawData
        end = sec.PointerToRawData + min(size, sec.SizeOfRawData)
        if end > len(self.data):
            raise FormatError(f"section {sec.name} runs past the end of the file", offset=end)
        return self.data[sec.PointerToRawData : end] + bytes(max(0, size - sec.SizeOfRawData))


def parse(data: bytes) -> PeImage:
    """Parse a PE32+ image's headers and section table (not its contents)."""
    if len(data) < E_LFANEW_OFFSET + 4 or data[:2] != DOS_MAGIC:
        raise FormatError("not a PE image: no 'MZ' DOS header", offset=0)
    (e_lfanew,) = struct.unpack_from("<I", data, E_LFANEW_OFFSET)
    if data[e_lfanew : e_lfanew + 4] != PE_SIGNATURE:
        raise FormatError("not a PE image: no 'PE\\0\\0' signature at e_lfanew", offset=e_lfanew)
    fh = FileHeader(*IMAGE_FILE_HEADER.unpack_from(data, e_lfanew + 4))
    opt_off = e_lfanew + 4 + IMAGE_FILE_HEADER.size
    (magic,) = struct.unpack_from("<H", data, opt_off)
    if magic != PE32PLUS_MAGIC:
        raise FormatError(
            f"optional header magic 0x{magic:x}: only PE32+ (0x20b) is supported", offset=opt_off
        )
    oh = OptionalHeader64(*IMAGE_OPTIONAL_HEADER64.unpack_from(data, opt_off))
    dd_off = opt_off + IMAGE_OPTIONAL_HEADER64.size
    if (
        IMAGE_OPTIONAL_HEADER64.size + oh.NumberOfRvaAndSizes * IMAGE_DATA_DIRECTORY.size
        > fh.SizeOfOptionalHeader
    ):
        raise FormatError("NumberOfRvaAndSizes does not fit SizeOfOptionalHeader", offset=opt_off)
    dirs = tuple(
        IMAGE_DATA_DIRECTORY.unpack_from(data, dd_off + i * IMAGE_DATA_DIRECTORY.size)
        for i in range(oh.NumberOfRvaAndSizes)
    )
    table = opt_off + fh.SizeOfOptionalHeader
    if table + fh.NumberOfSections * IMAGE_SECTION_HEADER.size > len(data):
        raise FormatError("section table runs past the end of the file", offset=table)
    sections = tuple(
        SectionHeader(*IMAGE_SECTION_HEADER.unpack_from(data, table + i * IMAGE_SECTION_HEADER.size))
        for i in range(fh.NumberOfSections)
    )
    return PeImage(data, e_lfanew, fh, oh, dirs, sections)


def pe_checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The optional header's CheckSum: 16-bit one's-complement sum of the file (CheckSum field as 0) + length.

    Summing the file as one little-endian integer modulo 0xFFFF gives the same residue as adding its
    16-bit words with end-around carry, because 0x10000 = 1 (mod 0xFFFF).
    """
    buf = bytearray(data)
    buf[checksum_offset : checksum_offset + 4] = bytes(4)
    if len(buf) % 2:
        buf.append(0)
    total = int.from_bytes(buf, "little")
    folded = total % 0xFFFF
    if folded == 0 and total != 0:
        folded = 0xFFFF
    return (folded + len(data)) & 0xFFFFFFFF


@dataclass(frozen=True)
class NewSection:
    name: str
    data: bytes
    characteristics: int = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ


def _strip_trailer(img: PeImage) -> tuple[bytes, FileHeader]:
    """The file cut after its last section's raw data, dropping a trailing COFF symbol table.

    Images should not carry a symbol table (the spec deprecates it), but some linkers leave one
    after the sections; appending sections behind it would leave bytes no signature covers.
    """
    fh = img.file_header
    end = max((s.PointerToRawData + s.SizeOfRawData for s in img.sections if s.SizeOfRawData), default=0)
    end = max(end, img.optional_header.SizeOfHeaders)
    trailer = img.data[end:]
    if fh.PointerToSymbolTable:
        symtab = fh.PointerToSymbolTable
        strtab = symtab + COFF_SYMBOL_SIZE * fh.NumberOfSymbols
        # the string table follows the symbols; its first 4 bytes are its size, themselves included
        strtab_size = struct.unpack_from("<I", img.data, strtab)[0] if strtab + 4 <= len(img.data) else 0
        symtab_end = strtab + max(strtab_size, 4)
        if symtab < end or symtab_end > len(img.data) or img.data[symtab_end:].strip(b"\0"):
            raise FormatError("the COFF symbol table is not at the end of the file", offset=symtab)
        trailer = img.data[end:symtab]
        fh = replace(
            fh,
            PointerToSymbolTable=0,
            NumberOfSymbols=0,
            Characteristics=fh.Characteristics | IMAGE_FILE_LOCAL_SYMS_STRIPPED,
        )
    if trailer.strip(b"\0"):
        raise FormatError(f"{len(trailer)} unexpected bytes after the last section", offset=end)
    return img.data[:end], fh


def _make_room(img: PeImage, body: bytearray, n_new: int) -> tuple[int, tuple[SectionHeader, ...]]:
    """SizeOfHeaders and section table after making room for n_new more section headers.

    The header area can grow up to the first section's raw data for free; beyond that all raw data
    moves back by whole FileAlignment units (section RVAs never move, so no code changes).
    """
    oh = img.optional_header
    table_end = img.section_table_offset + (len(img.sections) + n_new) * IMAGE_SECTION_HEADER.size
    old_end = img.section_table_offset + len(img.sections) * IMAGE_SECTION_HEADER.size
    sections = img.sections
    if table_end <= oh.SizeOfHeaders:
        if body[old_end:table_end].strip(b"\0"):
            raise FormatError("the space after the section table is not empty", offset=old_end)
        return oh.SizeOfHeaders, sections
    size_of_headers = round_up(table_end, oh.FileAlignment)
    first_rva = min((s.VirtualAddress for s in sections), default=size_of_headers)
    if size_of_headers > first_rva:
        raise FormatError(
            f"no room for {n_new} more section headers: headers would reach 0x{size_of_headers:x},"
            f" past the first section's VirtualAddress 0x{first_rva:x}",
            field="SizeOfHeaders",
        )
    first_raw = min((s.PointerToRawData for s in sections if s.SizeOfRawData), default=len(body))
    if body[old_end:first_raw].strip(b"\0"):
        raise FormatError("the space after the section table is not empty", offset=old_end)
    if size_of_headers > first_raw:
        shift = round_up(size_of_headers - first_raw, oh.FileAlignment)
        if img.directory(IMAGE_DIRECTORY_ENTRY_DEBUG) != (0, 0):
            raise FormatError("cannot move section data: the debug directory holds file offsets")
        body[first_raw:first_raw] = bytes(shift)
        sections = tuple(
            replace(s, PointerToRawData=s.PointerToRawData + shift) if s.SizeOfRawData else s
            for s in sections
        )
    return size_of_headers, sections


def append_sections(image: bytes, new: Sequence[NewSection]) -> bytes:
    """`image` with `new` appended, in order, after its last section in both file and memory.

    Each new section starts at the next SectionAlignment boundary after the highest section end
    (VirtualAddress) and the next FileAlignment boundary after the data before it (PointerToRawData);
    VirtualSize is the exact content length, SizeOfRawData that length rounded up to FileAlignment.
    SizeOfImage, SizeOfCode/SizeOfInitializedData and NumberOfSections are updated, and CheckSum is
    recomputed when the input had one. A signed input is refused: its signature would no longer match.
    """
    img = parse(image)
    oh = img.optional_header
    if img.directory(IMAGE_DIRECTORY_ENTRY_SECURITY) != (0, 0):
        raise FormatError("the image is already signed; sign the result instead", field="Security")
    for s in img.sections:
        if s.SizeOfRawData and (s.PointerToRawData % oh.FileAlignment or s.SizeOfRawData % oh.FileAlignment):
            raise FormatError(f"section {s.name}'s raw data is not aligned to FileAlignment")
    for n in new:
        if not n.name.isascii() or not 0 < len(n.name) <= SECTION_NAME_MAX:
            raise FormatError(f"section name {n.name!r}: 1 to {SECTION_NAME_MAX} ASCII characters")
    trimmed, fh = _strip_trailer(img)
    body = bytearray(trimmed)
    size_of_headers, sections = _make_room(img, body, len(new))

    code, initialized = oh.SizeOfCode, oh.SizeOfInitializedData
    va_end = max((s.virtual_end for s in sections), default=round_up(size_of_headers, oh.SectionAlignment))
    added: list[SectionHeader] = []
    for n in new:
        raw_size = round_up(len(n.data), oh.FileAlignment)
        body += bytes(round_up(len(body), oh.FileAlignment) - len(body))
        sec = SectionHeader(
            Name=n.name.encode("ascii").ljust(SECTION_NAME_MAX, b"\0"),
            VirtualSize=len(n.data),
            VirtualAddress=round_up(va_end, oh.SectionAlignment),
            SizeOfRawData=raw_size,
            PointerToRawData=len(body),
            Characteristics=n.characteristics,
        )
        body += n.data + bytes(raw_size - len(n.data))
        va_end = sec.virtual_end
        added.append(sec)
        if n.characteristics & IMAGE_SCN_CNT_CODE:
            code += raw_size
        elif n.characteristics & IMAGE_SCN_CNT_INITIALIZED_DATA:
            initialized += raw_size

    all_sections = sections + tuple(added)
    fh = replace(fh, NumberOfSections=len(all_sections))
    oh = replace(
        oh,
        SizeOfCode=code,
        SizeOfInitializedData=initialized,
        SizeOfHeaders=size_of_headers,
        SizeOfImage=round_up(va_end, oh.SectionAlignment),
        CheckSum=0,
    )
    if max(oh.SizeOfImage, oh.SizeOfCode, oh.SizeOfInitializedData, len(body)) > 0xFFFFFFFF:
        raise FormatError("the image is too large for PE32+ header fields (4 GiB)")
    IMAGE_FILE_HEADER.pack_into(body, img.e_lfanew + len(PE_SIGNATURE), *astuple(fh))
    IMAGE_OPTIONAL_HEADER64.pack_into(body, img.optional_header_offset, *astuple(oh))
    for i, sec in enumerate(all_sections):
        at = img.section_table_offset + i * IMAGE_SECTION_HEADER.size
        body[at : at + IMAGE_SECTION_HEADER.size] = sec.pack()
    if img.optional_header.CheckSum:
        checksum_at = img.optional_header_offset + CHECKSUM_FIELD_OFFSET
        struct.pack_into("<I", body, checksum_at, pe_checksum(body, checksum_at))
    return bytes(body)

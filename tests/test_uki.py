"""Unified Kernel Images against real oracles: objdump/objcopy (binutils) and sbverify (sbsigntool).

The stub is Debian's systemd-stub (systemd-boot-efi) and the kernel the installed one, so these are
the real inputs a UKI is made of. objcopy is used only to *read* sections, as an independent reader.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from initbuild.errors import FormatError
from initbuild.formats import pe, uki

STUB = uki.STUB
CMDLINE = "console=ttyS0 initbuild.debug"
OSREL = 'PRETTY_NAME="initbuild test"\nID=debian\nVERSION_ID=12\n'
# an odd length, so the padding up to FileAlignment is exercised
INITRD = b"070701" + bytes(range(256)) * 37 + b"TRAILER!!!"

needs_stub = pytest.mark.skipif(not STUB.exists(), reason="apt-get install systemd-boot-efi")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def stub() -> bytes:
    if not STUB.exists():
        pytest.skip("no systemd-stub (apt-get install systemd-boot-efi)")
    return STUB.read_bytes()


@pytest.fixture(scope="module")
def kernel_bytes(kernel: Path) -> bytes:
    return kernel.read_bytes()


@pytest.fixture(scope="module")
def image(stub: bytes, kernel_bytes: bytes, kver: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("uki") / "uki.efi"
    path.write_bytes(uki.build_uki(stub, kernel_bytes, INITRD, CMDLINE, OSREL, kver))
    return path


@pytest.fixture(scope="module")
def expected(kernel_bytes: bytes, kver: str) -> dict[str, bytes]:
    return {
        ".osrel": OSREL.encode(),
        ".cmdline": CMDLINE.encode(),
        ".uname": kver.encode(),
        ".initrd": INITRD,
        ".linux": kernel_bytes,
    }


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    _need("openssl")
    d = tmp_path_factory.mktemp("keys")
    key, cert = d / "db.key", d / "db.crt"
    cp = _run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-subj", "/CN=initbuild test db/", "-keyout", key, "-out", cert,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    return key, cert


def objdump_sections(path: Path) -> list[tuple[str, int, int, int]]:
    """(name, size, VMA, file offset) of each section, as binutils reads the image."""
    _need("objdump")
    cp = _run("objdump", "-h", path)
    assert cp.returncode == 0, cp.stderr
    row = re.compile(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s", re.M)
    return [(m[1], int(m[2], 16), int(m[3], 16), int(m[4], 16)) for m in row.finditer(cp.stdout)]


@needs_stub
def test_objdump_lists_the_sections_where_read_uki_says(image: Path, stub: bytes, expected: dict) -> None:
    listed = objdump_sections(image)
    stub_img = pe.parse(stub)
    names = [s.name for s in stub_img.sections] + [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    assert [n for n, *_ in listed] == names
    ours = uki.read_uki(image.read_bytes())
    assert [(s.name, s.size, s.vaddr, s.offset) for s in ours] == listed
    # the stub's own sections are untouched, in memory and in the file
    for (name, size, vma, off), s in zip(listed, stub_img.sections, strict=False):
        assert (name, size, vma, off) == (s.name, s.VirtualSize, s.VirtualAddress, s.PointerToRawData)
    oh = stub_img.optional_header
    end = max(s.VirtualAddress + s.VirtualSize for s in stub_img.sections)
    file_end = max(s.PointerToRawData + s.SizeOfRawData for s in stub_img.sections)
    for name, size, vma, off in listed[len(stub_img.sections) :]:
        assert size == len(expected[name]), name
        assert vma == pe.round_up(end, oh.SectionAlignment), f"{name} is not right after the previous section"
        assert off >= file_end and off % oh.FileAlignment == 0, name
        end, file_end = vma + size, off + pe.round_up(size, oh.FileAlignment)
    assert listed[-1][0] == ".linux"


@needs_stub
def test_headers_agree_with_the_sections(image: Path) -> None:
    data = image.read_bytes()
    img = pe.parse(data)
    oh = img.optional_header
    last = max(img.sections, key=lambda s: s.VirtualAddress)
    assert oh.SizeOfImage == pe.round_up(last.VirtualAddress + last.VirtualSize, oh.SectionAlignment)
    assert oh.SizeOfImage > len(img.section_data(img.section(".linux")))
    assert img.section_table_offset + 40 * len(img.sections) <= oh.SizeOfHeaders
    assert oh.CheckSum == pe.pe_checksum(data, img.optional_header_offset + pe.CHECKSUM_FIELD_OFFSET)
    # the stub's COFF symbol table trailer is gone, so no bytes sit outside the sections
    assert img.file_header.PointerToSymbolTable == 0
    assert img.file_header.Characteristics & pe.IMAGE_FILE_LOCAL_SYMS_STRIPPED
    assert len(data) == last.PointerToRawData + last.SizeOfRawData


@needs_stub
def test_objcopy_extracts_the_inputs(image: Path, expected: dict[str, bytes], tmp_path: Path) -> None:
    _need("objcopy")
    for name, want in expected.items():
        out = tmp_path / name.lstrip(".")
        cp = _run("objcopy", "-O", "binary", f"--only-section={name}", image, out)
        assert cp.returncode == 0, cp.stderr
        assert out.read_bytes() == want, name


@needs_stub
def test_read_uki_round_trips(image: Path, expected: dict[str, bytes]) -> None:
    data = image.read_bytes()
    assert uki.is_uki(data)
    assert not uki.is_uki(STUB.read_bytes())
    for name, want in expected.items():
        assert uki.extract_section(data, name) == want
    with pytest.raises(FormatError, match="no section '.dtb'"):
        uki.extract_section(data, ".dtb")


@needs_stub
def test_two_builds_are_byte_identical(stub: bytes, kernel_bytes: bytes, kver: str, image: Path) -> None:
    again = uki.build_uki(stub, kernel_bytes, INITRD, CMDLINE, OSREL, kver)
    assert again == image.read_bytes()


@needs_stub
def test_uname_is_optional(stub: bytes, kernel_bytes: bytes) -> None:
    data = uki.build_uki(stub, kernel_bytes, INITRD, CMDLINE, OSREL, None)
    assert [s.name for s in uki.read_uki(data)][-4:] == [".osrel", ".cmdline", ".initrd", ".linux"]


@needs_stub
def test_sbverify_parses_the_unsigned_image(image: Path) -> None:
    _need("sbverify")
    cp = _run("sbverify", "--list", image)
    assert cp.returncode == 0, cp.stderr
    assert "No signature table present" in cp.stdout + cp.stderr


@needs_stub
def test_signed_image_verifies(image: Path, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    _need("sbsign")
    _need("sbverify")
    key, cert = keypair
    signed = tmp_path / "signed.efi"
    uki.sign_uki(image, signed, key=key, cert=cert)
    cp = _run("sbverify", "--cert", cert, signed)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "Signature verification OK" in cp.stdout + cp.stderr
    listing = _run("sbverify", "--list", signed)
    assert "signature 1" in listing.stdout
    # the signature is appended after the sections: they read back unchanged
    assert uki.read_uki(signed.read_bytes()) == uki.read_uki(image.read_bytes())
    # negative oracle: a certificate that did not sign it is rejected
    other_key, other_cert = tmp_path / "o.key", tmp_path / "o.crt"
    _run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=someone else/", "-keyout", other_key, "-out", other_cert,
    )  # fmt: skip
    assert _run("sbverify", "--cert", other_cert, signed).returncode != 0
    # a signed stub is refused: appending sections would break its signature
    with pytest.raises(FormatError, match="already signed"):
        pe.append_sections(signed.read_bytes(), [pe.NewSection(".x", b"x")])


@needs_stub
def test_grows_the_header_area_when_the_table_is_full(stub: bytes, tmp_path: Path) -> None:
    img = pe.parse(stub)
    free = (img.optional_header.SizeOfHeaders - img.section_table_offset) // 40 - len(img.sections)
    new = [pe.NewSection(f".x{i}", bytes([i]) * (i + 1)) for i in range(free + 20)]
    out = tmp_path / "grown.efi"
    out.write_bytes(pe.append_sections(stub, new))
    grown = pe.parse(out.read_bytes())
    assert grown.optional_header.SizeOfHeaders > img.optional_header.SizeOfHeaders
    assert [n for n, *_ in objdump_sections(out)] == [s.name for s in img.sections] + [n.name for n in new]
    for old in img.sections:  # moved in the file, same place in memory, same bytes
        moved = grown.section(old.name)
        assert moved.VirtualAddress == old.VirtualAddress
        assert grown.section_data(moved) == img.section_data(old)
    for n in new[-3:]:
        cp = _run("objcopy", "-O", "binary", f"--only-section={n.name}", out, tmp_path / "s")
        assert cp.returncode == 0 and (tmp_path / "s").read_bytes() == n.data


@needs_stub
def test_fails_clearly_when_headers_would_overlap_the_first_section(stub: bytes) -> None:
    first = min(s.VirtualAddress for s in pe.parse(stub).sections)
    new = [pe.NewSection(f".y{i}", b"y") for i in range(first // 40)]
    with pytest.raises(FormatError, match="no room for .* more section headers"):
        pe.append_sections(stub, new)


@needs_stub
@pytest.mark.parametrize("name", ["", ".toolong_", ".ä"])
def test_section_names_must_fit(stub: bytes, name: str) -> None:
    with pytest.raises(FormatError, match="section name"):
        pe.append_sections(stub, [pe.NewSection(name, b"x")])


@needs_stub
def test_inputs_are_checked(stub: bytes, kernel_bytes: bytes, image: Path) -> None:
    with pytest.raises(FormatError, match="not a PE image"):
        uki.build_uki(stub, b"not a kernel" * 10, INITRD, CMDLINE, OSREL, None)
    with pytest.raises(FormatError, match="already has UKI sections"):
        uki.build_uki(image.read_bytes(), kernel_bytes, INITRD, CMDLINE, OSREL, None)
    with pytest.raises(FormatError, match="not a PE image"):
        uki.read_uki(INITRD)


def test_checksum_matches_the_kernel_builds_own(kernel: Path) -> None:
    """Debian's signed kernel carries a CheckSum written by other tools: an independent oracle."""
    data = kernel.read_bytes()
    img = pe.parse(data)
    if img.optional_header.CheckSum == 0:
        pytest.skip("this kernel has no CheckSum")
    assert pe.pe_checksum(data, img.optional_header_offset + pe.CHECKSUM_FIELD_OFFSET) == (
        img.optional_header.CheckSum
    )


def test_parse_rejects_truncated_and_pe32() -> None:
    with pytest.raises(FormatError, match="no 'MZ'"):
        pe.parse(b"MZ")
    head = bytearray(0x200)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, pe.E_LFANEW_OFFSET, 0x40)
    head[0x40:0x44] = pe.PE_SIGNATURE
    struct.pack_into("<H", head, 0x40 + 24, 0x10B)
    with pytest.raises(FormatError, match="only PE32\\+"):
        pe.parse(bytes(head))

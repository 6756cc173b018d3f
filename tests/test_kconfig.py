"""kconfig: the installed kernels' /boot/config files and vmlinuz images as oracles, plus synthetic
configs.ko and kernel images built with the compressors' own CLIs (as the kernel's Makefiles do)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from initbuild.errors import FormatError
from initbuild.resolve import kconfig
from initbuild.resolve.kconfig import (
    KernelFeatures,
    Tristate,
    image_ikconfig,
    kernel_features,
    parse_config,
    read_kernel_config,
)
from initbuild.sysroot import Sysroot

OLD, NEW = "6.1.0-57-cloud-amd64", "6.12.117+deb12-cloud-amd64"
SAMPLE = (
    "#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_EROFS_FS=m\nCONFIG_EROFS_FS_ZIP=y\n"
    "# CONFIG_EROFS_FS_ZIP_LZMA is not set\nCONFIG_EROFS_FS_BACKED_BY_FILE=y\nCONFIG_OVERLAY_FS=y\n"
    'CONFIG_RD_ZSTD=y\nCONFIG_MODULE_COMPRESS_ZSTD=y\nCONFIG_LOCALVERSION="-test \\"q\\""\n'
    "CONFIG_NR_CPUS=64\nCONFIG_PHYSICAL_START=0x1000000\nCONFIG_ILLEGAL_POINTER_VALUE=-1\n"
)
KERNEL_CLI = {"gzip": ["gzip", "-n", "-9", "-c"], "xz": ["xz", "--check=crc32", "--x86", "--lzma2", "-c"]}
KERNEL_CLI |= {"zstd": ["zstd", "-q", "-19", "-c"], "lz4": ["lz4", "-l", "-9", "-c"]}


def real_config(kver: str) -> Path:
    path = Path(f"/boot/config-{kver}")
    if not path.is_file():
        pytest.skip(f"kernel {kver} is not installed ({path} missing)")
    return path


def cli(fmt: str, data: bytes) -> bytes:
    if shutil.which(KERNEL_CLI[fmt][0]) is None:
        pytest.skip(f"{KERNEL_CLI[fmt][0]} CLI not installed")
    return subprocess.run(KERNEL_CLI[fmt], input=data, capture_output=True, check=True).stdout


def ikconfig_blob(text: str, pad: int = 4096) -> bytes:
    """What kernel/configs.c puts in .rodata, between unrelated bytes."""
    junk = bytes(range(256)) * (pad // 256)
    return junk + b"IKCFG_ST" + gzip.compress(text.encode(), mtime=0) + b"IKCFG_ED" + junk


def bzimage(payload: bytes, setup_sects: int = 3, payload_offset: int = 0x2CC) -> bytes:
    """A minimal x86 bzImage: setup header (boot protocol 2.15) then the protected-mode part."""
    setup = bytearray(b"MZ" + bytes((setup_sects + 1) * 512 - 2))
    setup[0x1F1] = setup_sects
    setup[0x202:0x208] = b"HdrS" + struct.pack("<H", 0x020F)
    setup[0x248:0x250] = struct.pack("<II", payload_offset, len(payload))
    return bytes(setup) + b"\x90" * payload_offset + payload + b"\xcc" * 1000


def sized(fmt: str, vmlinux: bytes) -> bytes:
    """The payload as arch/x86/boot/compressed/Makefile builds it: compressed, then le32 size (not gzip)."""
    data = cli(fmt, vmlinux)
    return data if fmt == "gzip" else data + struct.pack("<I", len(vmlinux))


def put(root: Path, path: str, data: bytes) -> None:
    (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / path.lstrip("/")).write_bytes(data)


# -- parsing ---------------------------------------------------------------------------------------


def test_parse_sample() -> None:
    cfg = parse_config(SAMPLE, "sample")
    assert cfg.tristate("EROFS_FS") is Tristate.MODULE and cfg.tristate("CONFIG_EROFS_FS") is Tristate.MODULE
    assert cfg.tristate("OVERLAY_FS") is Tristate.BUILTIN
    assert cfg.tristate("EROFS_FS_ZIP_LZMA") is Tristate.ABSENT and cfg.value("EROFS_FS_ZIP_LZMA") is None
    assert cfg.tristate("NOT_THERE") is Tristate.ABSENT and cfg.tristate("NR_CPUS") is Tristate.ABSENT
    assert cfg.value("LOCALVERSION") == '"-test \\"q\\""'
    assert cfg.value("CONFIG_NR_CPUS") == "64" and cfg.value("PHYSICAL_START") == "0x1000000"
    assert "CONFIG_EROFS_FS_ZIP_LZMA" not in cfg.options and len(cfg.options) == 10


def test_later_line_wins_and_not_set_unsets() -> None:
    cfg = parse_config("CONFIG_A=y\nCONFIG_A=m\nCONFIG_B=y\n# CONFIG_B is not set\nCONFIG_C=n\n", "x")
    assert cfg.tristate("A") is Tristate.MODULE and cfg.value("B") is None
    assert cfg.tristate("C") is Tristate.ABSENT and cfg.value("C") == "n"


@pytest.mark.parametrize(
    "bad", ["CONFIG_FOO", "FOO=y", "CONFIG_FOO=yes", 'CONFIG_S="open', "CONFIG_X=1 2", "CONFIG_=y", "junk"]
)
def test_malformed_line_names_source_and_line(bad: str) -> None:
    with pytest.raises(FormatError) as e:
        parse_config(f"# header\nCONFIG_OK=y\n\n{bad}\nCONFIG_LATER=m\n", "/boot/config-x")
    assert e.value.location is not None and e.value.location.line == 4
    assert str(e.value).startswith("/boot/config-x:4: ") and "line 4" in str(e.value)


NAMES = st.from_regex(r"CONFIG_[A-Z0-9_]{1,24}", fullmatch=True)
VALUES = st.one_of(
    st.sampled_from(["y", "m", "n"]),
    st.integers(-(2**40), 2**40).map(str),
    st.integers(0, 2**64).map(hex),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=30).map(
        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
)


@given(st.dictionaries(NAMES, VALUES, max_size=30), st.lists(NAMES, max_size=10))
@example({"CONFIG_S": '"a\x85b\u2028c\x0c"'}, [])  # line breaks to str.splitlines, not to kconfig
@settings(max_examples=150, deadline=None)
def test_parse_round_trip(options: dict[str, str], unset: list[str]) -> None:
    lines = ["#", "# generated", "#"]
    lines += [f"# {n} is not set" for n in unset if n not in options]
    lines += [f"{k}={v}" for k, v in options.items()] + [""]
    assert dict(parse_config("\n".join(lines), "h").options) == options


# -- the installed kernels ---------------------------------------------------------------------------


@pytest.mark.parametrize("kver", [OLD, NEW])
def test_every_set_line_of_real_config_is_read(kver: str) -> None:
    path = real_config(kver)
    cfg = read_kernel_config(Sysroot("/"), kver)
    assert cfg is not None and cfg.source == str(path)
    set_lines = re.findall(r"^(CONFIG_\w+)=(.*)$", path.read_text(), re.M)
    assert dict(set_lines) == dict(cfg.options) and len(set_lines) == len(cfg.options)
    for name, value in set_lines:
        if value in ("y", "m"):
            assert cfg.tristate(name) is Tristate(value)
    for name in re.findall(r"^# (CONFIG_\w+) is not set$", path.read_text(), re.M):
        assert cfg.tristate(name) is Tristate.ABSENT


def test_features_linux_6_12() -> None:
    real_config(NEW)
    f = kernel_features(Sysroot("/"), NEW)
    assert f.config_source == f"/boot/config-{NEW}" and f.erofs_file_backed
    assert f.erofs_algorithms == {"lz4", "lzma", "deflate", "zstd"} and f.module_compression == "xz"
    assert f.erofs is f.overlay is f.loop is f.dm is f.dm_verity is Tristate.MODULE and f.module_sig
    assert {"none", "gzip", "xz", "lz4", "zstd"} <= f.rd_compressions
    assert "file-backed EROFS mounts: yes (EROFS_FS_BACKED_BY_FILE=y)" in f.describe()
    assert "erofs: module (EROFS_FS=m)" in f.describe()
    assert json.loads(json.dumps(f.to_dict()))["erofs_algorithms"] == ["deflate", "lz4", "lzma", "zstd"]


def test_features_linux_6_1() -> None:
    real_config(OLD)
    f = kernel_features(Sysroot("/"), OLD)
    assert not f.erofs_file_backed and f.erofs_algorithms == {"lz4"} and f.module_compression is None
    assert f.erofs is Tristate.MODULE
    assert any(line.startswith("file-backed EROFS mounts: no") for line in f.describe())


@pytest.mark.parametrize("kver", [OLD, NEW])
def test_real_vmlinuz_payload(kver: str) -> None:
    """The real bzImage's payload inflates to an ELF exactly as long as the size the kernel build
    appended; its IKCONFIG is found if and only if its /boot config has IKCONFIG."""
    cfg = parse_config(real_config(kver).read_text(), "real")
    image = Path(f"/boot/vmlinuz-{kver}").read_bytes()
    payload = next(kconfig._payloads(image))
    pieces = list(kconfig._inflate(payload))
    assert pieces[0][:4] == b"\x7fELF"
    assert sum(map(len, pieces)) == struct.unpack("<I", payload[-4:])[0]
    text = image_ikconfig(image)
    if cfg.tristate("IKCONFIG") is Tristate.ABSENT:
        assert text is None
    else:
        assert text is not None and parse_config(text, "ik").options == cfg.options


def test_real_configs_ko() -> None:
    found = sorted(Path("/lib/modules").glob("*/kernel/kernel/configs.ko*"))
    if not found:
        pytest.skip("no installed kernel has CONFIG_IKCONFIG=m (no /lib/modules/*/kernel/kernel/configs.ko*)")
    for ko in found:
        kver = ko.parts[3]
        cfg = read_kernel_config(Sysroot("/"), kver)
        assert cfg is not None
        if Path(f"/boot/config-{kver}").is_file():
            via_ko = kconfig._ikconfig([kconfig.decompress_all(ko.read_bytes())])
            assert via_ko is not None and parse_config(via_ko, "ko").options == cfg.options


# -- IKCONFIG in a fake sysroot ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ko", ".ko.gz", ".ko.xz", ".ko.zst"])
def test_configs_ko(tmp_path: Path, suffix: str) -> None:
    blob = b"\x7fELF" + bytes(60) + ikconfig_blob(SAMPLE)
    fmt = {".ko": None, ".ko.gz": "gzip", ".ko.xz": "xz", ".ko.zst": "zstd"}[suffix]
    path = f"/lib/modules/9.9/kernel/kernel/configs{suffix}"
    put(tmp_path, path, blob if fmt is None else cli(fmt, blob))
    cfg = read_kernel_config(Sysroot(tmp_path), "9.9")
    assert cfg is not None and cfg.source == f"{path} IKCONFIG"
    assert cfg.options == parse_config(SAMPLE, "s").options
    f = kernel_features(Sysroot(tmp_path), "9.9")
    assert f.config_source == cfg.source and f.erofs_file_backed and f.module_compression == "zstd"
    assert f.erofs_algorithms == {"lz4"} and f.rd_compressions == {"none", "zstd"}


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd", "lz4"])
def test_bzimage(tmp_path: Path, fmt: str) -> None:
    # 3 MiB of vmlinux before the config: it lies past the first pieces the decompressor yields
    vmlinux = b"\x7fELF" + bytes(range(256)) * (3 << 12) + ikconfig_blob(SAMPLE) + bytes(1 << 20)
    put(tmp_path, "/boot/vmlinuz-9.9", bzimage(sized(fmt, vmlinux)))
    cfg = read_kernel_config(Sysroot(tmp_path), "9.9")
    assert cfg is not None and cfg.source == "/boot/vmlinuz-9.9 IKCONFIG"
    assert cfg.options == parse_config(SAMPLE, "s").options


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd", "lz4"])
def test_image_without_boot_header(fmt: str) -> None:
    """An arm64 Image.gz (the whole file is the stream) and a stream after other bytes."""
    vmlinux = b"ARMd" + bytes(5000) + ikconfig_blob(SAMPLE)
    stream = cli(fmt, vmlinux)
    for image in (stream, b"\x1f\x8b\x08 not gzip " + stream + b"trailer"):
        text = image_ikconfig(image)
        assert text is not None and parse_config(text, "i").options == parse_config(SAMPLE, "s").options


def test_uncompressed_image_and_none() -> None:
    assert image_ikconfig(ikconfig_blob(SAMPLE)) == SAMPLE
    assert image_ikconfig(bzimage(sized("zstd", b"\x7fELF" + bytes(100_000)))) is None
    assert image_ikconfig(b"") is None


@given(st.lists(st.integers(0, 20_000), max_size=8))
@settings(max_examples=100, deadline=None)
def test_ikconfig_found_across_any_chunking(cuts: list[int]) -> None:
    blob = ikconfig_blob(SAMPLE, pad=8192)
    edges = [0, *sorted(c % (len(blob) + 1) for c in cuts), len(blob)]
    assert kconfig._ikconfig(blob[a:b] for a, b in zip(edges, edges[1:], strict=False)) == SAMPLE


def test_corrupt_or_truncated_ikconfig() -> None:
    good = ikconfig_blob(SAMPLE)
    with pytest.raises(FormatError, match="truncated"):
        kconfig._ikconfig([good[: good.index(b"IKCFG_ED") - 20]])
    with pytest.raises(FormatError, match="corrupt"):
        kconfig._ikconfig([b"IKCFG_ST\x1f\x8b\x08\x00" + b"\xff" * 64])
    with pytest.raises(FormatError, match="corrupt"):  # in a decompressed payload: reported
        image_ikconfig(bzimage(sized("zstd", b"IKCFG_ST\x1f\x8b\x08\x00" + b"\xff" * 64)))
    assert image_ikconfig(b"IKCFG_ST\x1f\x8b\x08\x00" + b"\xff" * 64) is None  # raw bytes: a false match


def test_source_order_and_corrupt_module(tmp_path: Path) -> None:
    root = Sysroot(tmp_path)
    put(tmp_path, "/boot/vmlinuz-9.9", bzimage(sized("gzip", ikconfig_blob("CONFIG_FROM=y\n"))))
    put(tmp_path, "/lib/modules/9.9/kernel/kernel/configs.ko", b"IKCFG_ST\x1f\x8b\x08\x00garbage")
    cfg = read_kernel_config(root, "9.9")  # the corrupt module is passed over (with a warning)
    assert cfg is not None and cfg.source == "/boot/vmlinuz-9.9 IKCONFIG" and cfg.value("FROM") == "y"
    put(tmp_path, "/lib/modules/9.9/kernel/kernel/configs.ko.xz", cli("xz", ikconfig_blob("CONFIG_KO=m\n")))
    assert read_kernel_config(root, "9.9").value("KO") == "m"  # type: ignore[union-attr]
    put(tmp_path, "/boot/config-9.9", b"CONFIG_FILE=y\n")
    assert read_kernel_config(root, "9.9").source == "/boot/config-9.9"  # type: ignore[union-attr]
    put(tmp_path, "/boot/config-9.9", b"CONFIG_FILE=y\nbroken\n")
    with pytest.raises(FormatError, match="line 2"):
        read_kernel_config(root, "9.9")


def test_no_config_is_conservative(tmp_path: Path) -> None:
    put(tmp_path, "/boot/vmlinuz-9.9", bzimage(sized("lz4", b"\x7fELF" + bytes(10_000))))
    f = kernel_features(Sysroot(tmp_path), "9.9")
    assert f == KernelFeatures("9.9", None) and f.config_source is None
    assert f.erofs is f.overlay is f.loop is f.dm is f.dm_verity is Tristate.MODULE
    assert not f.erofs_file_backed and f.erofs_algorithms == {"lz4"} and f.rd_compressions == {"none", "gzip"}
    assert f.module_compression is None and not f.module_sig
    assert f.describe()[0].startswith("kernel config: none found for 9.9")
    assert all(line.endswith("(assumed)") for line in f.describe()[1:7])
    assert json.loads(json.dumps(f.to_dict()))["config_source"] is None

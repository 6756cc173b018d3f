"""The compression stream layer against the reference CLIs (gzip, xz, zstd, lz4) and kernel rules."""

from __future__ import annotations

import io
import os
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import CLI_DECOMPRESS, COMPRESSED

from initbuild.errors import FormatError
from initbuild.formats import compress as c
from initbuild.formats.compress import Compression
from initbuild.profile import Compression as Profile_Compression
from initbuild.run import have_tool, run

CLI_COMPRESS = {
    Compression.GZIP: ["gzip", "-9nc"],
    Compression.XZ: ["xz", "-c", "--check=crc32"],
    Compression.ZSTD: ["zstd", "-cq", "-9"],
    Compression.LZ4: ["lz4", "-c", "-l", "-9"],
}

# The first bytes of each format for an empty input, reviewed by hand:
GOLDEN_HEAD = {
    # gzip: magic, CM=8 (deflate), FLG=0 (no name), MTIME=0, XFL=2 (best compression), OS=3 (Unix)
    Compression.GZIP: "1f8b08000000000002 03",
    # xz: magic, stream flags 00 01 = check type 1 (CRC32, the only check the kernel verifies)
    Compression.XZ: "fd377a585a00 0001",
    # zstd: magic, frame header descriptor 0x04: checksum flag set, no content size, single segment off
    Compression.ZSTD: "28b52ffd 04",
    # lz4 legacy: magic 0x184C2102 little-endian and nothing else (empty input has no block)
    Compression.LZ4: "02214c18",
}


def _sample(n: int, seed: int = 1) -> bytes:
    """Compressible but not trivial data: text-like runs with random bytes mixed in."""
    rng = random.Random(seed)
    words = [bytes(rng.randrange(97, 123) for _ in range(rng.randrange(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
        if rng.random() < 0.02:
            out += rng.randbytes(16)
    return bytes(out[:n])


def _need(tool: str) -> None:
    if not have_tool(tool):
        pytest.skip(f"{tool} is not installed")


# -- enum and detection -----------------------------------------------------------------------------


def test_enum_properties() -> None:
    assert [str(x) for x in Compression] == ["none", "gzip", "xz", "zstd", "lz4"]
    for x in Compression:
        assert c.DEFAULT_LEVEL[x] in x.levels
    assert c.MAGIC[Compression.LZ4] == bytes.fromhex("02214c18")
    assert Compression is Profile_Compression  # one enum for the choice, shared by profile and writer


@pytest.mark.parametrize("compression", COMPRESSED)
def test_golden_head_and_detect(compression: Compression) -> None:
    out = c.compress(b"", compression)
    golden = bytes.fromhex(GOLDEN_HEAD[compression].replace(" ", ""))
    assert out[: len(golden)] == golden
    assert c.detect(out) is compression
    assert c.detect(c.compress(b"some data", compression)) is compression


def test_detect_unknown() -> None:
    assert c.detect(b"") is None
    assert c.detect(b"070701") is None  # an uncompressed cpio archive
    assert c.detect(bytes.fromhex("04224d18")) is None  # the modern lz4 frame: the kernel can't read it
    assert c.detect(b"\x1f") is None  # too short to tell


def test_level_checked() -> None:
    with pytest.raises(FormatError, match="level 0 is not in 1..22"):
        c.compress(b"x", Compression.ZSTD, 0)
    with pytest.raises(FormatError, match="level 13"):
        c.compress(b"x", Compression.LZ4, 13)


# -- round trips through the reference tools --------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSED)
def test_cli_decompresses_ours(compression: Compression) -> None:
    _need(CLI_DECOMPRESS[compression][0])
    data = _sample(300_000)
    ours = c.compress(data, compression)
    assert run(CLI_DECOMPRESS[compression], input=ours).stdout == data
    assert len(ours) < len(data) // 2


@pytest.mark.parametrize("compression", COMPRESSED)
def test_we_decompress_cli(compression: Compression) -> None:
    _need(CLI_COMPRESS[compression][0])
    data = _sample(200_000, seed=2)
    theirs = run(CLI_COMPRESS[compression], input=data).stdout
    assert c.detect(theirs) is compression
    assert c.decompress_all(theirs) == data


def test_xz_check_is_crc32(tmp_path: os.PathLike[str]) -> None:
    """The kernel's xz decoder verifies only CRC32 (or no check); `xz -lvv` must report CRC32."""
    _need("xz")
    path = os.path.join(tmp_path, "a.xz")
    with open(path, "wb") as f:
        f.write(c.compress(_sample(100_000), Compression.XZ))
    listing = run(["xz", "-lvv", path]).stdout.decode()
    assert "CRC32" in listing
    assert "CRC64" not in listing and "SHA-256" not in listing
    assert "--lzma2=dict=8MiB" in listing  # one LZMA2 filter, no BCJ; preset 6's dictionary
    assert "--x86" not in listing


def test_lz4_legacy_identical_to_cli_multiblock() -> None:
    """> 8 MiB: several legacy blocks; byte for byte what `lz4 -9 -l` (booster's reference) writes."""
    _need("lz4")
    data = _sample(c.LZ4_LEGACY_BLOCK_SIZE * 2 + 12345, seed=3)
    ours = c.compress(data, Compression.LZ4)
    assert ours == run(["lz4", "-9", "-l", "-c"], input=data).stdout
    assert run(["lz4", "-dc"], input=ours).stdout == data
    # walk the framing: magic, then three blocks, each at most 8 MiB of input
    pos, blocks = 4, 0
    while pos < len(ours):
        size = int.from_bytes(ours[pos : pos + 4], "little")
        assert 0 < size <= c.LZ4_MAX_CHUNK
        pos += 4 + size
        blocks += 1
    assert (pos, blocks) == (len(ours), 3)


@pytest.mark.parametrize("compression", list(Compression))
def test_large_streaming_round_trip(compression: Compression) -> None:
    """> 8 MiB written in odd-sized pieces equals the one-shot result and decompresses back."""
    data = _sample(c.LZ4_LEGACY_BLOCK_SIZE + 777_777, seed=4)
    buf = io.BytesIO()
    fast = compression in (Compression.XZ, Compression.ZSTD)  # their default levels take seconds here
    with c.open_compressor(buf, compression, compression.levels.start if fast else None) as w:
        for i in range(0, len(data), 1_000_003):
            w.write(data[i : i + 1_000_003])
    assert w.bytes_in == len(data) and w.bytes_out == len(buf.getvalue())
    if compression in (Compression.NONE, Compression.LZ4, Compression.GZIP):  # deterministic framing
        assert buf.getvalue() == c.compress(data, compression)
    assert c.decompress_all(buf.getvalue()) == data
    if compression is not Compression.NONE:
        assert run(CLI_DECOMPRESS[compression], input=buf.getvalue()).stdout == data


def test_lz4_encoder_memory_is_one_block() -> None:
    enc = c._Lz4LegacyEncoder(9)
    chunk = b"x" * (3 << 20)
    for _ in range(7):
        enc.compress(chunk)
        assert len(enc._buf) < c.LZ4_LEGACY_BLOCK_SIZE


def test_output_not_closed_and_reproducible() -> None:
    for compression in Compression:
        outs = []
        for _ in range(2):
            buf = io.BytesIO()
            with c.open_compressor(buf, compression) as w:
                w.write(b"hello " * 1000)
            assert not buf.closed
            outs.append(buf.getvalue())
        assert outs[0] == outs[1], compression


# -- stream ends, as the kernel sees them -----------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSED)
def test_stream_end_is_found(compression: Compression) -> None:
    """decompress_stream reports where a stream ends, so a following segment can be found."""
    data = _sample(50_000)
    comp = c.compress(data, compression)
    tail = (c.LZ4_END_OF_STREAM if compression is Compression.LZ4 else b"") + b"070701rest"
    dec = c.decompress_stream(b"\0" * 8 + comp + tail, 8)
    assert (dec.compression, dec.data, dec.end) == (compression, data, 8 + len(comp))


def test_lz4_end_rules_of_unlz4() -> None:
    """lib/decompress_unlz4.c: a repeated magic is skipped; fewer than 4 bytes or a zero size end it."""
    a, b = _sample(1000, 5), _sample(2000, 6)
    ca, cb = c.compress(a, Compression.LZ4), c.compress(b, Compression.LZ4)
    assert c.decompress_stream(ca + cb).data == a + b
    assert c.decompress_stream(ca + b"\0\0\0").end == len(ca)
    assert c.decompress_stream(ca + c.LZ4_END_OF_STREAM + b"junk").end == len(ca)


@pytest.mark.parametrize("compression", COMPRESSED)
def test_corrupt_and_truncated(compression: Compression) -> None:
    data = _sample(100_000)
    comp = c.compress(data, compression)
    with pytest.raises(FormatError):
        c.decompress_stream(comp[: len(comp) // 2])
    bad = bytearray(comp)
    for i in range(len(bad) // 3, len(bad) // 3 + 16):
        bad[i] ^= 0x5A
    if compression is Compression.LZ4:
        # legacy lz4 has no checksum: flipped literals decode to wrong data, or fail, but never hang
        try:
            assert c.decompress_all(bytes(bad)) != data
        except FormatError:
            pass
        bad = bytearray(comp)
        bad[4:8] = (c.LZ4_MAX_CHUNK + 1).to_bytes(4, "little")  # the first chunk size
        with pytest.raises(FormatError, match="too large") as e:
            c.decompress_all(bytes(bad))
        assert (e.value.offset, e.value.field) == (4, "chunk size")
        return
    with pytest.raises(FormatError):
        c.decompress_all(bytes(bad))


def test_unknown_magic_is_format_error() -> None:
    with pytest.raises(FormatError, match="magic") as e:
        c.decompress_stream(b"\0\0PK\3\4", 2)
    assert e.value.offset == 2


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=5000), compression=st.sampled_from(list(Compression)), split=st.integers(1, 700)
)
def test_round_trip_property(data: bytes, compression: Compression, split: int) -> None:
    buf = io.BytesIO()
    with c.open_compressor(buf, compression) as w:
        for i in range(0, len(data), split):
            w.write(data[i : i + split])
    out = buf.getvalue()
    if compression is Compression.NONE:
        assert out == data
    else:
        assert c.decompress_stream(out).data == data


def test_parallel_compression_does_not_change_the_bytes() -> None:
    """lz4 blocks are compressed on a thread pool and zstd runs multi-threaded: the output must be
    the same for any number of workers (reproducible images on any machine), and decode."""
    from initbuild.formats.compress import LZ4_LEGACY_BLOCK_SIZE, _Lz4LegacyEncoder

    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(2, 9))) for _ in range(500)]
    data = b" ".join(rnd.choice(words) for _ in range(3 * LZ4_LEGACY_BLOCK_SIZE // 5))
    assert len(data) > 2 * LZ4_LEGACY_BLOCK_SIZE  # three blocks, the last partial
    outs = set()
    for workers in (1, 2, 3):
        enc = _Lz4LegacyEncoder(9, workers=workers)
        step = 1 << 20
        outs.add(b"".join(enc.compress(data[i : i + step]) for i in range(0, len(data), step)) + enc.flush())
    assert len(outs) == 1
    assert c.decompress_all(outs.pop()) == data
    # ours (threads=-1: one per CPU) equals zstd with one worker and with four
    ours = c.compress(data, Compression.ZSTD, 3)
    for threads in (1, 4):
        zc = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=False, threads=threads)
        obj = zc.compressobj()
        assert obj.compress(data) + obj.flush() == ours, threads

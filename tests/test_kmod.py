"""KernelModules: modprobe/modinfo/depmod of the installed kernel as oracles, plus a fake module tree."""

from __future__ import annotations

import gzip
import lzma
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from initbuild import run
from initbuild.errors import ResolveError
from initbuild.resolve.kmod import KernelModules, Kmod, WildAliases, normalize
from initbuild.resolve.modfile import MODULE_SIG_STRING, module_signature, pkcs7_digest_algo, read_modinfo
from initbuild.resolve.modindex import binary_indexes, index_files
from initbuild.sysroot import Sysroot, strip_compression

DATA = Path(__file__).parent / "data" / "elf"

# Modules an initoverlayfs image loads, with and without softdeps; names may be aliases.
IMPORTANT = [
    "libcrc32c", "erofs", "fs-erofs", "ext4", "virtio_blk", "virtio_pci", "virtio-pci", "overlay",
    "loop", "nvme", "ahci", "sd_mod", "xfs", "btrfs", "crc32c", "crypto-crc32c", "nd_pmem",
    "virtio_pmem", "virtio:d00000002v00001AF4", "dm-crypt",
]  # fmt: skip


# Tests of the installed module trees take the `kver` fixture (tests/conftest.py): once per kernel.
needs_modprobe = pytest.mark.skipif(not run.have_tool("modprobe"), reason="kmod's modprobe is not installed")


def modprobe_show_depends(kver: str, name: str) -> tuple[list[str], list[str]] | None:
    """(insmod paths, builtin names) as `modprobe --show-depends` prints them, first occurrences only."""
    cp = run.run(["modprobe", "-S", kver, "--show-depends", name], check=False)
    if cp.returncode != 0:
        return None
    paths, builtin = [], []
    for line in cp.stdout.decode().splitlines():
        words = line.split()
        if words[:1] == ["insmod"]:
            paths.append(words[1])
        elif words[:1] == ["builtin"]:
            builtin.append(words[1])
    return list(dict.fromkeys(paths)), list(dict.fromkeys(builtin))


def assert_deps_first(mods: list[Kmod]) -> None:
    seen: set[str] = set()
    for m in mods:
        assert set(m.deps) <= seen, f"{m.name} comes before its deps {set(m.deps) - seen}"
        seen.add(m.name)


@needs_modprobe
def test_resolve_matches_modprobe_on_the_whole_tree(kver: str) -> None:
    """Every module of the installed kernel, some aliases and builtins: same modules, same order."""
    km = KernelModules(Sysroot("/"), kver)
    names = [*IMPORTANT, *km.all_modules(), *sorted(km._builtin)[:30]]
    compared = 0
    for name in names:
        expected = modprobe_show_depends(kver, name)
        if expected is None:
            with pytest.raises(ResolveError):
                km.resolve([name])
            continue
        res = km.resolve([name])
        assert ([m.source for m in res.modules], res.builtin) == expected, name
        assert all(m.path == strip_compression(m.source) and m.path.endswith(".ko") for m in res.modules)
        assert_deps_first(res.modules)
        compared += 1
    assert compared >= 10
    if "libcrc32c" in km.all_modules():
        # the softdep case from boot-notes.md: "softdep libcrc32c pre: crc32c" puts crc32c first
        order = [m.name for m in km.resolve(["erofs"]).modules]
        assert order[-2:] == ["libcrc32c", "erofs"]
        crc32c = [f.name for f in km.lookup("crc32c") if not f.builtin]
        assert set(crc32c) <= set(order[:-2])


@needs_modprobe
def test_firmware_matches_modinfo(kver: str) -> None:
    assert run.have_tool("modinfo")
    km = KernelModules(Sysroot("/"), kver)
    with_fw = [n for n in km.all_modules() if km.kmod(n).firmware]
    if not with_fw:
        pytest.skip("no module of this kernel declares firmware")
    for name in with_fw + km.all_modules()[:20]:
        kmod = km.kmod(name)
        cp = run.run(["modinfo", "-k", kver, "-F", "firmware", kmod.source])
        assert list(kmod.firmware) == cp.stdout.decode().split(), name


@needs_modprobe
def test_index_files_subset_agrees_with_depmod(tmp_path: Path, kver: str) -> None:
    """Stage a few modules as an image holds them (decompressed .ko) with our index files, then: our
    resolver on the staged tree gives the same answer, and depmod run on the staged .ko files computes
    the same modules.dep."""
    km = KernelModules(Sysroot("/"), kver)
    res = km.resolve(["erofs", "virtio_blk", "overlay", "loop"], optional=["no-such-module"])
    assert res.missing_optional == ["no-such-module"]
    files = index_files(km, res.modules)
    assert not any(n.endswith(".bin") for n in files)
    moddir = tmp_path / "lib/modules" / kver
    assert ".ko.xz" not in files["modules.dep"].decode() and ".ko.zst" not in files["modules.dep"].decode()
    for m in res.modules:
        dst = tmp_path / m.path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Sysroot("/").read_decompressed(m.source))
    for name, content in files.items():
        (moddir / name).write_bytes(content)
    staged = KernelModules(Sysroot(tmp_path), kver)
    assert sorted(staged.all_modules()) == sorted(m.name for m in res.modules)
    again = staged.resolve(["erofs", "virtio_blk", "overlay", "loop"])
    assert [m.path for m in again.modules] == [m.path for m in res.modules]
    assert [m.source for m in again.modules] == [m.path for m in res.modules]  # nothing compressed
    if not run.have_tool("depmod"):
        return
    ours = (moddir / "modules.dep").read_text()
    run.run(["depmod", "-b", tmp_path, kver])
    assert sorted((moddir / "modules.dep").read_text().splitlines()) == sorted(ours.splitlines())


# -- a fake module tree ----------------------------------------------------------------------------
FAKE_KVER = "1.2.3-test"
DEP = [
    "kernel/a.ko: kernel/b.ko kernel/c.ko",  # a needs b needs c: the line lists the deepest last
    "kernel/b.ko: kernel/c.ko",
    "kernel/c.ko:",
    "kernel/drivers/block/blk-x.ko.xz:",
    "kernel/drivers/block/sub/blk-y.ko.zst:",
    "kernel/drivers/net/net-z.ko.gz:",
    "kernel/fs/fsz.ko: kernel/lib/libz.ko",
    "kernel/lib/libz.ko:",
    "kernel/pre1.ko:",
    "kernel/post1.ko:",
    "kernel/s1.ko:",
    "kernel/s2.ko:",
    "kernel/cyc1.ko: kernel/cyc2.ko",
    "kernel/cyc2.ko: kernel/cyc1.ko",
    "kernel/fwmod.ko:",
]
ALIAS = [
    "# Aliases extracted from modules themselves.",
    "alias pci:v00001234d*sv*sd*bc01sc*i* blk_x",
    "alias fs-fsz fsz",
    "alias fs-fsz2 fsz",
    "alias virtio:d0000000[1-3]v* net_z",
]
SOFTDEP = [
    "# Soft dependencies extracted from modules themselves.",
    "softdep a pre: pre1 post: post1",
    "softdep libz pre: crypto-crc99",  # a builtin module, through its builtin alias
    "softdep s1 pre: s2",  # softdep cycle: harmless, the visited set stops it
    "softdep s2 pre: s1",
    "softdep c ignored pre: nowhere",  # words before pre: are ignored; "nowhere" only warns
]
BUILTIN = ["kernel/fs/ext9/ext9.ko", "kernel/crypto/crc99.ko"]
BUILTIN_MODINFO = b"ext9.alias=fs-ext9\0ext9.license=GPL\0crc99.alias=crypto-crc99\0"


@pytest.fixture(scope="module")
def fake_ko(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two tiny relocatable ELF objects standing in for modules: one with firmware= entries, one empty."""
    if not run.have_tool("gcc"):
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("ko")
    (out / "empty.c").write_text("/* no .modinfo */\n")
    run.run(["gcc", "-c", "-o", out / "fwmod.ko", DATA / "fakemod.c"])
    run.run(["gcc", "-c", "-o", out / "plain.ko", out / "empty.c"])
    return {"fwmod": (out / "fwmod.ko").read_bytes(), "plain": (out / "plain.ko").read_bytes()}


def compress(rel: str, data: bytes) -> bytes:
    if rel.endswith(".xz"):
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)  # as kmod's xz
    if rel.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(data)
    if rel.endswith(".gz"):
        return gzip.compress(data)
    return data


def write_tree(root: Path, ko: dict[str, bytes], *, config: Sequence[str] = ()) -> Path:
    """A /lib/modules/<kver> written from the lists above, like booster's createTestInitRamfs."""
    moddir = root / "lib/modules" / FAKE_KVER
    moddir.mkdir(parents=True)
    for line in DEP:
        rel = line.split(":")[0]
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        content = ko["fwmod"] if "fwmod" in rel or "blk-" in rel or "net-" in rel else ko["plain"]
        (moddir / rel).write_bytes(compress(rel, content))
    (moddir / "modules.dep").write_text("\n".join(DEP) + "\n")
    (moddir / "modules.alias").write_text("\n".join(ALIAS) + "\n")
    (moddir / "modules.softdep").write_text("\n".join(SOFTDEP) + "\n")
    (moddir / "modules.builtin").write_text("\n".join(BUILTIN) + "\n")
    (moddir / "modules.builtin.modinfo").write_bytes(BUILTIN_MODINFO)
    (moddir / "modules.order").write_text("\n".join(line.split(":")[0] for line in DEP) + "\n")
    (moddir / "modules.dep.bin").write_bytes(b"stale")
    if config:
        (root / "etc/modprobe.d").mkdir(parents=True)
        (root / "etc/modprobe.d/local.conf").write_text("\n".join(config) + "\n")
    return root


@pytest.fixture
def km(tmp_path: Path, fake_ko: dict[str, bytes]) -> KernelModules:
    write_tree(
        tmp_path,
        fake_ko,
        config=["alias cfg-alias fsz", "# comment", "softdep post1 post: s1 # x", "alias stale gone"],
    )
    return KernelModules(Sysroot(tmp_path), FAKE_KVER)


def names(km: KernelModules, *args: str) -> list[str]:
    return [m.name for m in km.resolve(args).modules]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("c", ["c"]),
        ("b", ["c", "b"]),
        # pre before, post after; post1's config softdep pulls s1, whose pre: s2 comes first
        ("a", ["c", "b", "pre1", "a", "post1", "s2", "s1"]),
        ("s1", ["s2", "s1"]),  # softdep cycle
        ("s2", ["s1", "s2"]),
        ("fs-fsz", ["libz", "fsz"]),  # alias
        ("cfg-alias", ["libz", "fsz"]),  # modprobe.d alias
        ("blk-y", ["blk_y"]),  # "-" == "_"
        ("pci:v00001234d00005678sv00000000sd00000000bc01sc06i00", ["blk_x"]),  # wildcard alias
        ("virtio:d00000002v00001AF4", ["net_z"]),  # character class
    ],
)
def test_fake_resolve_order(km: KernelModules, request_: str, expected: list[str]) -> None:
    res = km.resolve([request_])
    assert [m.name for m in res.modules] == expected
    assert_deps_first(res.modules)


def test_fake_builtin(km: KernelModules) -> None:
    assert km.resolve(["ext9"]).builtin == ["ext9"]
    assert km.resolve(["fs-ext9"]).builtin == ["ext9"]  # builtin alias from modules.builtin.modinfo
    res = km.resolve(["fsz"])
    assert res.builtin == ["crc99"] and [m.name for m in res.modules] == ["libz", "fsz"]
    assert km.is_builtin("crc99") and not km.is_builtin("fsz")


def test_fake_missing_and_optional(km: KernelModules, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ResolveError, match="^kernel module stale not found"):
        km.resolve(["stale"])  # a modprobe.d alias naming a module that does not exist
    with pytest.raises(ResolveError) as e:
        km.resolve(["a", "no-such-mod"])
    assert str(e.value) == f"kernel module no-such-mod not found for kernel {FAKE_KVER}"
    res = km.resolve(["b"], optional=["nope", "fs-fsz", "ext9"])
    assert res.missing_optional == ["nope"]
    assert [m.name for m in res.modules] == ["c", "b", "libz", "fsz"] and res.builtin == ["crc99", "ext9"]
    assert "nowhere is a soft dependency of c but is not available, ignoring" in capsys.readouterr().err


def test_fake_dependency_cycle(km: KernelModules) -> None:
    with pytest.raises(ResolveError, match=r"^dependency cycle between kernel modules cyc\d and cyc\d$"):
        km.resolve(["cyc1"])


def test_fake_kmod_fields_and_compressed_modules(km: KernelModules, fake_ko: dict[str, bytes]) -> None:
    base = f"/lib/modules/{FAKE_KVER}"
    a = km.kmod("a")
    assert a == Kmod("a", f"{base}/kernel/a.ko", f"{base}/kernel/a.ko", ("c", "b"), ())
    fw = ("a.bin", "dir/b.bin", "missing.bin")
    assert km.kmod("fwmod").firmware == fw
    blk_x = km.kmod("blk_x")
    assert blk_x.source == f"{base}/kernel/drivers/block/blk-x.ko.xz" and blk_x.firmware == fw
    assert blk_x.path == f"{base}/kernel/drivers/block/blk-x.ko"  # images hold it decompressed
    assert km.kmod("blk-y").firmware == fw  # .zst
    assert km.kmod("net_z").firmware == fw  # .gz
    for name in ("blk_x", "blk_y", "net_z"):
        m = km.kmod(name)
        assert (m.source.rsplit(".", 1)[0], m.path.endswith(".ko")) == (m.path, True)
        assert km.sysroot.read_decompressed(m.source) == fake_ko["fwmod"]
        assert km.sysroot.decompressed_size(m.source) == len(fake_ko["fwmod"])


def test_fake_queries(km: KernelModules) -> None:
    assert km.all_modules()[:3] == ["a", "b", "c"] and len(km.all_modules()) == len(DEP)
    assert km.modules_under("kernel/drivers/block") == ["blk_x", "blk_y"]
    assert km.modules_under("kernel/drivers/*/") == ["blk_x", "blk_y", "net_z"]


def test_fake_firmware_paths(km: KernelModules, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fwdir = tmp_path / "lib/firmware"
    (fwdir / "updates/dir").mkdir(parents=True)
    (fwdir / "dir").mkdir()
    (fwdir / "a.bin.zst").write_bytes(b"x")
    (fwdir / "dir/b.bin").write_bytes(b"x")
    (fwdir / "updates/dir/b.bin").write_bytes(b"x")  # updates/ wins, as in the kernel's fw_path
    paths = km.firmware_paths(km.kmod("fwmod"))
    assert paths == ["/lib/firmware/a.bin.zst", "/lib/firmware/updates/dir/b.bin"]
    assert "firmware missing.bin for kernel module fwmod not found, ignoring" in capsys.readouterr().err


def test_fake_index_files(km: KernelModules) -> None:
    res = km.resolve(["a", "fs-fsz"])
    files = index_files(km, res.modules)
    assert set(files) == {
        "modules.dep", "modules.alias", "modules.symbols", "modules.softdep", "modules.order",
        "modules.builtin", "modules.builtin.modinfo",
    }  # fmt: skip
    assert files["modules.dep"].decode().splitlines() == [
        "kernel/a.ko: kernel/b.ko kernel/c.ko",
        "kernel/b.ko: kernel/c.ko",
        "kernel/c.ko:",
        "kernel/fs/fsz.ko: kernel/lib/libz.ko",
        "kernel/lib/libz.ko:",
        "kernel/pre1.ko:",
        "kernel/post1.ko:",
        "kernel/s1.ko:",
        "kernel/s2.ko:",
    ]
    assert files["modules.alias"].decode().splitlines() == [ALIAS[0], "alias fs-fsz fsz", "alias fs-fsz2 fsz"]
    assert files["modules.softdep"].decode().splitlines() == [SOFTDEP[0], *SOFTDEP[1:6]]
    assert files["modules.builtin.modinfo"] == BUILTIN_MODINFO
    assert b"cyc1" not in files["modules.order"] and files["modules.order"].startswith(b"kernel/a.ko\n")
    assert "modules.builtin" not in index_files(km, res.modules, builtin=False)
    # compressed modules are named as the image stores them: decompressed, .ko
    res = km.resolve(["blk_x", "blk-y", "net_z"])
    dep = index_files(km, res.modules)["modules.dep"].decode().splitlines()
    assert dep == [
        "kernel/drivers/block/blk-x.ko:",
        "kernel/drivers/block/sub/blk-y.ko:",
        "kernel/drivers/net/net-z.ko:",
    ]


@pytest.mark.parametrize("suffix", [".xz", ".zst", ".gz"])
def test_decompressed_size_is_read_from_the_file_or_counted(tmp_path: Path, suffix: str) -> None:
    """The size a compressed file records (xz index, zstd frame header) is what it decompresses to;
    files that record none, or only for a part of them (several streams or frames, a gzip trailer),
    are counted instead."""
    data = os.urandom(3000) + bytes(70000)
    single = compress(suffix, data)
    # several streams, frames or members: the first or last one's record covers only its own part
    several = compress(suffix, data[:5000]) + compress(suffix, data[5000:])
    cobj = zstandard.ZstdCompressor().compressobj()
    streamed = cobj.compress(data) + cobj.flush()  # a streamed zstd frame records no content size
    root = Sysroot(tmp_path)
    for name, raw in (("one", single), ("several", several), ("streamed", streamed)):
        if name == "streamed" and suffix != ".zst":
            continue
        (tmp_path / f"{name}.ko{suffix}").write_bytes(raw)
        assert root.read_decompressed(f"/{name}.ko{suffix}") == data, name
        assert root.decompressed_size(f"/{name}.ko{suffix}") == len(data), name
    (tmp_path / f"bad.ko{suffix}").write_bytes(single[: len(single) // 2])
    with pytest.raises(ResolveError, match="^cannot decompress /bad.ko"):
        root.read_decompressed(f"/bad.ko{suffix}")


def test_missing_tree(tmp_path: Path) -> None:
    with pytest.raises(ResolveError, match=r"^no modules.dep for kernel 9.9 in "):
        KernelModules(Sysroot(tmp_path), "9.9")


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("a-b", "a_b"), ("usb:v1D6Bp0[0-9-]*d-x", "usb:v1D6Bp0[0-9-]*d_x"), ("ab", "ab"), ("a[-]b-", "a[-]b_")],
)
def test_normalize(raw: str, norm: str) -> None:
    assert normalize(raw) == norm


@needs_modprobe
@pytest.mark.parametrize("suffix", [".ko.xz", ".ko.zst", ".ko.gz"])
def test_real_module_compressed(tmp_path: Path, suffix: str, kver: str) -> None:
    """A real module compressed three ways reads the same .modinfo as the plain file."""
    km = KernelModules(Sysroot("/"), kver)
    smallest = min((km.kmod(n).source for n in km.all_modules()[:200]), key=lambda p: os.stat(p).st_size)
    data = Sysroot("/").read_decompressed(smallest)  # 6.12's are .ko.xz
    (tmp_path / f"m{suffix}").write_bytes(compress(suffix, data))
    (tmp_path / "m.ko").write_bytes(data)
    assert read_modinfo(Sysroot(tmp_path), f"/m{suffix}") == read_modinfo(Sysroot(tmp_path), "/m.ko")
    assert read_modinfo(Sysroot(tmp_path), "/m.ko")


# -- module signatures: modinfo's sig_hashalgo is the oracle ---------------------------------------


@needs_modprobe
def test_signature_hash_matches_modinfo(kver: str) -> None:
    assert run.have_tool("modinfo")
    km = KernelModules(Sysroot("/"), kver)
    names = km.all_modules()[::97][:12] + ["erofs", "overlay"]
    for name in names:
        path = km.kmod(name).source
        cp = run.run(["modinfo", "-F", "sig_hashalgo", path])
        expected = cp.stdout.decode().strip() or None
        sig = km.signature(name)
        assert (sig.hash_algo if sig else None) == expected, name
    if km.signature_hash() is not None:
        assert km.signature_hash() == expected


@needs_modprobe
def test_signature_stripped_and_damaged(tmp_path: Path, kver: str) -> None:
    """An unsigned module has no signature; a cut or garbled one never raises, whatever the bytes."""
    km = KernelModules(Sysroot("/"), kver)
    data = Sysroot("/").read_decompressed(km.kmod("erofs").source)
    sig = module_signature(data)
    if sig is None:
        pytest.skip("this kernel's modules are not signed")
    body = data[: -len(MODULE_SIG_STRING) - 12 - sig.sig_len]
    assert module_signature(body) is None
    assert body.startswith(b"\x7fELF") and not body.endswith(MODULE_SIG_STRING)
    blob = data[len(body) : len(body) + sig.sig_len]
    for cut in range(0, len(blob), 7):
        assert pkcs7_digest_algo(blob[:cut]) in (None, sig.hash_algo)
    for i in range(0, min(len(blob), 80)):
        garbled = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1 :]
        pkcs7_digest_algo(garbled)  # must not raise
    # a sig_len larger than the file
    assert module_signature(b"\0" * 8 + b"\0\0\x02\0\0\0\0\0\xff\xff\xff\xff" + MODULE_SIG_STRING) is None


@needs_modprobe
def test_crypto_providers_are_loadable_implementations(kver: str) -> None:
    km = KernelModules(Sysroot("/"), kver)
    algo = km.signature_hash()
    if algo is None:
        pytest.skip("this kernel's modules are not signed")
    for name in km.crypto_providers(algo):
        assert not km.is_builtin(name)
        cp = run.run(["modinfo", "-k", kver, "-F", "alias", name])
        assert f"crypto-{algo}" in cp.stdout.decode().split()


@needs_modprobe
def test_lean_resolution_drops_only_softdeps_provided_builtin(kver: str) -> None:
    """Stage one's lean closure: modprobe's, minus the modules a softdep would add although a built-in
    module already carries the name (libcrc32c's "pre: crc32c" with crc32c_generic built in)."""
    assert run.have_tool("modinfo")
    km = KernelModules(Sysroot("/"), kver)
    for name in IMPORTANT:
        full = [m.name for m in km.resolve([name], optional=[]).modules] if km.lookup(name) else []
        lean = [m.name for m in km.resolve([name], lean=True).modules] if km.lookup(name) else []
        assert lean == [m for m in full if m in lean], name  # a subsequence, same order
        for dropped in set(full) - set(lean):
            # some module of `full` names a softdep that a built-in provides (modinfo as the oracle)
            softdeps = []
            for m in full:
                cp = run.run(["modinfo", "-k", kver, "-F", "softdep", m])
                softdeps += [w for w in cp.stdout.decode().split() if not w.endswith(":")]
            providers = [km.builtin_provider(s) for s in softdeps]
            assert any(providers), (name, dropped, softdeps)
            for p in filter(None, providers):
                aliases = run.run(["modinfo", "-k", kver, "-F", "alias", p]).stdout.decode().split()
                assert set(aliases) & set(softdeps) or p in softdeps, (p, softdeps)
    if km.builtin_provider("crc32c") and km.lookup("libcrc32c"):
        lean_erofs = km.resolve(["erofs"], lean=True)
        assert "crc32c_intel" not in [m.name for m in lean_erofs.modules]
        assert km.builtin_provider("crc32c") in lean_erofs.builtin


@needs_modprobe
def test_binary_indexes_are_what_libkmod_reads(tmp_path: Path, kver: str) -> None:
    """modules.*.bin for a subset: kmod's modprobe (libkmod, which reads only the binary indexes) run on
    a tree holding just those modules resolves names and aliases to our closure, and nothing else."""
    assert run.have_tool("depmod")
    km = KernelModules(Sysroot("/"), kver)
    selected = km.resolve(["erofs", "virtio_blk", "overlay"]).modules
    root = tmp_path / "root"
    moddir = root / "lib" / "modules" / kver
    for m in selected:  # as an image holds them: decompressed, named .ko
        dest = moddir / os.path.relpath(m.path, km.moddir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Sysroot("/").read_decompressed(m.source))
    bins = binary_indexes(km, selected)
    assert {"modules.dep.bin", "modules.alias.bin", "modules.symbols.bin"} <= set(bins)
    # as in an image: the text indexes too (libkmod reads softdeps from modules.softdep)
    for name, data in {**index_files(km, selected), **bins}.items():
        (moddir / name).write_bytes(data)
    for request in ["erofs", "overlay", "fs-erofs", "virtio:d00000002v00001AF4"]:
        cp = run.run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", request])
        lines = cp.stdout.decode().splitlines()
        insmods = [Path(w.split()[1]).name for w in lines if w.startswith("insmod ")]
        assert insmods == [Path(m.path).name for m in km.resolve([request]).modules], request
    # a module left out of the subset is unknown to libkmod there
    cp = run.run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", "btrfs"], check=False)
    assert cp.returncode != 0


def test_wild_aliases_match_as_fnmatch_over_the_whole_file(kver: str) -> None:
    """The bus-grouped, prefix-filtered matcher finds what fnmatch over every pattern finds, in file
    order: for this machine's own modaliases and for keys made from the patterns themselves."""
    import fnmatch
    import random

    km = KernelModules(Sysroot("/"), kver)
    wild = km._aliases_wild
    assert isinstance(wild, WildAliases) and len(wild.patterns) > 1000
    keys = {normalize(p.read_text().strip()) for p in Path("/sys/devices").rglob("modalias")}
    rng = random.Random(1)
    for pat, _ in rng.sample(wild.patterns, 300):
        keys.add(pat.replace("*", "").replace("?", "x"))  # fits its own pattern when it has no [...]
        keys.add(pat.replace("*", "0").replace("?", "1"))
    keys |= {"", "nobus", "pci:", "*"}
    matched = 0
    for key in sorted(keys):
        want = [m for pat, m in wild.patterns if fnmatch.fnmatchcase(key, pat)]
        assert wild.match(key) == want, key
        matched += bool(want)
    assert matched > 100

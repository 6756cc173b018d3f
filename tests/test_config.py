"""Profile loading and the bad-input corpus: every broken profile gives a located, readable error.

Each tests/profiles/bad/NAME.yaml starts with comment lines saying what must happen:

    # expect-exit: 2                      exit code of `initbuild build` (2 config, 1 missing content)
    # expect: unknown key 'moduels'       a substring of stderr (repeatable)
    # expect-line: 3                      stderr has PROFILE:3: (repeatable: one per error)
    # expect-at: {fixtures}/x/module.yaml:3   the error is located in another file
    # args: --modules-dir {fixtures}/cycle    extra arguments (default: --sysroot {sysroot})
    # layer: config | plan | build        which stage catches it (default: derived from the exit code)

{sysroot} is a tiny fake sysroot (a kernel with built-in drivers, three dummy programs) and
{fixtures} is tests/modules_fixtures. The CLI runs in a subprocess; the same cases also run in-process
to check the layer and the exception's Location.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from initbuild import run
from initbuild.build import collect, make_plan
from initbuild.config import (
    DEFAULT_PROFILE,
    OVERLAY_KEYS,
    PROFILE_KEYS,
    STAGE2_KEYS,
    UKI_KEYS,
    load_profile,
    load_profile_text,
)
from initbuild.errors import ConfigError, FormatError, InitbuildError, Location, ResolveError
from initbuild.formats.compress import Compression as WriterCompression
from initbuild.formats.compress import compress
from initbuild.profile import Attach, Compression, FileSpec, HostOnly, Mode, Panic, Profile, Stage2Compression
from initbuild.resources import shipped_modules_dir

TESTS = Path(__file__).resolve().parent
BAD = TESTS / "profiles" / "bad"
GOOD = TESTS / "profiles" / "good"
FIXTURES = TESTS / "modules_fixtures"
FAKE_KVER = "9.0.0-fake"
BUILTIN_DRIVERS = (  # modules.builtin lines: the drivers of the shipped modules, built in
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/fs/ext4/ext4.ko",
    "kernel/fs/erofs/erofs.ko",
    "kernel/fs/overlayfs/overlay.ko",
)


def make_fake_sysroot(root: Path) -> Path:
    """Enough of a system for the shipped modules: a kernel whose drivers are built in, sh/mount/switch_root
    (data files: no ELF dependencies), and /etc/hostname."""
    moddir = root / "lib" / "modules" / FAKE_KVER
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("")
    (moddir / "modules.builtin").write_text("".join(f"{d}\n" for d in BUILTIN_DRIVERS))
    (root / "boot").mkdir()
    (root / "boot" / f"vmlinuz-{FAKE_KVER}").write_bytes(b"")
    (root / "usr" / "bin").mkdir(parents=True)
    for prog in ("sh", "mount", "switch_root"):
        p = root / "usr" / "bin" / prog
        p.write_text(f"fake {prog}\n")
        p.chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("test\n")
    return root


@pytest.fixture(scope="session")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_sysroot(tmp_path_factory.mktemp("sysroot"))


# -- the corpus -----------------------------------------------------------------------------------


@dataclass
class Case:
    path: Path
    exit: int
    expect: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    at: list[str] = field(default_factory=list)
    args: str | None = None
    layer: str = ""

    def subst(self, s: str, sysroot: Path) -> str:
        return s.replace("{fixtures}", str(FIXTURES)).replace("{sysroot}", str(sysroot))

    def locations(self, sysroot: Path) -> list[str]:
        """`file:line:` strings stderr must contain."""
        return [f"{self.path}:{n}:" for n in self.lines] + [f"{self.subst(a, sysroot)}:" for a in self.at]


_HEADER = re.compile(r"^# (expect-exit|expect|expect-line|expect-at|args|layer):(.*)$")


def read_case(path: Path) -> Case:
    case = Case(path, exit=-1)
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = _HEADER.match(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip()
        if key == "expect-exit":
            case.exit = int(value)
        elif key == "expect":
            case.expect.append(value)
        elif key == "expect-line":
            case.lines.append(int(value))
        elif key == "expect-at":
            case.at.append(value)
        elif key == "args":
            case.args = value
        else:
            case.layer = value
    if not case.layer:
        case.layer = "build" if case.exit == 1 else "config"
        if case.args is not None or path.name.startswith("module-"):
            case.layer = "plan"
    return case


CASES = sorted(BAD.glob("*.yaml"))
CASE_IDS = [p.stem for p in CASES]


def test_corpus_is_complete() -> None:
    """At least 30 broken profiles, each with an exit code, a message and a location to check."""
    assert len(CASES) >= 30
    for p in CASES:
        case = read_case(p)
        assert case.exit in (1, 2), p.name
        assert case.expect, f"{p.name}: no '# expect:' line"
        assert case.lines or case.at, f"{p.name}: no '# expect-line:' or '# expect-at:'"
        assert case.layer in ("config", "plan", "build"), p.name
    # the error classes the issue names are all represented
    names = " ".join(CASE_IDS)
    for kind in ("syntax", "unknown-key", "type-", "enum-", "range-", "escape", "module-cycle", "missing-"):
        assert kind in names, kind


@pytest.mark.parametrize("path", CASES, ids=CASE_IDS)
def test_bad_profile_cli(path: Path, sysroot: Path, tmp_path: Path) -> None:
    case = read_case(path)
    args = case.subst("--sysroot {sysroot}" if case.args is None else case.args, sysroot).split()
    out = tmp_path / "out"
    cp = run.run([sys.executable, "-m", "initbuild", "build", str(path), "-o", str(out), *args], check=False)
    err = cp.stderr.decode()
    assert "Traceback" not in err
    assert cp.returncode == case.exit, err
    for s in case.expect:
        assert s in err, f"{s!r} not in:\n{err}"
    for loc in case.locations(sysroot):
        assert loc in err, f"{loc!r} not in:\n{err}"
    # each location opens a message line: "initbuild: FILE:LINE:COL: message"
    for loc in case.locations(sysroot):
        assert any(line.startswith(f"initbuild: {loc}") for line in err.splitlines()), err
    assert not out.exists() or not any(out.glob("*.img"))


def _errors(e: InitbuildError) -> list[InitbuildError]:
    return list(getattr(e, "errors", [e]))


@pytest.mark.parametrize("path", CASES, ids=CASE_IDS)
def test_bad_profile_in_process(path: Path, sysroot: Path) -> None:
    """The same corpus without a subprocess: the right layer raises, with a Location on each error."""
    case = read_case(path)
    argv = case.subst("--sysroot {sysroot}" if case.args is None else case.args, sysroot).split()
    opts = dict(zip(argv[::2], argv[1::2], strict=True))
    overrides = {"sysroot": opts["--sysroot"]} if "--sysroot" in opts else None
    dirs = [shipped_modules_dir(), Path(opts["--modules-dir"])] if "--modules-dir" in opts else None

    if case.layer == "config":
        with pytest.raises(ConfigError) as in_config:
            load_profile(path, overrides)
        errors = _errors(in_config.value)
        assert sorted(e.location.line for e in errors if e.location and e.location.line) == sorted(case.lines)
        assert all(e.location is not None and str(e.location.file) == str(path) for e in errors)
        text = str(in_config.value)
        assert all(s in text for s in case.expect), text
        return

    profile = load_profile(path, overrides)
    err: InitbuildError
    if case.layer == "plan":
        with pytest.raises(InitbuildError) as in_plan:
            make_plan(profile, modules_dirs=dirs)
        err = in_plan.value
    else:  # planning succeeds; collecting finds the sysroot lacks something
        plan, root = make_plan(profile, modules_dirs=dirs)
        with pytest.raises(ResolveError) as in_collect:
            collect(plan, root)
        err = in_collect.value
    assert err.exit_code == case.exit
    assert err.location is not None and err.location.line is not None, str(err)
    assert f"{err.location.file}:{err.location.line}:" in case.locations(sysroot)


# -- in-process details ------------------------------------------------------------------------


def one_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_profile_text(text, "p.yaml")
    errors = _errors(ei.value)
    assert len(errors) == 1, str(ei.value)
    return errors[0]  # type: ignore[return-value]


@pytest.mark.parametrize(
    "text, line, column, message, hint",
    [
        ("moduels: []\n", 1, 1, "unknown key 'moduels'", "did you mean 'modules'?"),
        ("mode: plain\nstage2:\n  compresion: lz4\n", 3, 3, "unknown key 'stage2.compresion'",
         "did you mean 'compression'?"),
        ("compression: zsdt\n", 1, 14, "compression: 'zsdt' is not one of: none, gzip, xz, zstd, lz4",
         "did you mean 'zstd'?"),
        ("binaries: [a, [b]]\n", 1, 15, "binaries[1]: expected a string, got a list", None),
        ("files: [{source: /a, mode: rw}]\n", 1, 28, "files[0].mode: 'rw' is not an octal mode", None),
        ("files: [{source: /a, mode: '17777'}]\n", 1, 28, "files[0].mode: mode 17777 is out of range", None),
        ("files: [/a/../../b]\n", 1, 9, "files[0]: path '/a/../../b' escapes the image root", None),
        ("overlay: {bootfstype: ''}\n", 1, 23, "overlay.bootfstype: must not be empty", None),
        ("stage2: {all_drivers: yes please}\n", 1, 23, "stage2.all_drivers: expected true or false", None),
        ("kernel: 6.1 rc\n", 1, 9, "kernel: '6.1 rc' is not a kernel version", None),
        ("drivers: [' nvme']\n", 1, 11, "drivers[0]: ' nvme' is not a valid name", None),
        ("mode: plain\nmode: plain\n", 2, 1, "duplicate key 'mode'", None),
        ("? [a]\n: b\n", 1, 3, "mapping keys must be plain strings", None),
        # empty strings are values to check, not "absent" (they used to be dropped silently)
        ("kernel: ''\n", 1, 9, "kernel: '' is not a kernel version", None),
        ("sysroot: ''\n", 1, 10, "sysroot: must not be empty", None),
        ("output: {dir: ' '}\n", 1, 15, "output.dir: must not be empty", None),
        ("files: [{source: ''}]\n", 1, 9, "files[0]: source '' must be an absolute path", None),
        ("files: [{source: /a, dest: ''}]\n", 1, 9, "files[0]: invalid image path ''", None),
    ],
)  # fmt: skip
def test_error_location(text: str, line: int, column: int, message: str, hint: str | None) -> None:
    e = one_error(text)
    assert e.location == Location("p.yaml", line, column)
    assert message in e.message
    assert e.hint == hint or (hint is None and e.hint is None)


def test_zero_and_false_are_values() -> None:
    p = load_profile_text("compression: xz\ncompression_level: 0\nearly_microcode: false\n", "p.yaml")
    assert (p.compression_level, p.early_microcode) == (0, False)


@pytest.mark.parametrize("compression", list(Compression))
def test_compression_level_is_checked_at_load_as_the_writer_checks_it(compression: Compression) -> None:
    """A level the profile accepts is one the cpio compressor accepts, and only those: the writer is
    the oracle, so a level never fails late, while the image is written."""
    for level in range(-2, 25):
        try:
            compress(b"initbuild", WriterCompression(compression), level)
            writer_ok = True
        except FormatError:
            writer_ok = False
        text = f"compression: {compression}\ncompression_level: {level}\n"
        try:
            loaded = load_profile_text(text, "p.yaml")
        except ConfigError as e:
            assert not writer_ok, f"{compression} {level}: {e}"
            assert e.location == Location("p.yaml", 2, 20) and e.message.startswith("compression_level: ")
        else:
            assert writer_ok, f"{compression} {level} loads, but the writer refuses it"
            assert (loaded.compression, loaded.compression_level) == (compression, level)


def test_all_errors_are_reported_together() -> None:
    with pytest.raises(ConfigError) as ei:
        load_profile_text("mode: x\npanic: y\nstage2: {level: 0, pcluster_size: 1}\ntypo: 1\n", "p.yaml")
    errors = _errors(ei.value)
    assert [(e.location.line, e.location.column) for e in errors if e.location] == [
        (1, 7), (2, 8), (3, 17), (3, 35), (4, 1),
    ]  # fmt: skip
    assert str(ei.value).count("p.yaml:") == 5


def test_syntax_error_location() -> None:
    e = one_error("mode: plain\nbinaries: [a, b\n")
    assert e.message.startswith("YAML syntax error: while parsing a flow sequence")
    # the parser gives up at the end of the file: the unclosed bracket is the useful place
    assert e.location == Location("p.yaml", 2, 11)
    assert e.hint is not None and "never closed" in e.hint
    e = one_error("mode: plain\nbinaries: [a, b\npanic: shell\n")
    assert e.message == (
        "YAML syntax error: while parsing a flow sequence (line 2, column 11): "
        "expected ',' or ']', but got ':'"
    )
    assert e.location == Location("p.yaml", 3, 6) and e.hint is None


@pytest.mark.parametrize("text", ["", "# nothing\n", "---\n...\n"])
def test_empty_profile_is_an_error(text: str) -> None:
    e = one_error(text)
    assert "the profile is empty" in e.message
    assert e.location == Location("p.yaml", 1)
    assert e.hint is not None and "{}" in e.hint


def test_empty_mapping_means_defaults() -> None:
    assert load_profile_text("{}\n", "p.yaml") == Profile(source="p.yaml")


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_profile(tmp_path / "nope.yaml")
    assert ei.value.location == Location(tmp_path / "nope.yaml")
    assert "no such file" in ei.value.message
    with pytest.raises(ConfigError, match="is a directory"):
        load_profile(tmp_path)


def test_unreadable_profile_file(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"cmdline: caf\xe9\n")
    with pytest.raises(ConfigError) as ei:
        load_profile(p)
    assert ei.value.location == Location(p)
    assert "not UTF-8" in ei.value.message


def test_locations_of_list_items() -> None:
    """Build-time errors (missing binary, driver, file) are located through Profile.where()."""
    p = load_profile_text(
        "binaries:\n  - sh\n  - ip\ndrivers: [nvme]\nboot_drivers: [ahci]\nfiles:\n  - /etc/a\nkernel: 6.1\n",
        "p.yaml",
    )
    assert p.where("binaries:ip") == Location("p.yaml", 3, 5)
    assert p.where("binaries[1]") == Location("p.yaml", 3, 5)
    assert p.where("drivers:nvme") == Location("p.yaml", 4, 11)
    assert p.where("boot_drivers:ahci") == Location("p.yaml", 5, 16)
    assert p.where("files[0]") == Location("p.yaml", 7, 5)
    assert p.where("kernel") == Location("p.yaml", 8, 9)
    assert p.where("nothing") is None


def test_overrides_are_validated() -> None:
    p = load_profile(DEFAULT_PROFILE, {"kernel": "6.1.0-1-amd64", "sysroot": "/srv/root", "mode": None})
    assert (p.kernel, p.sysroot, p.mode) == ("6.1.0-1-amd64", "/srv/root", Mode.INITOVERLAYFS)
    assert p.where("kernel") is None and p.where("sysroot") is None  # not from the file any more
    assert p.where("mode") is not None
    with pytest.raises(ConfigError, match=r"--kver: '\.\./x' is not a kernel version"):
        load_profile(DEFAULT_PROFILE, {"kernel": "../x"})


def test_default_profile_loads() -> None:
    p = load_profile(None)
    assert p.source == str(DEFAULT_PROFILE)
    assert p.mode is Mode.INITOVERLAYFS and p.kernel == "auto" and p.compression is Compression.LZ4
    assert p.where("overlay.bootfs") is not None


def test_profile_keys_documented() -> None:
    from initbuild.config import profile_keys_help

    helptext = profile_keys_help()
    assert all(f"  {k} " in helptext for k in PROFILE_KEYS)


def test_file_specs() -> None:
    p = load_profile_text(
        "files:\n  - /etc/hostname\n  - {source: /etc/a, dest: ./b//c/, mode: '0600', optional: true}\n"
        "  - {source: /etc/x, mode: 0o755}\n  - {source: /etc/y, mode: 644}\n",
        "p.yaml",
    )
    assert p.files == (
        FileSpec("/etc/hostname", "/etc/hostname"),
        FileSpec("/etc/a", "/b/c", 0o600, True),
        FileSpec("/etc/x", "/etc/x", 0o755),
        FileSpec("/etc/y", "/etc/y", 0o644),
    )


# -- good profiles ------------------------------------------------------------------------------


def _expected_json(data: dict[str, object]) -> dict[str, object]:
    """What `initbuild config --json` must print for the keys a profile sets."""
    out: dict[str, object] = {}
    for k, v in data.items():
        if k == "output":
            assert isinstance(v, dict)
            out["output_dir"] = v["dir"]
        elif k == "files":
            assert isinstance(v, list)
            out[k] = [
                {"source": f, "dest": f, "mode": None, "optional": False}
                if isinstance(f, str)
                else {"dest": f["source"], "mode": None, "optional": False, **f}
                for f in v
            ]
            for f in out[k]:  # type: ignore[attr-defined]
                if isinstance(f["mode"], str):
                    f["mode"] = int(f["mode"], 8)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("path", sorted(GOOD.glob("*.yaml")), ids=lambda p: p.stem)
def test_good_profile_config_json(path: Path) -> None:
    cp = run.run([sys.executable, "-m", "initbuild", "config", "--json", str(path)], check=False)
    assert cp.returncode == 0, cp.stderr.decode()
    assert cp.stderr == b""
    got = json.loads(cp.stdout)
    assert got["source"] == str(path)
    assert got == json.loads(json.dumps(load_profile(path).to_json(), default=str))


@pytest.mark.parametrize("name", ["full", "minimal"])
def test_good_profile_config_json_round_trip(name: str) -> None:
    """Every value written in the profile comes back unchanged from `initbuild config --json`."""
    path = GOOD / f"{name}.yaml"
    cp = run.run([sys.executable, "-m", "initbuild", "config", "--json", str(path)], check=False)
    got = json.loads(cp.stdout)
    for k, v in _expected_json(yaml.safe_load(path.read_text())).items():
        if isinstance(v, dict):
            assert {kk: got[k][kk] for kk in v} == v, k
        else:
            assert got[k] == v, k


def test_numbers_and_nulls_where_strings_and_lists_are_wanted() -> None:
    p = load_profile(GOOD / "numeric-values.yaml")
    assert p.kernel == "6.1"
    assert p.drivers == () and p.binaries == () and p.cmdline == ""
    assert (p.stage2.level, p.stage2.pcluster_size) == (1, 4096)
    assert (p.overlay.fs, p.overlay.timeout) == ("", 3600)


def test_full_profile_uses_every_key() -> None:
    path = GOOD / "full.yaml"
    data = yaml.safe_load(path.read_text())
    assert set(data) == set(PROFILE_KEYS)
    p = load_profile(path)
    assert set(data["stage2"]) == set(STAGE2_KEYS)
    assert set(data["overlay"]) == set(OVERLAY_KEYS)
    assert set(data["uki"]) == set(UKI_KEYS)
    assert p.mode is Mode.PLAIN and p.panic is Panic.POWEROFF
    assert p.stage2.verity_salt == bytes.fromhex("00ff10ab") and p.uki.signed and p.uki.enabled
    assert p.stage2.compression is Stage2Compression.LZ4 and p.stage2.level == 9
    assert isinstance(p.overlay.attach, Attach) and isinstance(p.compression, Compression)
    assert p.files[1] == FileSpec("/etc/passwd", "/etc/passwd.initrd", 0o600, True)
    assert all(p.where(f"{k}") is not None for k in data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{}", HostOnly.AUTO), ("hostonly: yes", HostOnly.YES), ("hostonly: no", HostOnly.NO),
     ("hostonly: 'no'", HostOnly.NO), ("hostonly: auto", HostOnly.AUTO)],
)  # fmt: skip
def test_hostonly_yes_and_no_read_as_yaml_booleans_or_strings(text: str, expected: HostOnly) -> None:
    """YAML 1.1 reads unquoted yes/no as booleans: both spellings mean the same; overlay keys stay auto."""
    p = load_profile_text(text + "\n", "p.yaml")
    assert p.hostonly is expected
    assert (p.overlay.bootfs, p.overlay.bootfstype, p.overlay.fs) == ("auto", "auto", "auto")

"""modules.d: discovery, module.yaml parsing, and selection (dracut's three-way check) on fake trees."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from test_config import FAKE_KVER, FIXTURES, make_fake_sysroot

from initbuild import run
from initbuild.build import collect, make_plan
from initbuild.config import load_profile_text
from initbuild.errors import ConfigError, ConfigErrors, Location, ModuleError
from initbuild.modules.plan import CheckFn, Plan, select
from initbuild.modules.spec import (
    Check,
    DeviceItem,
    FileItem,
    ModuleSpec,
    Stage,
    SymlinkItem,
    TemplateItem,
    discover,
)
from initbuild.profile import Mode
from initbuild.resources import shipped_modules_dir


def make_tree(root: Path, modules: dict[str, str]) -> Path:
    """A modules.d directory: {"10name": module.yaml text}."""
    root.mkdir(parents=True, exist_ok=True)
    for dirname, text in modules.items():
        (root / dirname).mkdir()
        (root / dirname / "module.yaml").write_text(text)
    return root


def mod(description: str = "test", **keys: str) -> str:
    """module.yaml text; values are written as given (YAML flow syntax)."""
    return f'description: "{description}"\n' + "".join(f"{k}: {v}\n" for k, v in keys.items())


def checker(unavailable: Iterable[str] = (), calls: list[str] | None = None) -> CheckFn:
    """A check function standing in for the sysroot: the named modules are unavailable."""
    bad = set(unavailable)

    def check(spec: ModuleSpec) -> tuple[Check, str]:
        if calls is not None:
            calls.append(spec.name)
        if spec.name in bad:
            return Check.UNAVAILABLE, f"binary '{spec.name}-tool' not found in the sysroot"
        return spec.check, "included by default" if spec.check is Check.INCLUDE else "on demand"

    return check


def plan(tree: Path, profile: str = "{}", unavailable: Iterable[str] = ()) -> Plan:
    p = load_profile_text(profile, "p.yaml")
    return select(p, discover([tree]), "6.1", checker(unavailable))


# A small tree exercising the three-way check:
#   base (include)   net (include, requires base)   crypt (on demand, requires dm)
#   dm (on demand)   debug (on demand)              late (include, prefix 95)
THREE_WAY = {
    "00base": mod("base system", check="include"),
    "40net": mod("network", requires="[base]"),
    "50crypt": mod("encrypted root", check="on-demand", requires="[dm]"),
    "60dm": mod("device mapper", check="on-demand"),
    "70debug": mod("debug shell", check="on-demand"),
    "95late": mod("late hooks"),
}


@pytest.fixture
def three_way(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "modules.d", THREE_WAY)


# -- discovery ----------------------------------------------------------------------------------


def test_discover_names_and_priorities(three_way: Path) -> None:
    (three_way / "README").write_text("not a module")
    (three_way / ".git").mkdir()
    specs = discover([three_way])
    assert {n: s.priority for n, s in specs.items()} == {
        "base": 0, "net": 40, "crypt": 50, "dm": 60, "debug": 70, "late": 95,
    }  # fmt: skip
    assert specs["net"].requires == ("base",)
    assert specs["crypt"].check is Check.ON_DEMAND and specs["base"].check is Check.INCLUDE
    assert specs["late"].check is Check.INCLUDE  # the default
    assert specs["late"].stage is Stage.TWO and specs["late"].modes == (Mode.INITOVERLAYFS, Mode.PLAIN)
    assert specs["dm"].path == three_way / "60dm" and specs["dm"].hook is None


def test_later_directory_overrides_by_name(three_way: Path, tmp_path: Path) -> None:
    extra = make_tree(tmp_path / "extra", {"45dm": mod("replacement dm", check="include")})
    specs = discover([three_way, extra])
    assert specs["dm"].description == "replacement dm"
    assert specs["dm"].priority == 45 and specs["dm"].path == extra / "45dm"
    assert discover([extra, three_way])["dm"].description == "device mapper"


def test_shipped_modules_parse() -> None:
    specs = discover([shipped_modules_dir()])
    assert {"base", "storage", "initoverlayfs", "stage2", "test"} <= set(specs)
    assert all(s.description for s in specs.values())
    assert specs["initoverlayfs"].modes == (Mode.INITOVERLAYFS,)
    assert specs["test"].check is Check.ON_DEMAND


def test_spec_fields(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "m",
        {
            "30full": mod(
                "every key",
                stage="both",
                modes="[plain]",
                needs="{binaries: [lvm], files: [/etc/lvm/lvm.conf]}",
                binaries="[lvm, dmsetup]",
                optional_binaries="[thin_check]",
                files="[/etc/lvm/lvm.conf, {source: /etc/a, dest: /b, mode: '0600', optional: true}]",
                dirs="[/run/lvm, etc/lvm/]",
                symlinks="[{path: /sbin/lvm2, target: lvm, override: true}]",
                devices="[{path: /dev/mapper/control, type: char, major: 10, minor: 236}]",
                drivers="[dm_mod]",
                optional_drivers="[dm_thin_pool]",
                firmware="[a.bin]",
                templates="[{template: t.j2, dest: /etc/t, mode: '0600'}]",
            )
        },
    )
    (tree / "30full" / "t.j2").write_text("x")
    s = discover([tree])["full"]
    assert (s.stage, s.modes) == (Stage.BOTH, (Mode.PLAIN,))
    assert (s.needs_binaries, s.needs_files) == (("lvm",), ("/etc/lvm/lvm.conf",))
    assert s.binaries == ("lvm", "dmsetup") and s.optional_binaries == ("thin_check",)
    assert s.files == (
        FileItem("/etc/lvm/lvm.conf", "/etc/lvm/lvm.conf"),
        FileItem("/etc/a", "/b", 0o600, optional=True),
    )
    assert s.dirs == ("/run/lvm", "/etc/lvm")
    assert s.symlinks == (SymlinkItem("/sbin/lvm2", "lvm", override=True),)
    assert s.devices == (DeviceItem("/dev/mapper/control", "char", 10, 236, 0o600),)
    assert (s.drivers, s.optional_drivers, s.firmware) == (("dm_mod",), ("dm_thin_pool",), ("a.bin",))
    assert s.templates == (TemplateItem("t.j2", "/etc/t", 0o600),)
    yml = tree / "30full" / "module.yaml"
    assert s.locations["binaries"] == Location(yml, 5, 11)
    assert s.locations["binaries:dmsetup"] == s.locations["binaries[1]"] == Location(yml, 5, 17)
    assert s.locations["drivers:dm_mod"] == Location(yml, 11, 11)
    assert s.locations["files[1]"] == Location(yml, 7, 28)


@pytest.mark.parametrize(
    "text, line, message",
    [
        (mod(requries="[base]"), 2, "unknown key 'requries'"),
        (mod(stage="three"), 2, "stage: 'three' is not one of: one, two, both"),
        (mod(check="maybe"), 2, "check: 'maybe' is not one of: include, on-demand"),
        (mod(modes="[initramfs]"), 2, "modes[0]: 'initramfs' is not one of: initoverlayfs, plain"),
        (mod(needs="{programs: [x]}"), 2, "unknown key 'needs.programs'"),
        (mod(requires="base"), 2, "requires: expected a list, got a string ('base')"),
        (mod(dirs="[/run, ../../etc]"), 2, "dirs[1]: path '../../etc' escapes the image root"),
        (mod(files="[{dest: /a}]"), 2, "files[0]: missing required key 'source'"),
        (mod(symlinks="[{path: /a}]"), 2, "symlinks[0]: missing required key 'target'"),
        (mod(devices="[{path: /dev/x, type: pipe, major: 1, minor: 2}]"), 2,
         "devices[0].type: 'pipe' is not one of: char, block"),
        (mod(templates="[{template: nope.j2, dest: /x}]"), 2,
         "templates[0].template: template 'nope.j2' not found"),
        ("check: include\n", 1, "missing required key 'description'"),
        ("", 1, "missing required key 'description'"),
        ("description: [a]\n", 1, "description: expected a string, got a list"),
        ("description: x\n  stage: one\n", 2, "YAML syntax error"),
    ],
)  # fmt: skip
def test_module_yaml_errors_are_located(tmp_path: Path, text: str, line: int, message: str) -> None:
    tree = make_tree(tmp_path / "m", {"50broken": text})
    with pytest.raises(ConfigError) as ei:
        discover([tree])
    assert message in ei.value.message
    assert ei.value.location is not None
    assert (ei.value.location.file, ei.value.location.line) == (tree / "50broken" / "module.yaml", line)


def test_discovery_reports_every_broken_module(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "m", {"10a": mod(stage="x"), "20b": mod(typo="1"), "Bad_Name": mod()})
    (tree / "30c").mkdir()  # no module.yaml
    with pytest.raises(ConfigErrors) as ei:
        discover([tree])
    text = str(ei.value)
    assert len(ei.value.errors) == 4
    assert "10a/module.yaml:2:8: stage:" in text
    assert "20b/module.yaml:2:1: unknown key 'typo'" in text
    assert "Bad_Name: module directories are named NNname" in text
    assert "30c/module.yaml: missing" in text


def test_missing_modules_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="modules directory not found"):
        discover([tmp_path / "nope"])


# -- selection: the three-way check ----------------------------------------------------------------


def test_include_only_by_default(three_way: Path) -> None:
    p = plan(three_way)
    assert p.names() == ["base", "net", "late"]
    assert {m.name: m.reason for m in p.modules} == {
        "base": "included by default", "net": "included by default", "late": "included by default",
    }  # fmt: skip
    assert p.unavailable == ()


def test_on_demand_when_requested_or_required(three_way: Path) -> None:
    p = plan(three_way, "modules: [crypt]\n")
    # dm (60) comes before crypt (50): requires wins over the prefix
    assert p.names() == ["base", "net", "dm", "crypt", "late"]
    reasons = {m.name: m.reason for m in p.modules}
    assert reasons["crypt"] == "requested by the profile"
    assert reasons["dm"] == "required by crypt"
    assert "debug" not in reasons


def test_unavailable_is_skipped_silently_when_not_asked_for(three_way: Path) -> None:
    p = plan(three_way, unavailable=["net", "debug"])
    assert p.names() == ["base", "late"]
    assert p.unavailable == (
        ("debug", "binary 'debug-tool' not found in the sysroot"),
        ("net", "binary 'net-tool' not found in the sysroot"),
    )
    assert json.loads(json.dumps(p.to_json()))["unavailable"] == [
        {"name": "debug", "why": "binary 'debug-tool' not found in the sysroot"},
        {"name": "net", "why": "binary 'net-tool' not found in the sysroot"},
    ]


def test_unavailable_requested_is_an_error(three_way: Path) -> None:
    with pytest.raises(ModuleError) as ei:
        plan(three_way, "mode: plain\nmodules:\n  - debug\n", unavailable=["debug"])
    assert ei.value.message == "module 'debug' is unavailable: binary 'debug-tool' not found in the sysroot"
    assert ei.value.location == Location("p.yaml", 3, 5)
    assert ei.value.exit_code == 2


def test_unavailable_required_names_the_chain(three_way: Path) -> None:
    with pytest.raises(ModuleError) as ei:
        plan(three_way, "modules: [crypt]\n", unavailable=["dm"])
    assert ei.value.message == (
        "module 'dm' is unavailable: binary 'dm-tool' not found in the sysroot (required via crypt -> dm)"
    )
    assert ei.value.location == Location("p.yaml", 1, 11)  # where crypt was requested


def test_unavailable_required_by_a_default_module(three_way: Path) -> None:
    """Nobody asked for net, so the error points at the requires item in its module.yaml."""
    with pytest.raises(ModuleError) as ei:
        plan(three_way, unavailable=["base"])
    assert "module 'base' is unavailable" in ei.value.message
    assert "(required via net -> base)" in ei.value.message
    assert ei.value.location == Location(three_way / "40net" / "module.yaml", 2, 12)


def test_check_runs_only_for_modules_that_matter(three_way: Path) -> None:
    calls: list[str] = []
    p = load_profile_text("omit_modules: [late]\n", "p.yaml")
    select(p, discover([three_way]), "6.1", checker(calls=calls))
    assert "late" not in calls  # omitted: never evaluated
    assert len(calls) == len(set(calls))  # at most once each


def test_modes_filter(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "m", {"10one": mod(modes="[initoverlayfs]"), "20both": mod()})
    assert plan(tree, "mode: plain\n").names() == ["both"]
    assert plan(tree, "mode: plain\n").unavailable == (("one", "not used in plain mode"),)
    assert plan(tree, "mode: initoverlayfs\n").names() == ["one", "both"]


# -- omit ------------------------------------------------------------------------------------------


def test_omit(three_way: Path) -> None:
    assert plan(three_way, "omit_modules: [late, net]\n").names() == ["base"]


def test_omit_required_names_the_chain(three_way: Path) -> None:
    with pytest.raises(ModuleError) as ei:
        plan(three_way, "omit_modules:\n  - base\n")
    assert ei.value.message == "net -> base: 'base' is omitted by the profile (omit_modules) but required"
    assert ei.value.location == Location("p.yaml", 2, 5)
    assert ei.value.hint == "remove 'base' from omit_modules"


def test_requested_and_omitted(three_way: Path) -> None:
    with pytest.raises(ModuleError, match="both requested"):
        plan(three_way, "modules: [debug]\nomit_modules: [debug]\n")


@pytest.mark.parametrize(
    "profile, line, column, message, hint",
    [
        ("modules: [dbug]\n", 1, 11, "modules: unknown module 'dbug'", "did you mean 'debug'?"),
        ("omit_modules: [lat]\n", 1, 16, "omit_modules: unknown module 'lat'", "did you mean 'late'?"),
        ("modules: [zzzzzz]\n", 1, 11, "modules: unknown module 'zzzzzz'", "`initbuild modules` lists them"),
    ],
)
def test_unknown_module(
    three_way: Path, profile: str, line: int, column: int, message: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as ei:
        plan(three_way, profile)
    assert (ei.value.message, ei.value.hint) == (message, hint)
    assert ei.value.location == Location("p.yaml", line, column)


def test_unknown_modules_reported_together(three_way: Path) -> None:
    with pytest.raises(ConfigErrors) as ei:
        plan(three_way, "modules: [a1]\nomit_modules: [b2]\n")
    assert [e.location.line for e in ei.value.errors if e.location] == [1, 2]


# -- ordering and requires ----------------------------------------------------------------------


def test_order_by_prefix_then_name_then_requires(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "m",
        {
            "10zeta": mod(),
            "10alpha": mod(),
            "05first": mod(requires="[last]"),  # pulled after its dependency
            "99last": mod(),
            "50mid": mod(),
        },
    )
    assert plan(tree).names() == ["alpha", "zeta", "mid", "last", "first"]


def test_requires_cycle(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "m",
        {"10a": mod(requires="[b]"), "20b": mod(requires="[c]"), "30c": mod(requires="[x, a]"), "40x": mod()},
    )
    with pytest.raises(ModuleError) as ei:
        plan(tree)
    assert ei.value.message == "cyclic requires: a -> b -> c -> a"
    assert ei.value.location == Location(tree / "30c" / "module.yaml", 2, 15)


def test_requires_self(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "m", {"10a": mod(check="on-demand", requires="[a]")})
    assert plan(tree).names() == []  # on demand and not requested: never visited
    with pytest.raises(ModuleError, match="cyclic requires: a -> a"):
        plan(tree, "modules: [a]\n")


def test_requires_missing_module(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "m", {"10a": mod(requires="\n  - nope")})
    with pytest.raises(ModuleError) as ei:
        plan(tree)
    assert ei.value.message == "module 'a' requires 'nope', which does not exist"
    assert ei.value.location == Location(tree / "10a" / "module.yaml", 3, 5)


def test_shared_dependency_once(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "m",
        {"10lib": mod(check="on-demand"), "20a": mod(requires="[lib]"), "30b": mod(requires="[lib]")},
    )
    p = plan(tree)
    assert p.names() == ["lib", "a", "b"]
    assert p.modules[0].reason == "required by a"


# -- the CLI ------------------------------------------------------------------------------------


def initbuild(*args: str) -> tuple[int, str, str]:
    cp = run.run([sys.executable, "-m", "initbuild", *args], check=False)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_sysroot(tmp_path_factory.mktemp("sysroot"))


def test_cli_modules_lists_descriptions(tmp_path: Path) -> None:
    extra = make_tree(tmp_path / "extra", {"55extra": mod("an extra module", stage="one", check="on-demand")})
    rc, out, err = initbuild("modules", "--modules-dir", str(extra))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert "55extra            [one, on demand] an extra module" in lines
    for spec in discover([shipped_modules_dir()]).values():
        assert any(
            line.startswith(f"{spec.priority:02d}{spec.name} ") and spec.description in line for line in lines
        )
    assert [line[:2] for line in lines] == sorted(line[:2] for line in lines)  # by prefix

    rc, out, _ = initbuild("modules", "--json", "--modules-dir", str(extra))
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["extra"] == {
        "name": "extra",
        "priority": 55,
        "stage": "one",
        "check": "on_demand",
        "requires": [],
        "description": "an extra module",
        "path": str(extra / "55extra"),
    }
    assert rows["initoverlayfs"]["requires"] == ["base", "storage"]


def test_cli_modules_reports_broken_module() -> None:
    rc, out, err = initbuild("modules", "--modules-dir", str(FIXTURES / "badkey"))
    assert rc == 2 and out == ""
    assert f"{FIXTURES}/badkey/50typo/module.yaml:3:1: unknown key 'requries'" in err
    assert "Traceback" not in err


def test_cli_plan_json_reasons(sysroot: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("modules: [test]\n")
    rc, out, err = initbuild(
        "plan", "--json", str(profile), "--sysroot", str(sysroot), "--modules-dir", str(FIXTURES / "unavail")
    )
    assert rc == 0, err
    data = json.loads(out)
    assert data["kernel"] == FAKE_KVER and data["mode"] == "initoverlayfs"
    assert [(m["name"], m["reason"]) for m in data["modules"]] == [
        ("base", "included by default"),
        ("storage", "included by default"),
        ("initoverlayfs", "included by default"),
        ("stage2", "included by default"),
        ("test", "requested by the profile"),
    ]
    assert data["unavailable"] == [
        {"name": "fancy", "why": "binary 'no-such-tool-xyz' not found in the sysroot"},
        # the fake tree's modules carry no signature: nothing to accelerate
        {"name": "modsign", "why": "the kernel's modules are not signed (or their digest is unknown)"},
        {"name": "systemd", "why": "binary 'systemctl' not found in the sysroot"},
        {"name": "udev", "why": "binary 'udevadm' not found in the sysroot"},
        {"name": "verity", "why": "stage2.verity is off"},
    ]


def test_cli_plan_override_and_omit(sysroot: Path, tmp_path: Path) -> None:
    """A later modules dir replaces a shipped module by name (here storage, at a new prefix)."""
    extra = make_tree(tmp_path / "extra", {"15storage": mod("replacement storage", stage="both")})
    profile = tmp_path / "p.yaml"
    profile.write_text("mode: plain\nomit_modules: [stage2]\n")
    rc, out, err = initbuild("plan", str(profile), "--sysroot", str(sysroot), "--modules-dir", str(extra))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1 : lines.index("kernel config:")] == [
        "  00base             stage both  included by default",
        "  15storage          stage both  included by default",
        "  (not used) initoverlayfs: not used in plain mode",
        "  (not used) modsign: the kernel's modules are not signed (or their digest is unknown)",
        "  (not used) systemd: binary 'systemctl' not found in the sysroot",
        "  (not used) udev: binary 'udevadm' not found in the sysroot",
        "  (not used) verity: not used in plain mode",
    ]


COUNTED_HOOK = """import os

with open(os.environ["INITBUILD_TEST_LOADS"], "a") as f:
    f.write("load\\n")


def check(ctx):
    return None


def install(ctx):
    ctx.add_data(f"/etc/counted-{ctx.stage}", "x")
"""


def test_each_module_py_is_loaded_once_per_build(
    sysroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module.py is imported once per build, though its check() runs while planning and its install()
    once per stage; the next build imports it afresh (no state leaks from one build to the next)."""
    tree = make_tree(tmp_path / "m", {"50counted": mod("counts its imports", stage="both")})
    (tree / "50counted" / "module.py").write_text(COUNTED_HOOK)
    loads = tmp_path / "loads"
    monkeypatch.setenv("INITBUILD_TEST_LOADS", str(loads))
    profile = load_profile_text(f"sysroot: {sysroot}\n", "p.yaml")
    plan, root = make_plan(profile, modules_dirs=[shipped_modules_dir(), tree])
    col = collect(plan, root)
    assert col.stage1 is not None and "/etc/counted-1" in col.stage1.manifest
    assert "/etc/counted-2" in col.stage2.manifest
    assert loads.read_text() == "load\n"
    make_plan(profile, modules_dirs=[shipped_modules_dir(), tree])
    assert loads.read_text() == "load\nload\n"


# -- modules.d/50fsck: the root check /etc/fstab asks for -----------------------------------------


def _fsck_hook():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsck_hook", shipped_modules_dir() / "50fsck" / "module.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


@pytest.mark.parametrize(
    ("fstab", "entry"),
    [
        ("UUID=ab-cd / ext4 errors=remount-ro 0 1\n", ("UUID=ab-cd", "ext4", "errors=remount-ro", 1)),
        ("# comment\n/dev/vda1\t/\text4\tdefaults\t0\t2  # trailing\n", ("/dev/vda1", "ext4", "defaults", 2)),
        ("LABEL=r / xfs defaults\n", ("LABEL=r", "xfs", "defaults", 0)),  # no passno: 0 (no check)
        ("/dev/a / ext4 ro 0 1\n/dev/b / btrfs ro 0 0\n", ("/dev/b", "btrfs", "ro", 0)),  # the last one wins
        ("/dev/a /boot ext4 ro 0 2\n/dev/b /mnt\\040x ext4 ro 0 2\n", None),
        ("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n", None),
    ],
)
def test_fsck_reads_the_root_entry_of_fstab(fstab: str, entry: tuple[str, str, str, int] | None) -> None:
    assert _fsck_hook().root_entry(fstab) == entry


def _fsck_sysroot(root: Path, fstab: str | None, checker: bool = True) -> Path:
    make_fake_sysroot(root)
    if fstab is not None:
        (root / "etc" / "fstab").write_text(fstab)
    (root / "usr" / "sbin").mkdir(parents=True, exist_ok=True)
    if checker:
        (root / "usr" / "sbin" / "e2fsck").write_text("fake e2fsck\n")
        (root / "usr" / "sbin" / "e2fsck").chmod(0o755)
        (root / "usr" / "sbin" / "fsck.ext4").symlink_to("e2fsck")
    return root


@pytest.mark.parametrize(
    ("fstab", "checker", "mode", "used", "why"),
    [
        (
            "UUID=x / ext4 defaults 0 1\n",
            True,
            "plain",
            True,
            "/etc/fstab asks for a check of / (UUID=x, ext4, passno 1)",
        ),
        # host-aware: stage two's image goes to /boot on the root itself, which stage one holds
        (
            "UUID=x / ext4 defaults 0 1\n",
            True,
            "initoverlayfs",
            False,
            "but stage two's image is on the root (UUID=x): the real system checks it",
        ),
        ("UUID=x / ext4 defaults 0 0\n", True, "plain", False, "/etc/fstab asks no check of / (passno 0)"),
        (None, True, "plain", False, "the sysroot has no /etc/fstab"),
        ("UUID=x / ext4 defaults 0 1\n", False, "plain", False, "but the sysroot has no fsck.ext4"),
    ],
)
def test_fsck_module_follows_the_sysroots_fstab(
    tmp_path: Path, fstab: str | None, checker: bool, mode: str, used: bool, why: str
) -> None:
    root = _fsck_sysroot(tmp_path / "root", fstab, checker)
    profile = load_profile_text(f"sysroot: {root}\nmode: {mode}\n", "p.yaml")
    p, sysroot = make_plan(profile)
    reasons = {pm.name: pm.reason for pm in p.modules}
    if not used:
        assert "fsck" not in reasons
        assert why in dict(p.unavailable).get("fsck", why)
        return
    assert reasons["fsck"] == why
    col = collect(p, sysroot)
    m = col.stage2.manifest
    conf = m.get("/etc/initbuild/fsck.conf")
    assert conf is not None and conf.data is not None
    assert conf.data.decode().splitlines()[1:] == ["root UUID=x", "fstype ext4", "passno 1"]
    assert m.get("/usr/sbin/e2fsck") is not None and m.get("/usr/sbin/fsck.ext4") is not None
    dropin = m.get("/etc/systemd/system/systemd-fsck-root.service.d/initbuild-root-held.conf")
    assert dropin is not None and dropin.data is not None
    assert b"ConditionPathExists=!/etc/initbuild/root-held" in dropin.data
    assert col.stage1 is None  # plain: the one image holds the check


# -- the superblock reader of /init (templates/initlib.sh ib_fstype) --------------------------------

SHELLS = [s for s in ("dash", "busybox") if __import__("shutil").which(s)]


def _ib_fstype(shell: str, device: Path) -> str:
    lib = (Path(__file__).resolve().parent.parent / "templates" / "initlib.sh").read_text()
    start = lib.index("ib_fstype() {")
    func = lib[start : lib.index("\n}\n", start) + 3]
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    cp = run.run([*argv, "-c", f'{func}\nib_fstype "$1"; echo "$?:$IB_FSTYPE"', "sh", str(device)])
    return cp.stdout.decode().strip()


def _image(path: Path, parts: list[tuple[int, bytes]], size: int = 70000) -> Path:
    data = bytearray(size)
    for offset, raw in parts:
        data[offset : offset + len(raw)] = raw
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("shell", SHELLS)
def test_ib_fstype_reads_superblocks(tmp_path: Path, shell: str) -> None:
    """Real ext2/3/4 (mke2fs) and EROFS (initbuild's writer) images, and the magic numbers of the others
    where the kernel looks for them."""
    from initbuild.boot.disks import make_ext4

    want = {}
    for kind in ("ext2", "ext3", "ext4"):
        img = tmp_path / f"{kind}.img"
        img.write_bytes(b"")
        run.run(["mke2fs", "-q", "-F", "-t", kind, str(img), "8M"])  # 8M: room for ext3's journal
        want[img] = f"0:{kind}"
    src = tmp_path / "tree"
    src.mkdir()
    (src / "f").write_text("x")
    want[make_ext4(src, tmp_path / "made.img", extra_mb=1)] = "0:ext4"
    erofs = tmp_path / "erofs.img"
    rc, _, err = initbuild("erofs", str(src), str(erofs))
    assert rc == 0, err
    want[erofs] = "0:erofs"
    want[_image(tmp_path / "xfs", [(0, b"XFSB")])] = "0:xfs"
    want[_image(tmp_path / "sq", [(0, b"hsqs")])] = "0:squashfs"
    want[_image(tmp_path / "f2fs", [(1024, bytes.fromhex("1020f5f2"))])] = "0:f2fs"
    want[_image(tmp_path / "btrfs", [(65600, b"_BHRfS_M")])] = "0:btrfs"
    want[_image(tmp_path / "fat32", [(82, b"FAT32   "), (510, b"\x55\xaa")])] = "0:vfat"
    want[_image(tmp_path / "fat16", [(54, b"FAT16   "), (510, b"\x55\xaa")])] = "0:vfat"
    want[_image(tmp_path / "fat-no-sig", [(54, b"FAT16   ")])] = "1:"
    want[_image(tmp_path / "zero", [])] = "1:"
    want[_image(tmp_path / "tiny", [], size=100)] = "1:"
    want[tmp_path / "missing"] = "1:"
    assert {str(p): _ib_fstype(shell, p) for p in want} == {str(p): w for p, w in want.items()}


# -- modules.d/00base: a dynamic busybox (Debian's `busybox` package) when no static one exists -----


def test_base_takes_a_dynamic_busybox_with_its_libraries(tmp_path: Path) -> None:
    """Debian installs the dynamic busybox with initramfs-tools. Stage one then gets it with its few
    libraries (the ELF resolver's closure), and applet links, never the host's shell and tools with
    theirs (measured on a Debian bookworm tree: 2.34 MB of stage one, against 1.85 MB with
    busybox-static and 9.26 MB with no busybox at all)."""
    import shutil

    from initbuild.resolve.elf import ElfResolver
    from initbuild.sysroot import Sysroot

    root = make_fake_sysroot(tmp_path / "root")
    host = ElfResolver(Sysroot("/"))
    dynamic = shutil.which("dash") or "/bin/ls"  # any dynamic ELF plays busybox's part: only its ELF matters
    needed = host.needed(dynamic)
    assert needed, f"{dynamic} is static"
    shutil.copy(dynamic, root / "usr" / "bin" / "busybox")
    for lib in needed:
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(lib).resolve(), dest)
    profile = load_profile_text(f"sysroot: {root}\n", "p.yaml")
    p, sysroot = make_plan(profile)
    col = collect(p, sysroot)
    assert col.stage1 is not None
    m = col.stage1.manifest
    busybox = m.get("/usr/bin/busybox")
    assert busybox is not None and busybox.source is not None and busybox.source.endswith("/usr/bin/busybox")
    for lib in needed:
        assert m.get(lib) is not None or m.get(Sysroot(root).resolve(lib)) is not None, lib
    for applet in ("sh", "mount", "switch_root", "od", "umount"):
        link = m.get(f"/usr/bin/{applet}")
        assert link is not None and link.target == "busybox", (applet, link)


# -- systemd stage two: coldplug and udev's groups (modules.d/45systemd, modules.d/40udev) ----------

HOST_SYSTEMD = all(
    Path(p).exists()
    for p in ("/usr/lib/systemd/systemd", "/usr/bin/systemctl", "/usr/lib/systemd/system/initrd.target")
)


@pytest.mark.skipif(not HOST_SYSTEMD, reason="this machine has no systemd to build a systemd stage two from")
@pytest.mark.parametrize(
    ("host_mode", "mode"), [(True, "initoverlayfs"), (False, "initoverlayfs"), (True, "plain")]
)
def test_systemd_stage_two_coldplugs_block_devices_only_in_host_builds(host_mode: bool, mode: str) -> None:
    """Only where stage one loaded the storage drivers: a plain image's udev must load them itself."""
    import dataclasses

    kver = sorted(p.name for p in Path("/lib/modules").iterdir())[0]
    profile = load_profile_text(f"kernel: {kver}\nhostonly: no\nmode: {mode}\nmodules: [systemd]\n", "p.yaml")
    p, sysroot = make_plan(profile)
    col = collect(dataclasses.replace(p, host_mode=host_mode), sysroot)
    m = col.stage2.manifest
    dropin = m.get("/etc/systemd/system/systemd-udev-trigger.service.d/initbuild-coldplug.conf")
    script = next((e for e in m if e.path.endswith("/initbuild/udev-coldplug")), None)
    if not host_mode or mode == "plain":
        assert dropin is None and script is None
    else:
        assert dropin is not None and dropin.data is not None and script is not None and script.data
        assert b"ExecStart=\nExecStart=-/lib/initbuild/udev-coldplug\n" in dropin.data
        text = script.data.decode()
        assert "--subsystem-match=block" in text and "initbuild.coldplug=all" in text
        cp = run.run(["sh", "-n", "-c", text])  # POSIX sh that parses
        assert cp.returncode == 0
    link = m.get("/var/run")
    assert link is not None and link.target == "../run"
    # every group the shipped udev rules name is known, with the sysroot's gid and no members
    import re

    rules = [e for e in m if "/udev/rules.d/" in e.path and e.source]
    named = {g for e in rules for g in re.findall(r'\bGROUP\s*:?=\s*"([^"]+)"', Path(e.source).read_text())}
    group = m.get("/etc/group")
    assert named and group is not None and group.data is not None
    ours = {line.split(":")[0]: line for line in group.data.decode().splitlines()}
    host = {f[0]: f[2] for f in (line.split(":") for line in Path("/etc/group").read_text().splitlines())}
    assert set(ours) == named & set(host)
    assert all(ours[g] == f"{g}:x:{host[g]}:" for g in ours)

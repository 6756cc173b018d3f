"""The command line as a user drives it: verbs, exit codes, the kernel-install plugin, rendered /init."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from initbuild.run import have_tool, run

CLI = [sys.executable, "-m", "initbuild"]


def ib(
    *args: str, check: bool = True, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    cp = run([*CLI, *args], check=check, env=env, cwd=cwd)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "out"
    ib("build", "--generic", "-o", str(out), "-q")
    return out


def test_help_teaches_the_pipeline() -> None:
    _, out, _ = ib("--help")
    for word in ("stage one", "stage two", "config", "plan", "manifest", "exit codes", "SOURCE_DATE_EPOCH"):
        assert word in out


def test_no_verb_is_a_usage_error() -> None:
    rc, _, err = ib(check=False)
    assert rc == 2 and "VERB is required" in err


def test_modules_lists_descriptions() -> None:
    _, out, _ = ib("modules")
    assert "00base" in out and "busybox" in out and "90test" in out and "on demand" in out


def test_plan_says_why(tmp_path: Path) -> None:
    _, out, _ = ib("plan", "--generic", "--json")
    plan = json.loads(out)
    reasons = {m["name"]: m["reason"] for m in plan["modules"]}
    assert reasons["base"] == "included by default"
    assert "test" not in reasons


def test_manifest_json_has_provenance() -> None:
    _, out, _ = ib("manifest", "--generic", "--stage", "1", "--json")
    entries = {e["path"]: e for e in json.loads(out)["stage1"]}
    assert entries["/init"]["provenance"][0] == "initoverlayfs"
    assert any(e["path"].endswith("/erofs.ko") for e in entries.values())
    assert entries["/dev/console"]["rdev"] == [5, 1]


@pytest.mark.parametrize("kind", ["initramfs", "stage2"])
def test_ls_cat_unpack_round_trip(built: Path, tmp_path: Path, kind: str) -> None:
    report = json.loads((built / "build.json").read_text())
    image = built / next(o["path"] for o in report["outputs"] if o["kind"] == kind)
    _, listing, _ = ib("ls", str(image), "--json")
    members = json.loads(listing)
    assert any(m["path"] == "/init" for m in members)
    cp = run([*CLI, "cat", str(image), "/init"])
    assert cp.stdout.startswith(b"#!/bin/sh\n# initbuild stage")
    ib("unpack", str(image), str(tmp_path / "x"))
    for m in members:
        p = tmp_path / "x" / m["path"].lstrip("/")
        if m["kind"] == "file":
            data = run([*CLI, "cat", str(image), m["path"]]).stdout
            assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data).digest(), m["path"]
        elif m["kind"] == "symlink":
            assert os.readlink(p) == m["target"]


def test_cat_of_a_missing_path_is_an_error(built: Path) -> None:
    image = next(built.glob("initoverlayfs-*.img"))
    rc, _, err = ib("cat", str(image), "/no/such/file", check=False)
    assert rc == 1 and f"{image}: /no/such/file: no such path" in err and "Traceback" not in err


@pytest.mark.parametrize("verb", ["ls", "cat", "unpack"])
def test_a_file_that_is_no_image_is_named(tmp_path: Path, verb: str) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image\n")
    extra = {"ls": [], "cat": ["/init"], "unpack": [str(tmp_path / "dest")]}[verb]
    rc, _, err = ib(verb, str(bogus), *extra, check=False)
    assert rc == 1 and f"{bogus}: neither a cpio archive nor a known compression" in err, err
    assert "Traceback" not in err


@pytest.mark.skipif(not have_tool("shellcheck"), reason="shellcheck not installed")
@pytest.mark.parametrize(
    ("stage", "path"),
    [("1", "/init"), ("2", "/init"), ("2", "/usr/lib/initbuild/hooks/pre-mount/90-test.sh")],
)
def test_rendered_init_scripts_pass_shellcheck(tmp_path: Path, stage: str, path: str) -> None:
    prof = tmp_path / "p.yaml"
    prof.write_text("modules: [test]\n")
    out = tmp_path / "o"
    ib("build", "--generic", str(prof), "-o", str(out), "-q")
    image = next(out.glob("initramfs-*.img" if stage == "1" else "initoverlayfs-*.img"))
    script = tmp_path / "script.sh"
    script.write_bytes(run([*CLI, "cat", str(image), path]).stdout)
    # SC2034: variables set for hooks sourced later; SC1090/SC1091: runtime-sourced hooks;
    # SC3037/SC3045 would flag `echo`/`read` flags we do not use; keep the default set otherwise.
    cp = run(
        ["shellcheck", "-s", "sh", "-S", "warning", "-e", "SC2034,SC1090,SC1091", str(script)], check=False
    )
    assert cp.returncode == 0, cp.stdout.decode()
    if path == "/init":
        # shellcheck takes an undefined function for an external command: check the library is there
        text = script.read_text()
        called = set(re.findall(r"\b(ib_[a-z_]+|die|info|warn)\b", text))
        defined = set(re.findall(r"^(\w+)\(\) \{", text, re.M))
        assert called - defined == set()
        assert {"ib_log", "die", "ib_drivers_start", "ib_wait_dev"} <= defined


def test_kernel_install_plugin_adds_and_removes(tmp_path: Path, kver: str) -> None:
    _, plugin, _ = ib("--plugin-path")
    plugin = plugin.strip()
    boot_dir, entry = tmp_path / "boot", tmp_path / "entry"
    boot_dir.mkdir()
    entry.mkdir()
    wrapper = tmp_path / "initbuild"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m initbuild "$@"\n')
    wrapper.chmod(0o755)
    env = {"INITBUILD_BOOT_DIR": str(boot_dir), "KERNEL_INSTALL_LAYOUT": "bls", "INITBUILD": str(wrapper)}
    run(["sh", plugin, "add", kver, str(entry), f"/boot/vmlinuz-{kver}"], env=env)
    stage1 = boot_dir / f"initramfs-{kver}.img"
    assert stage1.is_file() and (boot_dir / f"initoverlayfs-{kver}.img").is_file()
    assert (entry / "initrd").read_bytes() == stage1.read_bytes()
    # built in a staging directory and renamed into place: nothing else is left in the boot directory
    named = {
        f"initramfs-{kver}.img",
        f"initoverlayfs-{kver}.img",
        f"initoverlayfs-{kver}.conf",
        f"initbuild-{kver}.json",
    }
    assert {p.name for p in boot_dir.iterdir()} == named
    assert json.loads((boot_dir / f"initbuild-{kver}.json").read_text())["kernel"] == kver
    # a failed build leaves the previous images untouched
    before = stage1.read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("modules: [no-such-module]\n")
    cp = run(["sh", plugin, "add", kver, str(entry)], env={**env, "INITBUILD_PROFILE": str(bad)}, check=False)
    assert cp.returncode != 0 and b"is unchanged" in cp.stderr
    assert stage1.read_bytes() == before and {p.name for p in boot_dir.iterdir()} == named
    run(["sh", plugin, "remove", kver, str(entry)], env=env)
    assert list(boot_dir.iterdir()) == []


def test_all_kernels_builds_every_installed_kernel(tmp_path: Path, kver: str) -> None:
    ib("build", "--generic", "--all-kernels", "-o", str(tmp_path), "-q")
    assert (tmp_path / f"initramfs-{kver}.img").is_file()


def test_erofs_verb_makes_an_image_fsck_accepts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"hello " * 5000)
    (src / "l").symlink_to("d/f")
    img = tmp_path / "x.img"
    ib("erofs", str(src), str(img), "-q")
    cp = run(["fsck.erofs", f"--extract={tmp_path / 'x'}", str(img)], check=False)
    assert cp.returncode == 0 and b"<E>" not in cp.stdout + cp.stderr
    assert (tmp_path / "x" / "d" / "f").read_bytes() == b"hello " * 5000
    rc, _, err = ib("erofs", str(src), str(img), check=False)
    assert rc == 2 and "--force" in err

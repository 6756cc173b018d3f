"""Debian's kernel hooks, run as a kernel package runs them.

Debian's linux-image postinst runs ``DEB_MAINT_PARAMS="configure" run-parts --report --exit-on-error
--arg=KVER --arg=/boot/vmlinuz-KVER /etc/kernel/postinst.d`` (postrm: ``remove``, postrm.d). The hooks
are installed with ``initbuild install-hooks --root`` into a temporary root and run by run-parts
against the host's root as the sysroot, writing into a temporary boot directory.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from initbuild import hooks
from initbuild.formats.inspect import open_image
from initbuild.resources import kernel_hook
from initbuild.run import have_tool, run

CLI = [sys.executable, "-m", "initbuild"]
POSTINST = Path("etc/kernel/postinst.d")
POSTRM = Path("etc/kernel/postrm.d")
OTHER = "9.9.9-other-kernel"
MISSING = "0.0.0-initbuild-no-such-kernel"

pytestmark = pytest.mark.skipif(not have_tool("run-parts"), reason="run-parts (debianutils) missing")


def ib(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    cp = run([*CLI, *args], check=False, env=env)
    return cp.returncode, cp.stdout.decode(), cp.stderr.decode()


def outputs(kver: str) -> list[str]:
    return [
        f"initramfs-{kver}.img",
        f"initoverlayfs-{kver}.img",
        f"initoverlayfs-{kver}.conf",
        f"initbuild-{kver}.json",
    ]


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initbuild command for this interpreter (the hook gets its absolute path)."""
    w = tmp_path_factory.mktemp("bin") / "initbuild"
    w.write_text(f'#!/bin/sh\nexec {sys.executable} -m initbuild "$@"\n')
    w.chmod(0o755)
    return w


def install(root: Path, wrapper: Path, *extra: str) -> tuple[int, str, str]:
    return ib("install-hooks", "--root", str(root), *extra, env={"INITBUILD": str(wrapper)})


def run_parts(root: Path, hookdir: Path, kver: str, boot: Path, maint: str, **env: str) -> tuple[int, str]:
    """run-parts over a hook directory as the kernel's maintainer scripts call it."""
    cp = run(
        [
            "run-parts",
            "--verbose",
            "--exit-on-error",
            f"--arg={kver}",
            f"--arg=/boot/vmlinuz-{kver}",
            str(root / hookdir),
        ],
        check=False,
        env={"DEB_MAINT_PARAMS": maint, "INITBUILD_SYSROOT": "/", "INITBUILD_BOOT_DIR": str(boot), **env},
    )
    return cp.returncode, (cp.stdout + cp.stderr).decode()


def fake_update_grub(root: Path, record: Path) -> None:
    """A zz-update-grub stand-in that records what the boot directory held when it ran."""
    for d in (POSTINST, POSTRM):
        (root / d).mkdir(parents=True, exist_ok=True)
        hook = root / d / "zz-update-grub"
        hook.write_text(f'#!/bin/sh\nls "$INITBUILD_BOOT_DIR" > {record}.{d.name}\n')
        hook.chmod(0o755)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wrapper: Path) -> Path:
    root = tmp_path_factory.mktemp("root")
    rc, out, err = install(root, wrapper)
    assert rc == 0, err
    return root


# -- install-hooks --------------------------------------------------------------------------------


def test_install_hooks_writes_executable_hooks_that_run_this_initbuild(tmp_path: Path, wrapper: Path) -> None:
    rc, out, err = install(tmp_path, wrapper)
    assert rc == 0, err
    for d in (POSTINST, POSTRM):
        hook = tmp_path / d / "initbuild"
        assert f"installed {hook}" in out
        assert stat.S_IMODE(hook.stat().st_mode) == 0o755
        assert "@INITBUILD@" not in hook.read_text()
    assert f"INITBUILD_EXE={wrapper}\n" in (tmp_path / POSTINST / "initbuild").read_text()
    # Installing again changes nothing; a changed hook is rewritten.
    rc, out, _ = install(tmp_path, wrapper)
    assert rc == 0 and out.count("unchanged") == 2
    (tmp_path / POSTRM / "initbuild").chmod(0o644)
    rc, out, _ = install(tmp_path, wrapper)
    assert rc == 0 and f"updated {tmp_path / POSTRM / 'initbuild'}" in out
    assert stat.S_IMODE((tmp_path / POSTRM / "initbuild").stat().st_mode) == 0o755

    rc, out, err = install(tmp_path, wrapper, "--remove")
    assert rc == 0, err
    for d in (POSTINST, POSTRM):
        assert f"removed {tmp_path / d / 'initbuild'}" in out
        assert not (tmp_path / d / "initbuild").exists()
    rc, out, _ = install(tmp_path, wrapper, "--remove")
    assert rc == 0 and out.count("absent") == 2


def test_hooks_run_before_zz_update_grub(installed: Path, tmp_path: Path) -> None:
    # run-parts runs names of [A-Za-z0-9_-] only, in lexical order: --test lists what it would run.
    fake_update_grub(installed, tmp_path / "seen")
    try:
        for d in (POSTINST, POSTRM):
            cp = run(["run-parts", "--test", str(installed / d)])
            names = [Path(line).name for line in cp.stdout.decode().split()]
            assert names == ["initbuild", "zz-update-grub"], names
    finally:
        for d in (POSTINST, POSTRM):
            (installed / d / "zz-update-grub").unlink()


def test_foreign_files_are_left_alone(tmp_path: Path, wrapper: Path) -> None:
    mine = tmp_path / POSTINST / "initbuild"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\necho the administrator's own hook\n")
    for extra in ((), ("--remove",)):
        rc, _, err = install(tmp_path, wrapper, *extra)
        assert rc == 1 and "not installed by initbuild" in err, err
        assert "administrator's own hook" in mine.read_text()
    assert not (tmp_path / POSTRM / "initbuild").exists()  # refused before writing anything


def test_install_hooks_usage_errors(tmp_path: Path, wrapper: Path) -> None:
    rc, _, err = install(tmp_path / "absent", wrapper)
    assert rc == 2 and "not a directory" in err
    rc, _, err = ib("install-hooks", "--bogus")
    assert rc == 2


def test_initbuild_executable_is_the_running_one(monkeypatch: pytest.MonkeyPatch, wrapper: Path) -> None:
    monkeypatch.setenv("INITBUILD", str(wrapper))
    assert hooks.initbuild_executable() == wrapper
    monkeypatch.delenv("INITBUILD")
    beside = Path(sys.executable).parent / "initbuild"
    if not os.access(beside, os.X_OK):
        pytest.skip(f"no console script {beside} (not a venv installation)")
    monkeypatch.setattr(sys, "argv", ["/nonexistent/python-m-initbuild"])
    assert hooks.initbuild_executable() == Path(os.path.abspath(beside))


# -- the hooks, run by run-parts ------------------------------------------------------------------


def test_postinst_builds_and_postrm_removes_as_the_kernel_package_runs_them(
    installed: Path, tmp_path: Path, kver: str
) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for name in [*outputs(OTHER), f"initrd.img-{kver}"]:  # another kernel's, and initramfs-tools'
        (boot / name).write_bytes(b"not ours to touch")
    fake_update_grub(installed, tmp_path / "seen")
    try:
        rc, log = run_parts(installed, POSTINST, kver, boot, "configure")
        assert rc == 0, log
        assert f"initbuild: building initramfs-{kver}.img and initoverlayfs-{kver}.img in {boot}" in log
        # initramfs-tools' image is found first by GRUB's 10_linux: the hook says so.
        assert f"initbuild: note: {boot}/initrd.img-{kver} exists" in log
        # zz-update-grub ran after initbuild, with the new images in place.
        seen = (tmp_path / "seen.postinst.d").read_text().split()
        assert set(outputs(kver)) <= set(seen)

        stage1 = open_image(boot / f"initramfs-{kver}.img")
        paths1 = {m.path for m in stage1.members()}
        assert {"/init", "/etc/initoverlayfs.conf"} <= paths1
        stage2 = open_image(boot / f"initoverlayfs-{kver}.img")
        assert type(stage2).__name__ == "ErofsReader"
        paths2 = {m.path for m in stage2.members()}
        assert "/init" in paths2 and any(f"/modules/{kver}/kernel/" in p for p in paths2)
        conf = next(m for m in stage1.members() if m.path == "/etc/initoverlayfs.conf")
        assert stage1.read(conf) == (boot / f"initoverlayfs-{kver}.conf").read_bytes()
        report = json.loads((boot / f"initbuild-{kver}.json").read_text())
        assert report["kernel"] == kver and report["sysroot"] == "/"
        assert not list(boot.glob(".initbuild-*")), "staging directory left behind"

        # An upgrade's abort-upgrade does not rebuild; postrm "upgrade"/"failed-upgrade" removes nothing.
        before = (boot / f"initramfs-{kver}.img").stat().st_mtime_ns
        rc, log = run_parts(installed, POSTINST, kver, boot, "abort-upgrade 1.0")
        assert rc == 0 and (boot / f"initramfs-{kver}.img").stat().st_mtime_ns == before, log
        rc, log = run_parts(installed, POSTRM, kver, boot, "failed-upgrade 1.0")
        assert rc == 0 and all((boot / n).exists() for n in outputs(kver)), log

        rc, log = run_parts(installed, POSTRM, kver, boot, "remove")
        assert rc == 0, log
        assert not any((boot / n).exists() for n in outputs(kver)), sorted(os.listdir(boot))
        assert all((boot / n).read_bytes() == b"not ours to touch" for n in outputs(OTHER))
        assert (boot / f"initrd.img-{kver}").exists()
        assert not set(outputs(kver)) & set((tmp_path / "seen.postrm.d").read_text().split())
    finally:
        for d in (POSTINST, POSTRM):
            (installed / d / "zz-update-grub").unlink()


def test_failed_build_fails_the_hook_and_leaves_boot_alone(installed: Path, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"initramfs-{MISSING}.img").write_bytes(b"the previous image")
    rc, log = run_parts(installed, POSTINST, MISSING, boot, "configure")
    assert rc != 0, log
    assert f"initbuild: building the images for {MISSING} failed" in log
    assert sorted(os.listdir(boot)) == [f"initramfs-{MISSING}.img"]
    assert (boot / f"initramfs-{MISSING}.img").read_bytes() == b"the previous image"


def test_hooks_skip_like_initramfs_tools(installed: Path, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for name in outputs(OTHER):
        (boot / name).write_bytes(b"x")
    # INITRD=No: the kernel needs no initramfs, nothing is built or removed.
    rc, log = run_parts(installed, POSTINST, MISSING, boot, "configure", INITRD="No")
    assert rc == 0 and "initbuild:" not in log, log
    rc, log = run_parts(installed, POSTRM, OTHER, boot, "remove", INITRD="No")
    assert rc == 0 and len(os.listdir(boot)) == 4, log
    # Old-style quoted DEB_MAINT_PARAMS; purge after remove is harmless.
    rc, log = run_parts(installed, POSTRM, OTHER, boot, "'remove'")
    assert rc == 0 and os.listdir(boot) == [], log
    rc, log = run_parts(installed, POSTRM, OTHER, boot, "purge")
    assert rc == 0, log
    # No version passed: postinst fails, as initramfs-tools' does; postrm only warns.
    for hookdir, want in ((POSTINST, 2), (POSTRM, 0)):
        cp = run(["sh", str(installed / hookdir / "initbuild")], check=False)
        assert cp.returncode == want and b"initbuild: " in cp.stderr


def test_postinst_without_initbuild_warns_and_succeeds(tmp_path: Path) -> None:
    hook = tmp_path / "initbuild"
    hook.write_bytes(hooks.render("debian-postinst", tmp_path / "uninstalled" / "initbuild"))
    hook.chmod(0o755)
    cp = run(
        [str(hook), MISSING, f"/boot/vmlinuz-{MISSING}"],
        check=False,
        env={"INITBUILD_BOOT_DIR": str(tmp_path)},
    )
    assert cp.returncode == 0 and b"initbuild: WARNING:" in cp.stderr and b"not found" in cp.stderr


@pytest.mark.skipif(not have_tool("shellcheck"), reason="shellcheck missing")
def test_hooks_are_shellcheck_clean(tmp_path: Path) -> None:
    scripts = [kernel_hook("debian-postinst"), kernel_hook("debian-postrm")]
    rendered = tmp_path / "postinst"
    rendered.write_bytes(hooks.render("debian-postinst", Path("/opt/with space/bin/initbuild")))
    cp = run(["shellcheck", "-S", "warning", "-s", "sh", *map(str, scripts), str(rendered)], check=False)
    assert cp.returncode == 0, cp.stdout.decode()

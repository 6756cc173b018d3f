"""Shipped data is found through one place, and modules are searched in dracut's order:
shipped, then the administrator's /etc/initbuild/modules.d, then each --modules-dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from initbuild import resources
from initbuild.modules.spec import discover


def _module(root: Path, name: str, description: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "module.yaml").write_text(f'description: "{description}"\nstage: two\ncheck: on-demand\n')
    return root


def test_shipped_data_is_found() -> None:
    assert (resources.shipped_modules_dir() / "20initoverlayfs" / "module.yaml").is_file()
    assert (resources.templates_dir() / "init-stage1.sh.j2").is_file()
    assert resources.default_profile().is_file()
    assert resources.kernel_install_plugin().is_file()


def test_search_order_shipped_admin_then_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _module(tmp_path / "etc", "90test", "the administrator's test module")
    _module(admin, "70site", "a site module")
    monkeypatch.setenv("INITBUILD_ADMIN_MODULES_DIR", str(admin))
    dirs = resources.module_dirs()
    assert dirs == [resources.shipped_modules_dir(), admin]
    specs = discover(dirs)
    assert specs["test"].description == "the administrator's test module"
    assert specs["site"].description == "a site module"
    assert specs["base"].path.parent == resources.shipped_modules_dir()

    extra = _module(tmp_path / "cli", "90test", "the command line's test module")
    specs = discover(resources.module_dirs([extra]))
    assert specs["test"].description == "the command line's test module"


def test_no_admin_directory_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITBUILD_ADMIN_MODULES_DIR", str(tmp_path / "absent"))
    assert resources.module_dirs() == [resources.shipped_modules_dir()]

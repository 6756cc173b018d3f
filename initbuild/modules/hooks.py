"""module.py files: each imported at most once per build.

A module's `check(ctx)` runs while the plan is made and its `install(ctx)` once per stage; all of
them use the one module object a build's Hooks loaded, so module-level state in a module.py lives
for exactly one build. Hooks are never put in sys.modules: two builds (`--all-kernels`) load afresh.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from ..errors import ModuleError
from .spec import ModuleSpec


class Hooks:
    """The loaded module.py of every module a build asked about, by module directory."""

    def __init__(self) -> None:
        self._loaded: dict[Path, ModuleType | None] = {}

    def load(self, spec: ModuleSpec) -> ModuleType | None:
        """The module.py of `spec` (None when it has none), imported on first use."""
        if spec.path not in self._loaded:
            self._loaded[spec.path] = _import(spec)
        return self._loaded[spec.path]


def _import(spec: ModuleSpec) -> ModuleType | None:
    if spec.hook is None:
        return None
    s = importlib.util.spec_from_file_location(f"initbuild_module_{spec.name.replace('-', '_')}", spec.hook)
    assert s is not None and s.loader is not None
    mod = importlib.util.module_from_spec(s)
    try:
        s.loader.exec_module(mod)
    except Exception as e:  # a broken hook is the module's fault, reported as such
        raise ModuleError(f"{spec.hook}: failed to load: {type(e).__name__}: {e}") from e
    return mod

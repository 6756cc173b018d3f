"""modules.d: the modules a build installs, and the API their `module.py` files use.

A module.py imports what it needs from here (`from initbuild.modules import Check`):

- `Check`: what `check(ctx)` returns (dracut's 0 include / 1 unavailable / 255 on demand), alone or
  as `(Check, reason)`;
- `CheckContext`: the `ctx` of `check(ctx)`;
- `InstallContext`: the `ctx` of `install(ctx)`.

The package itself: spec.py (module.yaml), hooks.py (module.py), plan.py (selection), context.py
(the ctx objects), stages.py (a stage's manifest), drivers.py (the driver table of /init).
"""

from .context import CheckContext, InstallContext
from .spec import Check

__all__ = ["Check", "CheckContext", "InstallContext"]

"""jinja2 rendering with StrictUndefined: a misspelled variable fails the build, never renders empty."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import jinja2

from .errors import InitbuildError
from .resources import templates_dir as shipped_templates_dir


def _sh_quote(value: object) -> str:
    return shlex.quote(str(value))


class Renderer:
    """Renders templates found in a module's directory first, then in the project's templates/."""

    def __init__(self, templates_dir: Path | None = None):
        self.templates_dir = templates_dir or shipped_templates_dir()
        self._envs: dict[tuple[str, ...], jinja2.Environment] = {}

    def _env(self, search: tuple[str, ...]) -> jinja2.Environment:
        if search not in self._envs:
            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader([*search, str(self.templates_dir)]),
                undefined=jinja2.StrictUndefined,
                autoescape=False,
                keep_trailing_newline=True,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.filters["sh"] = _sh_quote
            self._envs[search] = env
        return self._envs[search]

    def render(self, template: str, context: dict[str, Any], *, search: list[str] | None = None) -> str:
        env = self._env(tuple(search or ()))
        try:
            return env.get_template(template).render(**context)
        except jinja2.TemplateNotFound as e:
            raise InitbuildError(
                f"template {template!r} not found (searched {search or []} and {self.templates_dir})"
            ) from e
        except jinja2.UndefinedError as e:
            raise InitbuildError(f"template {template!r}: {e.message}") from e
        except jinja2.TemplateSyntaxError as e:
            raise InitbuildError(
                f"{e.filename or template}:{e.lineno}: template syntax error: {e.message}"
            ) from e

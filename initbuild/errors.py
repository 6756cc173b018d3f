"""Exception types. cli.py turns them into messages and exit codes; nothing else calls sys.exit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_BUILD = 1  # build failure: missing sysroot content, tool failure, corrupt image
EXIT_USAGE = 2  # usage or configuration error
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Location:
    """Where in an input file something was found (1-based line/column)."""

    file: Path | str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        s = str(self.file)
        if self.line is not None:
            s += f":{self.line}"
            if self.column is not None:
                s += f":{self.column}"
        return s


class InitbuildError(Exception):
    """Base class: an expected failure with a message for the user. Exit code 1."""

    exit_code = EXIT_BUILD

    def __init__(self, message: str, *, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        s = f"{self.location}: {self.message}" if self.location else self.message
        if self.hint:
            s += f"\n  hint: {self.hint}"
        return s


class ConfigError(InitbuildError):
    """The profile, a module.yaml or the command line is wrong. Exit code 2."""

    exit_code = EXIT_USAGE


class ConfigErrors(ConfigError):
    """Several configuration errors, reported together."""

    def __init__(self, errors: list[ConfigError]):
        assert errors
        self.errors = list(errors)
        super().__init__(f"{len(errors)} configuration error(s)")

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class ModuleError(InitbuildError):
    """A modules.d module is broken, unavailable when required, or conflicts with another."""

    exit_code = EXIT_USAGE


class ResolveError(InitbuildError):
    """Something the profile asks for is not in the sysroot (binary, library, driver, file). Exit 1."""


class ToolError(InitbuildError):
    """An external tool is missing or failed."""


class FormatError(InitbuildError):
    """A binary format cannot hold a value, or an image being read is corrupt."""

    def __init__(self, message: str, *, offset: int | None = None, field: str | None = None, **kw: object):
        where = []
        if field:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset} (0x{offset:x})")
        if where:
            message = f"{message} [{', '.join(where)}]"
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.offset = offset
        self.field = field

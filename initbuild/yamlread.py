"""YAML with locations: load through yaml.compose so every value keeps its file:line:col, and a
small checked reader that collects every error (unknown keys with a did-you-mean, wrong types)
instead of stopping at the first. Used for profiles and for modules.d/*/module.yaml.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, ConfigErrors, Location

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a mapping"}


def parse(text: str, file: Path | str) -> yaml.Node | None:
    """Compose YAML text into a node tree; syntax errors become a located ConfigError."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise syntax_error(e, file) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", location=Location(file)) from None


def syntax_error(e: yaml.MarkedYAMLError, file: Path | str) -> ConfigError:
    """PyYAML's context ("while scanning a quoted scalar", where it began) and problem, in one line.

    The location is where the parser gave up, except at the end of the file, where the start of the
    unfinished construct (an unclosed quote or bracket) is the line worth pointing at.
    """
    problem, context = e.problem or "", e.context or ""
    mark = e.problem_mark
    at_end = "end of stream" in problem or "<stream end>" in problem
    if e.context_mark is not None and (mark is None or at_end):
        mark = e.context_mark
    if "'\\t'" in problem:
        msg = "a tab character; YAML indents with spaces only"
    elif context and problem:
        cm = e.context_mark
        at = f" (line {cm.line + 1}, column {cm.column + 1})" if cm is not None and cm is not mark else ""
        msg = f"{context}{at}: {problem}"
    else:
        msg = problem or context
    loc = Location(file, mark.line + 1, mark.column + 1) if mark is not None else Location(file)
    hint = "the quote or bracket that starts here is never closed" if at_end and mark is not None else None
    return ConfigError(f"YAML syntax error: {msg}", location=loc, hint=hint)


def load_file(path: Path) -> yaml.Node | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", location=Location(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})", location=Location(path)
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", location=Location(path)) from None
    return parse(text, path)


class Reader:
    """Reads a composed YAML tree against an expected shape, recording every problem.

    Each accessor takes the node and a dotted `key` path used in messages (`outputs[1].compression`),
    returns the converted value or None when it is wrong, and records a ConfigError.
    """

    def __init__(self, file: Path | str):
        self.file = file
        self.errors: list[ConfigError] = []

    def loc(self, node: yaml.Node | None) -> Location:
        if node is None:  # an empty document: its errors belong at the top of the file
            return Location(self.file, 1)
        m = node.start_mark
        return Location(self.file, m.line + 1, m.column + 1)

    def error(self, node: yaml.Node | None, key: str, message: str, hint: str | None = None) -> None:
        prefix = f"{key}: " if key else ""
        self.errors.append(ConfigError(prefix + message, location=self.loc(node), hint=hint))

    def raise_if_errors(self) -> None:
        """Raise what was recorded, in file order (unknown keys are found before bad values)."""
        self.errors.sort(key=_position)
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)

    # -- structure --------------------------------------------------------------------------------
    def mapping(
        self, node: yaml.Node | None, key: str, allowed: Iterable[str], *, required: Iterable[str] = ()
    ) -> dict[str, yaml.Node]:
        """A mapping with string keys from `allowed`; unknown and duplicate keys are errors."""
        allowed = list(allowed)
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            out: dict[str, yaml.Node] = {}
        elif not isinstance(node, yaml.MappingNode):
            self.error(node, key, f"expected a mapping, got {_describe(node)}")
            return {}
        else:
            out = {}
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    self.error(knode, key, "mapping keys must be plain strings")
                    continue
                k = knode.value
                full = f"{key}.{k}" if key else k
                if k not in allowed:
                    close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                    hint = (
                        f"did you mean '{close[0]}'?"
                        if close
                        else f"known keys: {', '.join(sorted(allowed))}"
                    )
                    self.error(knode, "", f"unknown key '{full}'", hint=hint)
                    continue
                if k in out:
                    self.error(knode, "", f"duplicate key '{full}'")
                    continue
                out[k] = vnode
        for r in required:
            if r not in out:
                self.error(node, key, f"missing required key '{r}'")
        return out

    def seq(self, node: yaml.Node, key: str) -> list[yaml.Node] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, key, f"expected a list, got {_describe(node)}")
            return None
        return list(node.value)

    # -- scalars ----------------------------------------------------------------------------------
    def scalar(self, node: yaml.Node, key: str, typ: type[T]) -> T | None:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, key, f"expected {_TYPE_NAMES.get(typ, typ.__name__)}, got {_describe(node)}")
            return None
        if node.tag == "tag:yaml.org,2002:str":
            value: Any = node.value
        else:
            try:
                value = yaml.SafeLoader("").construct_object(node)
            except (yaml.YAMLError, ValueError, KeyError, TypeError):
                # an explicit tag the value does not fit (`!!int abc`), or one YAML does not know
                tag = node.tag.replace("tag:yaml.org,2002:", "!!")
                what = "unknown tag" if tag.startswith("!") and not tag.startswith("!!") else "tag"
                self.error(node, key, f"cannot read {node.value!r} with {what} '{tag}'")
                return None
        if typ is str and isinstance(value, str):
            return value  # type: ignore[return-value]
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value  # type: ignore[return-value]
        if typ is bool and isinstance(value, bool):
            return value  # type: ignore[return-value]
        if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(node.value)  # type: ignore[return-value]  # e.g. a kernel version "6.1"
        self.error(node, key, f"expected {_TYPE_NAMES.get(typ, typ.__name__)}, got {_describe(node)}")
        return None

    def str_list(self, node: yaml.Node, key: str) -> list[str]:
        items = self.seq(node, key)
        if items is None:
            return []
        out = []
        for i, item in enumerate(items):
            v = self.scalar(item, f"{key}[{i}]", str)
            if v is not None:
                out.append(v)
        return out

    def choice(self, node: yaml.Node, key: str, choices: Iterable[str]) -> str | None:
        choices = list(choices)
        v = self.scalar(node, key, str)
        if v is None:
            return None
        if v not in choices:
            close = difflib.get_close_matches(v, choices, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else None
            self.error(node, key, f"'{v}' is not one of: {', '.join(choices)}", hint=hint)
            return None
        return v

    def enum(self, node: yaml.Node, key: str, enum: type[E]) -> E | None:
        """One member of a StrEnum, written as its value."""
        v = self.choice(node, key, [m.value for m in enum])
        return None if v is None else enum(v)

    def mode(self, node: yaml.Node, key: str) -> int | None:
        """A permission mode: an octal string ('0644') or a YAML int (0o644, or 644 read as octal digits)."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, key, "expected an octal mode such as '0755'")
            return None
        text = node.value.strip().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            self.error(node, key, f"'{node.value}' is not an octal mode such as '0755'")
            return None
        if not 0 <= mode <= 0o7777:
            self.error(node, key, f"mode {node.value} is out of range (0000-7777)")
            return None
        return mode

    def checked(
        self, node: yaml.Node, key: str, value: T | None, check: Callable[[T], str | None]
    ) -> T | None:
        """Apply a semantic check returning an error message or None."""
        if value is None:
            return None
        problem = check(value)
        if problem:
            self.error(node, key, problem)
            return None
        return value


def _position(e: ConfigError) -> tuple[int, int]:
    loc = e.location
    return (loc.line or 0, loc.column or 0) if loc is not None else (0, 0)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    names = {
        "str": "a string",
        "int": "an integer",
        "bool": "a boolean",
        "float": "a number",
        "timestamp": "a date",
    }
    if tag == "null":
        return "nothing"
    if tag == "str":
        return f"a string ({node.value!r})"
    return f"{names.get(tag, tag)} ({node.value})"

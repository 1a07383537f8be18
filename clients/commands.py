"""Bot commands: `!name args…` parsed from a handler's signature, with generated help.

A command handler is `async def f(ctx, a: int, b: str = "x", *rest: str)` or, to take the rest of
the line verbatim, a single keyword-only parameter: `async def f(ctx, n: int, *, text: str)`.
Supported parameter types are `str`, `int`, `float` and `bool`; quotes group words
("two words"). Parsing is pure (no I/O) so it is tested without a homeserver.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[..., Awaitable[Any]]

_CONVERTERS: dict[Any, Callable[[str], Any]] = {str: str, int: int, float: float}
_TRUE = {"yes", "y", "true", "on", "1"}
_FALSE = {"no", "n", "false", "off", "0"}
_TYPE_WORDS: dict[Any, str] = {int: "a whole number", float: "a number", bool: "yes or no", str: "text"}


class CommandError(Exception):
    """Bad input for a command; the message is safe to show to the user."""


def _to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)


def tokenize(text: str) -> list[tuple[str, int]]:
    """Split on whitespace, honouring "double" and 'single' quotes; returns (token, end offset)."""
    tokens: list[tuple[str, int]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        buf: list[str] = []
        while i < n and not text[i].isspace():
            ch = text[i]
            if ch in "\"'":
                close = text.find(ch, i + 1)
                if close < 0:
                    raise CommandError("unclosed quote")
                buf.append(text[i + 1 : close])
                i = close + 1
            else:
                buf.append(ch)
                i += 1
        tokens.append(("".join(buf), i))
    return tokens


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # "positional", "variadic" or "rest"
    type: Any
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.kind == "positional" and self.default is inspect.Parameter.empty

    def usage(self) -> str:
        type_name = "" if self.type is str else f":{getattr(self.type, '__name__', self.type)}"
        if self.kind == "variadic":
            return f"[{self.name}{type_name}…]"
        if self.kind == "rest":
            return f"<{self.name}…>" if self.default is inspect.Parameter.empty else f"[{self.name}…]"
        return f"<{self.name}{type_name}>" if self.required else f"[{self.name}{type_name}]"

    def convert(self, raw: str) -> Any:
        try:
            if self.type is bool:
                return _to_bool(raw)
            return _CONVERTERS[self.type](raw)
        except ValueError:
            type_name = getattr(self.type, "__name__", str(self.type))
            raise CommandError(
                f"{self.name} must be {_TYPE_WORDS.get(self.type, type_name)}, not {raw!r}"
            ) from None


@dataclass(slots=True)
class Command:
    name: str
    handler: Handler
    help: str
    params: list[Param]
    aliases: tuple[str, ...] = ()

    def usage(self, prefix: str) -> str:
        return " ".join([prefix + self.name, *(p.usage() for p in self.params)])

    def parse(self, argtext: str) -> tuple[list[Any], dict[str, Any]]:
        """Turn the text after the command name into call arguments for the handler."""
        tokens = tokenize(argtext)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        consumed_end = 0
        index = 0
        for param in self.params:
            if param.kind == "positional":
                if index < len(tokens):
                    raw, consumed_end = tokens[index]
                    args.append(param.convert(raw))
                    index += 1
                elif param.required:
                    raise CommandError(f"missing {param.name}")
                else:
                    args.append(param.default)
            elif param.kind == "variadic":
                args.extend(param.convert(raw) for raw, _ in tokens[index:])
                index = len(tokens)
            else:  # rest of the line, verbatim
                rest = argtext[consumed_end:].strip()
                if not rest and param.default is inspect.Parameter.empty:
                    raise CommandError(f"missing {param.name}")
                kwargs[param.name] = rest if rest else param.default
                index = len(tokens)
        if index < len(tokens):
            raise CommandError(f"unexpected argument {tokens[index][0]!r}")
        return args, kwargs


def params_from_signature(handler: Handler) -> list[Param]:
    sig = inspect.signature(handler)
    hints = typing.get_type_hints(handler)
    params: list[Param] = []
    parameters = list(sig.parameters.values())[1:]  # the first one receives the context
    for p in parameters:
        typ = hints.get(p.name, str)
        if typ not in _CONVERTERS and typ is not bool:
            raise TypeError(f"command parameter {p.name}: unsupported type {typ!r}")
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            params.append(Param(p.name, "positional", typ, p.default))
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            params.append(Param(p.name, "variadic", typ))
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            if typ is not str:
                raise TypeError(f"keyword-only parameter {p.name} takes the rest of the line: it must be str")
            params.append(Param(p.name, "rest", str, p.default))
        else:
            raise TypeError(f"command parameter {p.name}: **kwargs are not supported")
    rest_like = [p for p in params if p.kind in ("variadic", "rest")]
    if len(rest_like) > 1:
        raise TypeError("a command takes at most one *args or keyword-only rest-of-line parameter")
    return params


@dataclass
class CommandRegistry:
    prefix: str = "!"
    commands: dict[str, Command] = field(default_factory=dict)
    _by_alias: dict[str, Command] = field(default_factory=dict)

    def add(
        self, name: str, handler: Handler, help: str | None = None, aliases: tuple[str, ...] = ()
    ) -> Command:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"invalid command name {name!r}")
        doc = help if help is not None else inspect.getdoc(handler) or ""
        command = Command(name, handler, doc.strip(), params_from_signature(handler), aliases)
        for key in (name, *aliases):
            if key in self._by_alias:
                raise ValueError(f"command {key!r} is already registered")
            self._by_alias[key] = command
        self.commands[name] = command
        return command

    def match(self, body: str) -> tuple[Command, str] | None:
        """The command a message invokes and the text of its arguments, if any."""
        if not body.startswith(self.prefix):
            return None
        rest = body[len(self.prefix) :]
        name, _, argtext = rest.partition(" ")
        if "\n" in name:
            name, _, more = name.partition("\n")
            argtext = more + (" " + argtext if argtext else "")
        command = self._by_alias.get(name)
        return (command, argtext) if command is not None else None

    def help_text(self, name: str | None = None) -> str:
        if name:
            command = self._by_alias.get(name.removeprefix(self.prefix))
            if command is None:
                return f"Unknown command {name!r}. Try {self.prefix}help."
            lines = [f"`{command.usage(self.prefix)}`"]
            if command.help:
                lines += ["", command.help]
            if command.aliases:
                lines += ["", "Aliases: " + ", ".join(self.prefix + a for a in command.aliases)]
            return "\n".join(lines)
        lines = ["Commands:"]
        for command in sorted(self.commands.values(), key=lambda c: c.name):
            summary = command.help.splitlines()[0] if command.help else ""
            lines.append(f"- `{command.usage(self.prefix)}`" + (f" — {summary}" if summary else ""))
        return "\n".join(lines)

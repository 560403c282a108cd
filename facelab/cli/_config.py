"""Command-line options derived from a config dataclass, so that a flag cannot drift from
the field it sets (its name, type, default and help are the field's).

:func:`options` decorates a command function with one option per field
(``dataclasses.fields``): the type gives the option's type (bool -> ``--x/--no-x``; int,
float, str, Path; ``Optional[...]``; ``Literal[...]`` or a tuple of choices -> a choice;
lists and tuples -> comma-separated values; dicts -> a repeatable ``KEY=VALUE`` option handed
to the command as its raw strings), the dataclass default is the option's default, and the
help is the field's docstring (the string literal right after the field in the class body,
read with ``ast``). The command receives the parsed values as one dict, ready for
``Config(**values)``. :func:`parse_pairs` reads the ``KEY=VALUE`` options (``-A``, ``-P``,
``-M``, ``-D``), typed by a dataclass's fields or a function's parameters.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar, Union

import typer

from facelab.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_SCALARS = (bool, int, float, str, Path)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line where the default does not fit."""

    decls: tuple[str, ...] = ()
    """Option names, e.g. ``("--size",)`` or ``("--model", "-m")``; default ``--field-name``."""
    choices: Sequence[str] | None = None
    """The valid values (a module constant such as ``SCHEDULES``)."""
    none: str | None = None
    """A word that stands for None (``evaluate --split all``)."""
    unset: bool = False
    """Default None: only given values reach the config (the field's default is shown)."""
    multiple: bool = False
    """A sequence field given by repeating the option (``--cors-origin A --cors-origin B``)."""
    metavar: str | None = None
    """The value's name in the help, e.g. ``ORIGIN`` (default: from the type)."""


# --------------------------------------------------------------------------- docstrings

@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} of a dataclass and its dataclass bases (cleaned, not joined)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # defined in a REPL or an exec'd string: no docs
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def help_text(doc: str) -> str:
    """A field docstring as option help: one paragraph, ``code`` and :role:`x` shown as `x`."""
    return " ".join(re.sub(r":\w+:`", "`", doc).replace("``", "`").split())


# --------------------------------------------------------------------------- types

def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for ``T | None``; (tp, False) otherwise."""
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
        rest = tuple(a for a in typing.get_args(tp) if a is not type(None))
        return (rest[0] if len(rest) == 1 else Union[rest]), True  # noqa: UP007 - built at runtime
    return tp, False


def _sequence_item(tp: Any) -> Any | None:
    """The item type of list[T] / tuple[T, ...] / Sequence[T]; None when tp is no sequence."""
    origin = typing.get_origin(tp)
    if origin not in (list, tuple, Sequence, typing.Sequence) and tp not in (list, tuple):
        return None
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if args and all(a == args[0] for a in args) else Any


def convert(text: str, tp: Any, where: str) -> Any:
    """``text`` as a value of type ``tp`` (untyped: JSON where it parses, else the text);
    a value that does not fit is a ConfigError naming ``where``."""
    tp, optional = _unwrap_optional(tp)
    word = text.strip()
    if optional and word.lower() in ("none", "null"):
        return None
    if tp is bool:
        if word.lower() in _TRUE + _FALSE:
            return word.lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(word)
        except ValueError:
            raise ConfigError(f"{where}: expected {'an integer' if tp is int else 'a number'}, "
                              f"got {text!r}") from None
    if tp is str or tp is Path:
        return tp(text)
    if typing.get_origin(tp) is Literal:
        if text not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, typing.get_args(tp)))}, got {text!r}")
        return text
    item = _sequence_item(tp)
    if item is not None:
        values = json.loads(word) if word.startswith("[") and _is_json(word) else word.split(",") if word else []
        return [v if isinstance(v, (int, float, bool)) and item is Any else convert(str(v).strip(), item, where)
                for v in values]
    return json.loads(word) if _is_json(word) else text  # Any, dict, unions: the target checks it


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class _Option:
    """One generated option: the parameter typer sees, and how its value goes back."""

    name: str
    parameter: inspect.Parameter
    tp: Any
    flag: Flag

    def value(self, raw: Any) -> Any:
        """The parsed option as the field's value."""
        if raw is None or (self.flag.none is not None and raw == self.flag.none):
            return None
        if self.flag.multiple:
            return tuple(raw) if raw or not self.flag.unset else None
        item = _sequence_item(_unwrap_optional(self.tp)[0])
        if isinstance(raw, str) and item is not None:
            return convert(raw, self.tp, f"--{self.name.replace('_', '-')}")
        return raw


def field_options(cls: type, *, include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  flags: Mapping[str, Flag] | None = None, only_given: bool = False) -> list[_Option]:
    """The options of ``cls``'s fields (``include`` picks and orders some; ``exclude`` drops);
    ``only_given``: every option is :attr:`Flag.unset` (what is not given is left to the class,
    such as a pydantic-settings class reading it from the environment)."""
    flags = flags or {}
    fields = config_fields(cls)
    unknown = sorted({*(include or ()), *exclude, *flags} - set(fields))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")  # a bug in the CLI, not user input
    names = list(include) if include is not None else [n for n in fields if n not in exclude]
    chosen = {n: flags.get(n, Flag()) for n in names}
    if only_given:
        chosen = {n: dataclasses.replace(flag, unset=True) for n, flag in chosen.items()}
    return [_option(n, *fields[n], flag) for n, flag in chosen.items()]


def config_fields(cls: type) -> dict[str, tuple[Any, Any, str]]:
    """{field: (type, default, docstring)} of a dataclass or a pydantic model (whose
    docstrings are its fields' descriptions with ``use_attribute_docstrings``); the default
    is ``dataclasses.MISSING`` for a required field."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        return {f.name: (hints[f.name], _default(f), docs.get(f.name, "")) for f in dataclasses.fields(cls)}
    model_fields = getattr(cls, "model_fields", None)
    if model_fields is None:
        raise TypeError(f"{cls.__name__} is neither a dataclass nor a pydantic model")
    return {name: (f.annotation, dataclasses.MISSING if f.is_required() else f.get_default(call_default_factory=True),
                   f.description or "") for name, f in model_fields.items()}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _option(name: str, tp: Any, default: Any, doc: str, flag: Flag) -> _Option:
    if default is dataclasses.MISSING:
        raise TypeError(f"field {name} has no default: make it an argument and exclude it")
    dash = name.replace("_", "-")
    base, optional = _unwrap_optional(tp)
    annotation: Any = base
    decls, metavar = flag.decls, flag.metavar
    if flag.choices is not None:
        annotation = Literal[tuple(flag.choices)]
    elif base is bool:
        decls = decls or (f"--{dash}/--no-{dash}",)
    elif typing.get_origin(base) is dict or base is dict:
        annotation, default, metavar = list[str], [], "KEY=VALUE"
    elif flag.multiple and _sequence_item(base) is not None:
        annotation, default = list[str], list(default)
    elif _sequence_item(base) is not None:
        annotation, metavar = str, "A,B,..."
        default = ",".join(map(str, default)) if default else None
    elif hasattr(base, "get_secret_value"):  # pydantic's SecretStr: given as text, its default never shown
        annotation, flag = str, dataclasses.replace(flag, unset=True)
    elif typing.get_origin(base) is not Literal and base not in _SCALARS:
        raise TypeError(f"field {name}: no command-line type for {tp!r}; exclude it")
    if flag.none is not None and default is None:
        default = flag.none
    shown: Any = True
    if flag.unset:
        shown, default = (str(default) if default not in (None, [], "") else False), None
    if (optional or flag.unset) and default is None and annotation is not list[str]:
        annotation = typing.Optional[annotation]  # noqa: UP007
    option = typer.Option(default, *decls, help=help_text(doc), show_default=shown, metavar=metavar)
    parameter = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option,
                                  annotation=annotation)
    return _Option(name, parameter, tp, flag)


def options(cls: type, *, into: str = "config", include: Sequence[str] | None = None, exclude: Sequence[str] = (),
            flags: Mapping[str, Flag] | None = None, only_given: bool = False) -> Callable[[F], F]:
    """Decorate a typer command with an option per field of ``cls`` (a dataclass or a pydantic
    model); the command's parameter ``into`` receives {field: value} of them (dict fields: the
    raw KEY=VALUE strings; ``only_given``: only the options given)."""
    generated = field_options(cls, include=include, exclude=exclude, flags=flags, only_given=only_given)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]
        clash = {p.name for p in own} & {o.name for o in generated}
        if clash:
            raise TypeError(f"{fn.__name__}: parameter(s) {sorted(clash)} clash with {cls.__name__} fields")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {o.name: o.value(kwargs.pop(o.name)) for o in generated}
            if only_given:
                values = {name: value for name, value in values.items() if value is not None}
            return fn(**kwargs, **{into: values})

        params = [*own, *(o.parameter for o in generated)]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must see the signature above
        return typing.cast(F, command)

    return decorate


# --------------------------------------------------------------------------- KEY=VALUE

def pair_types(target: Any) -> dict[str, Any] | None:
    """{key: type} a KEY=VALUE option accepts: a dataclass's fields, a function's parameters,
    or None (any key) for an untyped target such as a timm model's options."""
    if target is None:
        return None
    if dataclasses.is_dataclass(target) and isinstance(target, type):
        hints = typing.get_type_hints(target)
        return {f.name: hints[f.name] for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(target)
    return {p.name: hints.get(p.name, Any) for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def parse_pairs(items: Sequence[str], target: Any, *, flag: str, skip: Sequence[str] = (),
                aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``["max_rotate=20", "flip=false"]`` -> ``{"max_rotate": 20.0, "flip": False}``, each
    value converted to the type of the ``target`` field it sets (:func:`pair_types`); an
    unknown key is a ConfigError listing the valid ones, with the closest as a suggestion."""
    known = pair_types(target)
    if known is not None:
        known = {k: v for k, v in known.items() if k not in skip}
    aliases = dict(aliases or {})
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {item!r}")
        name = key if known is None or key in known else aliases.get(key)
        if name is None:
            close = difflib.get_close_matches(key, [*(known or ()), *aliases], n=1, cutoff=0.6)
            hint = f" (did you mean {aliases.get(close[0], close[0])}?)" if close else ""
            raise ConfigError(f"{flag}: unknown option {key!r}{hint}; valid options: {', '.join(known or ()) or 'none'}")
        out[name] = convert(text, known.get(name, Any) if known is not None else Any, f"{flag} {key}")
    return out


def split_list(text: str | None) -> list[str] | None:
    """``"Smiling, Eyeglasses"`` -> ``["Smiling", "Eyeglasses"]``; None or blank -> None."""
    items = [a.strip() for a in (text or "").split(",") if a.strip()]
    return items or None

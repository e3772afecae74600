"""Settings as nested dataclasses: the "not given" sentinel, field metadata, paths, checks, (de)serialisation.

A configuration is a dataclass whose fields are settings or sections (dataclasses, possibly
``Optional``). Every setting has a *path* (``"matcher.k"``, ``"dance.experts.count"``) and a *flat
name*, which is also its command-line option (``k`` -> ``--k``, ``eval.epochs`` -> ``eval_epochs``
-> ``--eval-epochs``): a section's flat names are its ``FLAT_PREFIX`` plus the field name, unless
the field's metadata says otherwise. A field marked ``run="name"`` is not a setting of its own
inside a larger configuration: it is filled from the top-level setting ``name`` where the section is
used (e.g. the evaluation's seed is derived from the run's seed).

This module knows nothing of distillation; :mod:`hyperdm.distill.config` declares the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

__all__ = [
    "NOT_GIVEN",
    "setting",
    "leaves",
    "flat_names",
    "get_path",
    "set_path",
    "to_dict",
    "check_value",
    "check_ranges",
    "Range",
    "unit_interval",
    "section_names",
    "admits_none",
    "option",
    "scale_arg",
    "int_at_least",
    "positive_float",
    "nonnegative_float",
    "fraction",
    "strategy_arg",
]


class _NotGiven:
    """The value of an override that was not given (``None`` can be a value: ``max_norm=None`` is no clamp)."""

    _instance: _NotGiven | None = None

    def __new__(cls) -> _NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:  # copies and pickles stay the singleton
        return "NOT_GIVEN"

    def __copy__(self) -> _NotGiven:
        return self

    def __deepcopy__(self, memo: dict) -> _NotGiven:
        return self


#: an override that was not given: the preset (or the default) decides
NOT_GIVEN = _NotGiven()


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    flat: str | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    run: str | None = None,
    cli: bool = True,
    none_flag: tuple[str, str] | None = None,
) -> Any:
    """A dataclass field with the metadata the overrides, the settings table and the command line read.

    ``help``: one line for ``--help``; ``flat``: the flat name (default: the section's ``FLAT_PREFIX`` plus
    the field name); ``flag``: the command-line flag (default ``--`` + flat name with ``-``); ``parse``:
    the command-line parser (default from the type); ``run``: filled from this top-level setting when the
    section is part of a run (not a setting of its own there); ``cli=False``: no command-line option;
    ``none_flag``: ``(flag, help)`` of a second option that sets the setting to None (e.g. ``--no-clamp``).
    """
    meta = {
        "help": help,
        "flat": flat,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "metavar": metavar,
        "run": run,
        "cli": cli,
        "none_flag": none_flag,
    }
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(tp: Any) -> type | None:
    """The dataclass of a section field (``X`` or ``Optional[X]``), or None for a setting."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    return args[0] if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]) else None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, types.UnionType)


def leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, str, dataclasses.Field, Any]]:
    """``(path, flat name, field, type)`` of every setting of ``cls`` (sections expanded, run-derived fields out)."""
    hints = _hints(cls)
    own_prefix = getattr(cls, "FLAT_PREFIX", "") if prefix else ""
    for f in dataclasses.fields(cls):
        if f.metadata.get("run") or f.name == "sources":
            continue
        path = prefix + f.name
        flat = f.metadata.get("flat") or (own_prefix + f.name)
        sub = _section_type(hints[f.name])
        if sub is not None:
            yield from leaves(sub, path + ".")
        else:
            yield path, flat, f, hints[f.name]


def flat_names(cls: type) -> dict[str, str]:
    """flat name -> path, for every setting of ``cls`` (the flat names are unique)."""
    out: dict[str, str] = {}
    for path, flat, _, _ in leaves(cls):
        if flat in out:
            raise TypeError(f"{cls.__name__}: the flat name {flat!r} is used by {out[flat]} and {path}")
        out[flat] = path
    return out


def section_names(cls: type, prefix: str = "") -> dict[str, type]:
    """path -> dataclass of every section of ``cls`` (nested ones too)."""
    out: dict[str, type] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        sub = _section_type(hints[f.name])
        if sub is not None:
            out[prefix + f.name] = sub
            out.update(section_names(sub, prefix + f.name + "."))
    return out


def get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(obj: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        obj = getattr(obj, part)
    object.__setattr__(obj, last, value)  # also for frozen sections


def to_dict(obj: Any) -> Any:
    """A JSON-ready dict of a configuration: sections nested, tuples as lists, run-derived fields left out."""
    if not dataclasses.is_dataclass(obj):
        return list(obj) if isinstance(obj, tuple) else obj
    return {
        f.name: (dict(getattr(obj, f.name)) if f.name == "sources" else to_dict(getattr(obj, f.name)))
        for f in dataclasses.fields(obj)
        if not f.metadata.get("run")
    }


def _type_name(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _fits(value: Any, tp: Any) -> bool:
    if _is_union(tp):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(tp) is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, typing.get_args(tp)[0]) for v in value)
    return isinstance(value, tp)


def admits_none(tp: Any) -> bool:
    return _fits(None, tp)


def option(flat: str, f: dataclasses.Field) -> str:
    """The command-line option of a setting: its field's ``flag``, else ``--`` + the flat name with ``-``."""
    return f.metadata.get("flag") or "--" + flat.replace("_", "-")


def check_value(path: str, opt: str, value: Any, tp: Any) -> Any:
    """``value`` as the setting stores it (lists become tuples); ValueError naming the setting (``path``, its option
    ``opt``) and the type it takes."""
    if not _fits(value, tp):
        raise ValueError(f"setting {path} ({opt}) takes {_type_name(tp)}; got {value!r} ({type(value).__name__}).")
    return tuple(value) if isinstance(value, list) else value


# ---- ranges: each declared once, as the command-line parser of its settings and their check in validate() ------


class Range:
    """A setting's range, declared once on its field (``setting(..., parse=...)``): called on a command-line string
    it parses it (an argparse type whose refusal names what is expected); :meth:`problem` says what is wrong with
    a value given otherwise (a Python override, a config.json), which :func:`check_ranges` turns into an error."""

    def __init__(self, parse: Callable[[str], Any], ok: Callable[[Any], bool], must: str, hint: str = "") -> None:
        self._parse, self._ok, self.must, self.hint = parse, ok, must, hint
        self.__name__ = must  # argparse names a type by it in some messages

    def __call__(self, text: str) -> Any:
        return self._parse(text)

    def problem(self, value: Any, *, hint: bool = True) -> str | None:
        """None if ``value`` is in range, else what it must be (``must be an integer >= 1``), followed by the hint
        of the run's command line (``(--eval-runs 0 skips the evaluation)``) unless ``hint`` is False."""
        if self._ok(value):
            return None
        return f"{self.must} ({self.hint})" if hint and self.hint else self.must


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_scale(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 or 'auto', got {text!r}")
    return value


#: lambda: a finite number >= 0, or "auto"
scale_arg = Range(_parse_scale, lambda x: x == "auto" or (_number(x) and x >= 0), "must be >= 0 and finite, or 'auto'")


def int_at_least(low: int, hint: str = "") -> Range:
    """Integers ``>= low``; ``hint`` follows the refusal (what to pass instead)."""
    tail = f" ({hint})" if hint else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}{tail}")
        return value

    return Range(parse, lambda x: _integer(x) and x >= low, f"must be an integer >= {low}", hint)


def _float_range(ok: Callable[[float], bool], must: str) -> Range:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"{must}, got {text!r}")
        return value

    return Range(parse, lambda x: _number(x) and ok(float(x)), must)


#: a finite number > 0
positive_float = _float_range(lambda v: v > 0, "must be a finite number > 0")
#: a finite number >= 0
nonnegative_float = _float_range(lambda v: v >= 0, "must be a finite number >= 0")
#: a number in [0, 1): a momentum
unit_interval = _float_range(lambda v: 0 <= v < 1, "must lie in [0, 1)")


def _parse_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.2, got {text!r}") from None
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1] (0.2 keeps 20 % of each class), got {text!r}")
    return value


#: a fraction in (0, 1]
fraction = Range(
    _parse_fraction, lambda x: _number(x) and 0 < x <= 1, "must be a fraction in (0, 1] (0.2 keeps 20 % of each class)"
)


def strategy_arg(text: str) -> str:
    """A DSA strategy; ``none`` is the empty strategy (no augmentation)."""
    return "" if text == "none" else text


def check_ranges(obj: Any, *, options: Mapping[str, str] | None = None) -> None:
    """ValueError naming the setting (its path and option), what it must be and what it is, for the first setting
    of the configuration ``obj`` (a dataclass of settings and sections) outside its declared range (``parse`` a
    :class:`Range`, elements of a tuple each) or choices. Sections that are None are left out.

    The option named is the one of ``hyperdm distill`` (:func:`option`). A command with other option names passes
    ``options`` (path -> its option): a setting it has no option for is then named by its path alone, and the
    ranges' hints, which speak of the run's options, are left out."""
    for path, flat, f, _tp in leaves(type(obj)):
        try:
            value = get_path(obj, path)
        except AttributeError:  # inside a section that is None
            continue
        if value is None:  # None is a value where the type admits it (checked with the type)
            continue
        rule, choices = f.metadata.get("parse"), f.metadata.get("choices")
        values = value if isinstance(value, tuple) else (value,)
        opt = option(flat, f) if options is None else options.get(path)
        name = f"{path} ({opt})" if opt else path
        for v in values:
            why = rule.problem(v, hint=options is None) if isinstance(rule, Range) else None
            if why is None and choices is not None and v not in choices:
                why = f"must be one of {', '.join(map(repr, choices))}"
            if why is not None:
                if isinstance(value, tuple):  # say which element
                    raise ValueError(f"{name}: {v!r} {why}; got {list(value)}.")
                raise ValueError(f"{name} {why}; got {value!r}.")

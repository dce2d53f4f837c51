"""Value checks that name the full key and the bad value: the building blocks of every rule.

Each check raises :class:`~orchestrator.errors.ConfigError` with a one-line message
``"<key>: <problem> (got <value>)"``; the rule tables of :mod:`orchestrator.config.schema` are made
of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, NoReturn

from orchestrator.errors import ConfigError
from orchestrator.names import shown

Check = Callable[[str, Any], None]  # check(key, value): raises ConfigError naming key


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def fail(key: str, problem: str, value: Any) -> NoReturn:
    raise ConfigError(f"{key}: {problem} (got {shown(value)})")


def check_range(key: str, value: float | None, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False, allow_none: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        fail(key, "a value is required", value)
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        fail(key, f"must be in {left}{lo_s}, {hi_s}{right}", value)


def check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        fail(key, f"unknown value{hint}; valid: {', '.join(choices)}", value)


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        fail(key, "must be true or false", value)


# -- rule makers: a check for a schema declaration --------------------------------------------


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, allow_none: bool = False) -> Check:
    """A number in the interval (``lo_open``/``hi_open`` exclude the ends)."""
    return lambda k, v: check_range(k, v, lo, hi, lo_open=lo_open, hi_open=hi_open,
                                    allow_none=allow_none)


def one_of(choices: tuple[str, ...]) -> Check:
    """One of the named values (the error lists them, with a "did you mean")."""
    return lambda k, v: check_choice(k, v, choices)


def boolean(key: str, value: Any) -> None:
    check_bool(key, value)

"""The small field checks every config uses (ints, reals, choices, flags), with one message style.

Every refusal reads ``{field} must be {what is allowed}, got {value!r}``, for example::

    num_layers must be an integer in [1, 100], got 0
    seed must be an integer >= 0, got -1
    dropout must be a number in [0.0, 1.0), got 1.5
    learning_rate must be a finite number > 0, got nan
    ema_decay must be a number in (0, 1) or None, got 2
    gpus_per_trial must be a number in [0, 64] or null, got -1
    optimizer must be one of ('sgd', 'adamw'), got 'adam'

Bounds are written as the caller gives them (``0.0`` prints as ``0.0``, ``0`` as ``0``), so a caller keeps its
wording by the literals it passes. An ``optional`` field also accepts None, and its message ends with
``or None`` (``none_name`` spells it otherwise, e.g. ``null`` for the YAML-facing campaign). ``error`` is the
exception class raised (a ``ValueError`` subclass such as ``SpecError`` or ``CampaignError``).

Booleans are never integers or numbers here (``True == 1`` but is no layer count). Reals must be finite.
Standard library only: ``search_spaces`` imports no framework and nothing from ``nas`` (DESIGN.md, section 1).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_real", "check_string", "is_int", "is_real"]


def is_int(value: Any, low: int | None = None, high: int | None = None, *, high_open: bool = False) -> bool:
    """Whether ``value`` is an integer (not a bool) in ``[low, high]`` (``[low, high)`` with ``high_open``);
    a bound that is None is not checked. For callers whose message names a composite (a pair, a range)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return _within(value, low, high, low_open=False, high_open=high_open)


def is_real(
    value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> bool:
    """Whether ``value`` is a finite int or float (not a bool) within the bounds (closed unless said open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return _within(value, low, high, low_open=low_open, high_open=high_open)


def check_int(
    field: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    high_open: bool = False,
    optional: bool = False,
    none_name: str = "None",
    error: type[ValueError] = ValueError,
) -> Any:
    """Raises ``error`` unless ``value`` is an integer (not a bool) within the bounds; returns ``value``.

    The message says ``an integer in [low, high]`` (``[low, high)`` with ``high_open``), ``an integer >= low``
    without ``high``, ``an integer`` without bounds.
    """
    if (optional and value is None) or is_int(value, low, high, high_open=high_open):
        return value
    allowed = _allowed("an integer", "an integer", low, high, low_open=False, high_open=high_open)
    raise error(_message(field, allowed, value, optional, none_name))


def check_real(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    none_name: str = "None",
    error: type[ValueError] = ValueError,
) -> Any:
    """Raises ``error`` unless ``value`` is a finite int or float (not a bool) within the bounds; returns
    ``value`` unconverted (a caller that stores floats converts it).

    The message says ``a number in [low, high]`` with ``(``/``)`` for open bounds, ``a finite number >= low``
    (``> low`` when open) or ``<= high`` with one bound, ``a finite number`` without bounds.
    """
    if (optional and value is None) or is_real(value, low, high, low_open=low_open, high_open=high_open):
        return value
    allowed = _allowed("a number", "a finite number", low, high, low_open=low_open, high_open=high_open)
    raise error(_message(field, allowed, value, optional, none_name))


def check_choice(field: str, value: Any, allowed: tuple, *, error: type[ValueError] = ValueError) -> Any:
    """Raises ``error`` unless ``value`` is one of ``allowed``, of the same type as a choice; returns ``value``.

    The type is checked first: ``3.0 == 3`` and ``True == 1``, but neither is a kernel size.
    """
    if type(value) not in {type(choice) for choice in allowed} or value not in allowed:
        raise error(f"{field} must be one of {allowed}, got {value!r}")
    return value


def check_bool(field: str, value: Any, *, error: type[ValueError] = ValueError) -> Any:
    """Raises ``error`` unless ``value`` is True or False (not 0 or 1); returns ``value``."""
    if not isinstance(value, bool):
        raise error(f"{field} must be true or false, got {value!r}")
    return value


def check_string(
    field: str, value: Any, *, optional: bool = False, none_name: str = "None", error: type[ValueError] = ValueError
) -> Any:
    """Raises ``error`` unless ``value`` is a non-empty string (or None when ``optional``); returns ``value``."""
    if (optional and value is None) or (isinstance(value, str) and value):
        return value
    raise error(_message(field, "a non-empty string", value, optional, none_name))


def _within(value: float, low: float | None, high: float | None, *, low_open: bool, high_open: bool) -> bool:
    above_low = low is None or (value > low if low_open else value >= low)
    below_high = high is None or (value < high if high_open else value <= high)
    return above_low and below_high


def _allowed(
    interval_noun: str, bound_noun: str, low: Any, high: Any, *, low_open: bool, high_open: bool
) -> str:
    """``an integer in [1, 100]``, ``a finite number > 0``, ...: the allowed values as the message says them."""
    if low is not None and high is not None:
        return f"{interval_noun} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{bound_noun} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{bound_noun} {'<' if high_open else '<='} {high}"
    return bound_noun


def _message(field: str, allowed: str, value: Any, optional: bool, none_name: str) -> str:
    return f"{field} must be {allowed}{f' or {none_name}' if optional else ''}, got {value!r}"

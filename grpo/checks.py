"""ConfigError and the small checks every config dataclass uses; each check raises ConfigError naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration value that quadrl refuses, raised before any model is loaded."""


def number(
    where: str,
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` must be a finite real number in the given interval; returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {field} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {field} must be finite, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{where}: {field} must be in {interval}, got {value!r}")
    return float(value)


def integer(where: str, field: str, value: Any, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {field} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{where}: {field} must be >= {low}, got {value!r}")
    return value


def boolean(where: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {field} must be true or false, got {value!r}")
    return value


def choice(where: str, field: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ConfigError(f"{where}: {field} must be one of {list(options)}, got {value!r}")
    return value


def where(config: Any) -> str:
    return f"intervention '{config.name}'"

"""Range checks for option values, run before any work starts or any file is written.

Each failure is one OptionError line naming the option, its range and the value given.
The upper bounds are far beyond any useful value: they exist so that a typo cannot ask
for an overflow, a process per image, or an input the model turns into inf / NaN.
"""

from __future__ import annotations

import math
from typing import Any

from protobench.errors import OptionError

SEED_MAX = 2**32 - 1  # the attack's counter-based generator keeps 32 bits of the seed (rng.sample_keys)


def _range(low: float | None, high: float | None) -> str:
    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if high is None:
        return f">= {show(low)}"
    return f"<= {show(high)}" if low is None else f"in [{show(low)}, {show(high)}]"


def number(option: str, value: Any, low: float | None = 0, high: float | None = None) -> None:
    """A finite number (int or float) in [low, high]; None on a side: unbounded there."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    finite = real and (isinstance(value, int) or math.isfinite(value))
    if not (finite and (low is None or value >= low) and (high is None or value <= high)):
        raise OptionError(f"{option} must be a finite number {_range(low, high)}, got {value!r}")


def integer(option: str, value: Any, low: int | None = 0, high: int | None = None) -> None:
    """A whole number in [low, high]."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not (whole and (low is None or value >= low) and (high is None or value <= high)):
        raise OptionError(f"{option} must be a whole number {_range(low, high)}, got {value!r}")


def optional_integer(option: str, value: Any, low: int | None = 0, high: int | None = None) -> None:
    if value is not None:
        integer(option, value, low, high)


def choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(f"unknown {option} {value!r}: use {', '.join(choices[:-1])} or {choices[-1]}"
                          if len(choices) > 1 else f"{option} must be {choices[0]!r}, got {value!r}")

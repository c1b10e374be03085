"""Argument types and the parser class of the command line: every flag is checked when
it is parsed, and a bad one is a single line ``error: ...`` with exit status 2."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn

from mobileprune.errors import ConfigError

# the largest input a command builds from a shape it is given (elements per sample)
MAX_INPUT_ELEMENTS = 1 << 26


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the command's ``--help``."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _number(kind: type, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def count(minimum: int = 1) -> Callable[[str], int]:
    """An integer ``>= minimum``."""
    what = f"an integer >= {minimum}"

    def parse(text: str) -> int:
        value = _number(int, text, what)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


def real(low: float = 0.0, high: float = math.inf, *, open_low: bool = False,
         open_high: bool = True) -> Callable[[str], float]:
    """A finite float in the interval ``low .. high`` (ends open or closed as given)."""
    what = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def parse(text: str) -> float:
        value = _number(float, text, what)
        if value < low or value > high or (open_low and value == low) or (open_high and value == high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """Comma-separated positive integers (``--batch-sizes 1,8``)."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{flag} values must be positive, got {text!r}")
    return vals


def parse_input_shape(text: str) -> tuple[int, ...] | list[tuple[int, ...]]:
    """``--input-shape``: one shape ``1,28,28`` (a tuple), or one shape per model input
    separated by ``;``, e.g. ``3,32,32;3,32,32;3,32,32;625`` (a list). Each shape holds
    at most :data:`MAX_INPUT_ELEMENTS` elements."""
    flag = "--input-shape"
    example = "e.g. 1,28,28, or 3,32,32;3,32,32;3,32,32;625 for a model with several inputs"
    parts = [p.strip() for p in text.split(";")]
    if any(not p for p in parts):
        raise ConfigError(f"{flag} has an empty shape in {text!r}: give comma-separated "
                          f"integers per input, inputs separated by ';' ({example})")
    shapes = []
    for p in parts:
        try:
            vals = tuple(int(v) for v in p.split(","))
        except ValueError:
            raise ConfigError(f"{flag} must be comma-separated integers per input, inputs "
                              f"separated by ';' ({example}), got {text!r}") from None
        shapes.append(check_shape(vals, flag))
    return shapes[0] if len(shapes) == 1 else shapes


def check_shape(shape, where: str) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints of at most :data:`MAX_INPUT_ELEMENTS`
    elements (a shape read from a file is checked before anything is allocated)."""
    if not isinstance(shape, (list, tuple)) or not shape or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise ConfigError(f"{where}: an input shape must be a list of integers, got {shape!r}")
    if min(shape) < 1:
        raise ConfigError(f"{where} values must be positive, got {list(shape)}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"{where}: input shape {list(shape)} has {math.prod(shape):,} elements per "
                          f"sample, more than {MAX_INPUT_ELEMENTS:,}; give a smaller --input-shape")
    return tuple(shape)

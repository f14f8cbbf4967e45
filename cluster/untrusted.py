"""Reading what users send: bounded echoes, and JSON without NaN or huge numbers.

Error messages quote the offending value so the user can find it; `quote`
keeps that quote short whatever the value is (a YAML file of nested aliases
is a few hundred bytes yet its full repr is gigabytes, and Python refuses to
print an int of more than 4,300 digits). `load_json` reads a request body
the way the API wants it: NaN and Infinity are no JSON (a stored NaN makes
every later answer invalid JSON), and a number of more than MAX_DIGITS
digits is refused with a sentence instead of Python's int-to-str error.
"""
from __future__ import annotations

import json
import math
import reprlib
from typing import Any

MAX_DIGITS = 100  # no count, size or number of seconds needs more
MAX_QUOTE = 80


class HugeNumber:
    """Stands for an integer of more than MAX_DIGITS digits, which is never converted."""

    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


class _Short(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = self.maxother = MAX_QUOTE
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 4
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 3 * MAX_DIGITS:  # repr() itself may refuse it
            return f"<a number of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_SHORT = _Short()


def quote(value: Any) -> str:
    """repr(value), cut to about MAX_QUOTE characters without building the full repr."""
    text = _SHORT.repr(value)
    return text if len(text) <= MAX_QUOTE + 10 else text[:MAX_QUOTE] + "..."


def int_or_huge(digits: str) -> int | HugeNumber:
    """A JSON/YAML decimal integer; a HugeNumber when it has more than MAX_DIGITS digits."""
    count = len(digits.lstrip("+-"))
    return HugeNumber(count) if count > MAX_DIGITS else int(digits)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _refuse_huge(digits: str) -> int:
    value = int_or_huge(digits)
    if isinstance(value, HugeNumber):
        raise ValueError(f"it has a number of {value.digits} digits; the limit is {MAX_DIGITS}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def load_json(raw: bytes | str) -> Any:
    """json.loads refusing NaN, Infinity and numbers too large to use (ValueError)."""
    return json.loads(raw, parse_constant=_no_constant, parse_int=_refuse_huge, parse_float=_finite_float)

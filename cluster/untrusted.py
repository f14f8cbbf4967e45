"""Reading what users send: bounded echoes, and JSON without NaN or huge numbers.

Error messages quote the offending value so the user can find it; `quote`
keeps that quote short whatever the value is (a YAML file of nested aliases
is a few hundred bytes yet its full repr is gigabytes, and Python refuses to
print an int of more than 4,300 digits). `load_json` reads a request body
the way the API wants it: NaN and Infinity are no JSON (a stored NaN makes
every later answer invalid JSON), and a number of more than MAX_DIGITS
digits is refused with a sentence instead of Python's int-to-str error.
`load_yaml` is the safe YAML loader that refuses alias bombs cheaply and
leaves such numbers unconverted (HugeNumber), for the caller to refuse
naming the field.
"""
from __future__ import annotations

import json
import math
import reprlib
from typing import Any

import yaml

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


class AliasBomb(ValueError):
    """The YAML document expands past the limit through aliases, or (recursive) contains itself."""

    def __init__(self, recursive: bool):
        super().__init__("a YAML alias refers to its own anchor" if recursive
                         else "the YAML document is too large once its aliases are expanded")
        self.recursive = recursive


# The C parser is ~10x faster on a 1 MiB file and as safe as safe_load.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SAFE_LOADER):
    """The safe loader, refusing alias bombs and leaving huge integers unconverted."""

    max_units = 0  # set per load by load_yaml (a subclass each time would cost more)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node, self.max_units)
        return node

    def construct_yaml_int(self, node):
        digits = str(node.value).replace("_", "").lstrip("+-")
        if len(digits) > MAX_DIGITS:
            return HugeNumber(len(digits))  # int() would refuse it, or make one nothing can print
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml(text: str, max_units: int) -> Any:
    """yaml.safe_load, raising AliasBomb when the document expands past max_units
    (one per node plus each scalar's length) or contains itself."""
    loader = _Loader(text)
    loader.max_units = max_units
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, max_units: int) -> None:
    """An alias is the same node object as its anchor, so sizes are memoised per
    node: the walk costs the document's size, not its expansion's."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()  # the current node and its ancestors
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1 + len(node.value)
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > max_units:
                raise AliasBomb(recursive=False)
            continue
        if key in size:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise AliasBomb(recursive=True)
            if id(child) not in size:
                stack.append((child, False))

"""Option values without pydantic: typer's own conversions for the plain types cnncli's options use.

Typer (0.29, the one this was written against) converts every option value through a pydantic TypeAdapter built when the option is
first seen; importing pydantic and building those adapters is about a third of a one-image `predict`'s
start-up. For the types cnncli uses (str, int, float, Path, an Enum of choices, list[str]) the result is
simple to compute directly, so each option gets a converter that does that, and hands the value to typer's
own (pydantic) conversion whenever it is not sure: an unusual spelling, a value it cannot convert, any error.
So results are the ones typer gives (tests/test_startup.py compares them value by value), and every error
message is still typer's own. With a typer that has no such hook, nothing changes.
"""

from enum import Enum
from pathlib import Path

_DIGITS = frozenset("0123456789")
_FLOAT_CHARS = frozenset("0123456789.eE+-")


class _Unsure(Exception):
    """The value is left to typer's own conversion."""


def _int(value):
    if type(value) is int:
        return value
    if type(value) is str:
        digits = value[1:] if value[:1] == "-" else value
        if digits and len(digits) <= 18 and set(digits) <= _DIGITS:
            return int(value)
    raise _Unsure


def _float(value):
    if type(value) is float:
        return value
    if type(value) is str and value and set(value) <= _FLOAT_CHARS and not _DIGITS.isdisjoint(value):
        try:
            return float(value)
        except ValueError:
            pass
    raise _Unsure


def _bool(value):
    if type(value) is bool:
        return value
    raise _Unsure


def _str(value):
    if type(value) is str:
        return value
    raise _Unsure


class LeanCoercion:
    """Stands in for typer's RuntimeParam of one parameter (the same coerce(value, param, ctx) contract)."""

    def __init__(self, param):
        self.param = param
        desc = param.type_descriptor
        self.info = desc.parameter_info
        self.is_list = desc.is_list
        self.leaf = self._leaf(desc.annotation.__args__[0] if self.is_list else desc.annotation)

    def _leaf(self, annotation):
        if self.info.parser is not None or self.info.min is not None or self.info.max is not None:
            return None
        if annotation is bool:
            return _bool
        if annotation is str:
            return _str
        if annotation is int:
            return _int
        if annotation is float:
            return _float
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            return self._choice(list(annotation))
        if annotation is Path and not (self.info.allow_dash or self.info.path_type or self.info.resolve_path):
            return self._path
        return None

    def _choice(self, choices):
        from typer._param_types import coerce_cli_choice

        def choose(value, ctx):
            try:
                return coerce_cli_choice(value, choices=choices, case_sensitive=self.info.case_sensitive, ctx=ctx)
            except ValueError:
                raise _Unsure from None
        return choose

    def _path(self, value, ctx):
        from typer._param_types import coerce_cli_path

        if type(value) is not str or "\0" in value:
            raise _Unsure
        try:
            return coerce_cli_path(Path(value), self.info, path_type=Path, param=self.param, ctx=ctx)
        except Exception:  # noqa: BLE001 - typer's own conversion gives the same error in its own words
            raise _Unsure from None

    def _convert(self, value, ctx):
        leaf = self.leaf
        if leaf is None:
            raise _Unsure
        if leaf in (_bool, _str, _int, _float):
            return [leaf(v) for v in value] if self.is_list else leaf(value)
        return [leaf(v, ctx) for v in value] if self.is_list else leaf(value, ctx)

    def coerce(self, value, param, ctx):
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        try:
            if multi and isinstance(value, str):
                raise _Unsure
            if self.is_list and not isinstance(value, (list, tuple)):
                value = [value]
            return self._convert(value, ctx)
        except _Unsure:
            from typer._coercion import build_runtime_param

            return build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)


def install(param):
    """Give a typer parameter a LeanCoercion unless it has its converter already.

    Typer builds its pydantic converter only on first use (`_runtime_param` None until then); parameters
    without that slot (older typer, plain click) keep what they have."""
    if getattr(param, "_runtime_param", 0) is None and hasattr(param, "type_descriptor"):
        param._runtime_param = LeanCoercion(param)

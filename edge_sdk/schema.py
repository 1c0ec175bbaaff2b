"""Typed configuration: frozen dataclasses whose field types and metadata drive one validator.

A field declared with `checked` carries its constraints (minimum, maximum, choices, multiple_of);
`Schema.load` turns a parsed YAML/JSON document into the dataclass, checking every value against
its type hint and those constraints, and raises the schema's error type naming the field::

    train.epochs: expected an integer >= 1, got 'ten'
    train.lerning_rate: unknown field (did you mean 'lr'?)

Supported field types: bool, int, float, str, Any, List[...], Tuple[...], Optional/Union of
those, and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

MISSING: Any = dataclasses.MISSING


def checked(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    choices: Optional[Sequence[str]] = None,
    multiple_of: Optional[int] = None,
    allow_empty: bool = False,
    required: bool = False,
) -> Any:
    """A dataclass field with a default and the constraints `Schema.load` checks (numbers must be finite).

    default: lists and dicts are copied per instance. minimum / maximum: inclusive bounds of a number
    (of each item of a list). choices: the allowed strings. multiple_of: an integer's step.
    allow_empty: a string may be "". required: the document must give the field even though code
    constructing the dataclass may leave it out.
    """
    meta = {
        key: value
        for key, value in (
            ("minimum", minimum),
            ("maximum", maximum),
            ("choices", tuple(choices) if choices is not None else None),
            ("multiple_of", multiple_of),
            ("allow_empty", allow_empty or None),
            ("required", required or None),
        )
        if value is not None
    }
    if isinstance(default, (list, dict)):
        value = default
        default_factory = lambda: type(value)(value)  # noqa: E731
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def to_plain(value: Any) -> Any:
    """A dataclass as nested dicts and lists (tuples become lists), field order kept."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class Schema:
    """A validator for one kind of document.

    error: the exception type raised (one line naming the field). aliases: common wrong field names
    mapped to the right one, suggested when an unknown field is close to an alias. skip: field names
    that are not part of the document (set in code after loading). root: what the document is called
    in an error about the root itself. prefix: put before the field name in every error.
    ignore_unknown: fields the dataclass does not have are left out instead of refused.
    """

    def __init__(
        self,
        error: Type[Exception],
        aliases: Optional[Mapping[str, str]] = None,
        skip: Iterable[str] = (),
        root: str = "document",
        prefix: str = "",
        ignore_unknown: bool = False,
    ) -> None:
        self.error = error
        self.root = root
        self.prefix = prefix
        self.ignore_unknown = ignore_unknown
        self.aliases = dict(aliases or {})
        self.skip = frozenset(skip)

    def load(self, cls: Any, data: Any, path: str = "") -> Any:
        """`data` (a mapping, or None for all defaults) checked and converted into dataclass `cls`.

        path: where `data` sits in the document ("" for the root), the prefix of every field name in errors.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self._fail(path or self.root, "a mapping of fields", data)
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls) if f.name not in self.skip]
        for key in data:
            if key not in known and not self.ignore_unknown:
                raise self.error(
                    "{}{}: unknown field{}".format(self.prefix, _join(path, key), self._suggest(str(key), known))
                )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in self.skip:
                continue
            where = _join(path, f.name)
            if f.name not in data:
                has_default = f.default is not MISSING or f.default_factory is not MISSING
                if f.metadata.get("required") or not has_default:
                    raise self.error("{}{} is missing".format(self.prefix, where))
                continue
            kwargs[f.name] = self._convert(data[f.name], hints[f.name], where, dict(f.metadata))
        return cls(**kwargs)

    def _fail(self, path: str, expected: str, value: Any, hint: str = "") -> Exception:
        return self.error("{}{}: expected {}, got {!r}{}".format(self.prefix, path, expected, value, hint))

    def _suggest(self, key: str, known: List[str]) -> str:
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not hint:
            alias = difflib.get_close_matches(key, list(self.aliases), n=1, cutoff=0.6)
            hint = [self.aliases[alias[0]]] if alias and self.aliases[alias[0]] in known else []
        return " (did you mean {!r}?)".format(hint[0]) if hint else " (known fields: {})".format(", ".join(known))

    def _convert(self, value: Any, tp: Any, path: str, meta: Dict[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Union:
            return self._convert_union(value, args, path, meta)
        if dataclasses.is_dataclass(tp):
            return self.load(tp, value, path)
        if origin in (list, List):
            return self._convert_items(value, [args[0] if args else Any], path, meta, list)
        if origin in (tuple, Tuple):
            fixed = args and args[-1] is not Ellipsis
            return self._convert_items(value, list(args) if fixed else [args[0] if args else Any], path, meta, tuple)
        if origin in (dict, Dict):
            if not isinstance(value, dict):
                raise self._fail(path, "a mapping", value)
            item_tp = args[1] if args else Any
            return {k: self._convert(v, item_tp, _join(path, k), meta) for k, v in value.items()}
        if tp is bool:
            if not isinstance(value, bool):
                raise self._fail(path, "true or false", value)
            return value
        if tp is int or tp is float:
            return self._check_number(value, path, tp is int, meta)
        if tp is str:
            return self._check_string(value, path, meta)
        if tp is Any:
            return value
        raise TypeError("unsupported schema field type {!r} at {}".format(tp, path))

    def _convert_items(self, value: Any, item_tps: List[Any], path: str, meta: Dict[str, Any], kind: type) -> Any:
        """A list (or tuple): one item type for any length, or one type per item for a fixed length."""
        if not isinstance(value, list):
            raise self._fail(path, "a list", value)
        if len(item_tps) > 1 and len(value) != len(item_tps):
            raise self._fail(path, "a list of {} items".format(len(item_tps)), value)
        return kind(
            self._convert(v, item_tps[i] if len(item_tps) > 1 else item_tps[0], "{}[{}]".format(path, i), meta)
            for i, v in enumerate(value)
        )

    def _convert_union(self, value: Any, args: Tuple[Any, ...], path: str, meta: Dict[str, Any]) -> Any:
        nullable = type(None) in args
        if value is None and nullable:
            return None
        expected = []
        for option in args:
            if option is type(None):
                continue
            try:
                return self._convert(value, option, path, meta)
            except self.error as exc:
                expected.append(str(exc).split(": expected ", 1)[1].split(", got")[0])
        raise self._fail(path, " or ".join(expected) + (" or null" if nullable else ""), value)

    def _check_number(self, value: Any, path: str, integer: bool, meta: Dict[str, Any]) -> Any:
        lo, hi, mult = meta.get("minimum"), meta.get("maximum"), meta.get("multiple_of")
        words = ["an integer" if integer else "a number"]
        if lo is not None and hi is not None:
            words.append("between {} and {}".format(lo, hi))
        elif lo is not None:
            words.append(">= {}".format(lo))
        elif hi is not None:
            words.append("<= {}".format(hi))
        if mult is not None:
            words.append("and a multiple of {}".format(mult))
        ok_types = (int,) if integer else (int, float)
        if (
            isinstance(value, bool)
            or not isinstance(value, ok_types)
            or not math.isfinite(value)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
            or (mult is not None and value % mult)
        ):
            raise self._fail(path, " ".join(words), value)
        return value if integer else float(value)

    def _check_string(self, value: Any, path: str, meta: Dict[str, Any]) -> str:
        choices = meta.get("choices")
        if meta.get("allow_empty") and not choices:
            if not isinstance(value, str):
                raise self._fail(path, "a string", value)
            return value
        if not isinstance(value, str) or not value:
            raise self._fail(path, "one of " + ", ".join(choices) if choices else "a non-empty string", value)
        if choices and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            raise self._fail(
                path, "one of " + ", ".join(choices), value, " (did you mean {!r}?)".format(hint[0]) if hint else ""
            )
        return value


def _join(path: str, key: Any) -> str:
    return "{}.{}".format(path, key) if path else str(key)

"""Typed input contracts: what a bundle's reader needs to reproduce training's input pipeline.

One frozen dataclass per reader kind, declared by its reader
(:attr:`core.readers.InputReader.contract_class`): :class:`InputContract` holds what every
reader needs; :class:`core.image_reader.ImageContract` and the domains' readers add their own
fields. A contract is checked when it is built (JSON types and values), when a checkpoint
stores it and when a bundle is read (keys too, against the bundle's schema version).

Schema versions of the JSON form (``metadata.json``'s ``input``, a checkpoint's
``preprocessing``): 2.x holds every field plus the network tensor (``dtype``, ``layout``,
``shape``), and ``image_size`` is the network input size for every reader. 1.x, written before
typed contracts, may lack the fields that have defaults here; :meth:`InputContract.upgrade_1_0`
maps the keys a reader kind named differently then (the scene reader's ``tile_size``).

Standard library only: every bundle's predictor carries this module.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from core.errors import DataError
from core.json_schema import SchemaError, schema_of, validate

C = TypeVar("C", bound="InputContract")

# The checkpoint entry holding the schema version of its ``preprocessing`` contract; checkpoints
# without it were written before typed contracts and hold a schema-1.0 one.
CHECKPOINT_SCHEMA_KEY = "preprocessing_schema"

# The network tensor every contract describes; written by to_json, derived from the fields.
NETWORK_SCHEMA: dict[str, dict[str, Any]] = {
    "dtype": {"const": "float32"},
    "layout": {"const": "NCHW"},
    "shape": {"type": "array", "minItems": 4, "maxItems": 4,
              "prefixItems": [{"type": "null"}, {"type": "integer", "minimum": 1},
                              {"type": "integer", "minimum": 1}, {"type": "integer", "minimum": 1}]},
}


class ContractError(DataError):
    """An input contract with a missing, unknown or invalid key; the message names it."""


def schema_major(version: str) -> int:
    """The major number of a schema version (``"1.0"`` -> 1)."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise ContractError(f"schema version '{version}' is not of the form MAJOR.MINOR")
    return int(head)


def _frozen(value: Any) -> Any:
    """JSON-like value made immutable: lists to tuples, dicts to read-only mappings."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({str(k): _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """The JSON form of a frozen value: tuples to lists, mappings to dicts."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputContract:
    """What every reader needs: channels, input size, normalisation and the class names.

    Readers of other inputs subclass it with their own fields (and, when they renamed keys
    since schema 1.0, :meth:`upgrade_1_0`). Build one through the reader
    (:meth:`core.readers.InputReader.contract`), which fills in :attr:`reader`.
    """

    reader: str
    """The reader's name as a bundle stores it: a dotted path ``package.module:OBJECT`` or a
    built-in short name (:data:`core.readers.BUILTIN_READERS`)."""
    in_chans: int
    """Input channels of the network."""
    image_size: int | tuple[int, int]
    """Network input size: one side, or ``[height, width]``; the tile size of tiled readers."""
    mean: tuple[float, ...]
    """Per-channel normalisation mean (from the training split unless configured)."""
    std: tuple[float, ...]
    """Per-channel normalisation standard deviation."""
    class_names: tuple[str, ...] = ()
    """The classes in output order."""
    input_scaling: str | None = None
    """How raw values become the numbers that are normalised, in words (for the model card)."""

    _schemas: ClassVar[dict[type, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _frozen(getattr(self, field.name)))
        try:
            validate(self.to_json(), self.json_schema(), "input")
        except SchemaError as err:
            raise ContractError(f"{type(self).__name__}: {err}") from err
        self.check()

    def check(self) -> None:
        """Value checks beyond the JSON types; subclasses extend it (calling this first)."""
        if not self.reader:
            raise ContractError(f"{type(self).__name__}: input.reader is empty; name the reader")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.in_chans:
                raise ContractError(f"input.{name} has {len(values)} value(s) for {self.in_chans} "
                                    "input channel(s); give one per channel")
            if not all(math.isfinite(v) for v in values):
                raise ContractError(f"input.{name} {list(values)} holds a value that is not finite")
        if any(s <= 0 for s in self.std):
            raise ContractError(f"input.std {list(self.std)} must be positive")

    # -- derived --
    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the network input."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def network_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one network input."""
        return (self.in_chans, *self.size)

    # -- JSON --
    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON, then the network tensor (``dtype``, ``layout``, ``shape``)."""
        data = {field.name: _thawed(getattr(self, field.name)) for field in dataclasses.fields(self)}
        return {**data, "dtype": "float32", "layout": "NCHW", "shape": [None, *self.network_shape]}

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of :meth:`to_json` (schema 2.x: every key required, no others)."""
        if cls not in InputContract._schemas:
            hints = typing.get_type_hints(cls)
            properties = {f.name: schema_of(hints[f.name]) for f in dataclasses.fields(cls)}
            properties.update(NETWORK_SCHEMA)
            doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
            InputContract._schemas[cls] = {
                "title": cls.__name__, "description": doc, "type": "object",
                "properties": properties, "required": list(properties), "additionalProperties": False,
            }
        return InputContract._schemas[cls]

    @classmethod
    def upgrade_1_0(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A schema-1.x contract with this class's keys; default unchanged."""
        return data

    @classmethod
    def from_json(cls: type[C], data: Mapping[str, Any], version: str) -> C:
        """The contract of a bundle (or checkpoint) written with schema ``version``.

        Raises:
            ContractError: a key missing or unknown, or a value of the wrong type or range;
                the message names the key, the schema version and the contract class.
        """
        where = f"schema {version}, {cls.__name__}"
        if not isinstance(data, Mapping):
            raise ContractError(f"input: expected a JSON object, got {type(data).__name__} ({where})")
        data = dict(data)
        legacy = schema_major(version) == 1
        if legacy:
            data = cls.upgrade_1_0(data)
        schema = cls.json_schema()
        required = ([f.name for f in dataclasses.fields(cls) if _required(f)] if legacy
                    else schema["required"])
        unknown = [k for k in data if k not in schema["properties"]]
        missing = [k for k in required if k not in data]
        if unknown or missing:
            problems = ([f"unknown key(s) {_keys(unknown)}"] if unknown else []) + (
                [f"missing key(s) {_keys(missing)}"] if missing else [])
            raise ContractError(f"input contract of reader '{data.get('reader')}' has "
                                f"{' and '.join(problems)} ({where}; its keys: "
                                f"{', '.join(schema['properties'])})")
        try:
            validate(data, {**schema, "required": required}, "input")
        except SchemaError as err:
            raise ContractError(f"{err} ({where})") from err
        shape = data.pop("shape", None)
        for key in NETWORK_SCHEMA:
            data.pop(key, None)
        contract = cls(**data)
        if shape is not None and list(shape) != [None, *contract.network_shape]:
            raise ContractError(f"input.shape {list(shape)} does not match in_chans and image_size "
                                f"({[None, *contract.network_shape]}; {where})")
        return contract


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _keys(names: list[str]) -> str:
    return ", ".join(f"'input.{n}'" for n in names)

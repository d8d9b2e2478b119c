"""Input readers of the torch-free bundle predictor: the protocol and the registry that finds them.

A bundle's ``metadata.json`` names its reader in ``input.reader``: a dotted path
``package.module:OBJECT`` to an :class:`InputReader` instance, resolved with importlib, so a
reader can live in any package (a domain of this project, or a team's own) without core
knowing it. The readers shipped before plug-ins keep their short names (``image``, ``dicom``,
``geotiff_patch``, ``geotiff_scene``): :data:`BUILTIN_READERS` maps them to dotted paths, so
bundles of schema 1.x that store those names still load. Each reader declares the typed
contract it reads with (:attr:`InputReader.contract_class`, see :mod:`core.contracts`), so
:func:`read_contract` checks a bundle's ``input`` against the right class without core naming it.

numpy only at import: every bundle's predictor carries this module.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.contracts import ContractError, InputContract
from core.errors import DataError

# Short names of the readers that existed before plug-ins -> their dotted paths. Strings only:
# core never imports a domain by name; importlib resolves these when a bundle asks for one.
BUILTIN_READERS: dict[str, str] = {
    "image": "core.image_reader:IMAGE",
    "dicom": "domains.medical.plugin:DICOM",
    "geotiff_patch": "domains.agriculture.plugin:GEOTIFF_PATCH",
    "geotiff_scene": "domains.agriculture.plugin:GEOTIFF_SCENE",
}

# What the standard per-file prediction writes (readers with scene prediction write their own).
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
MASK_SUFFIX = "_mask.png"
# What detection prediction writes (see core.predict_detection).
DETECTIONS_CSV = "detections.csv"
DETECTIONS_JSON = "detections.json"


def card_value(value: Any) -> str:
    """A contract value as the model card shows it (floats to 4 digits, lists joined, None as —)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(card_value(v) for v in value)
    return "—" if value is None else str(value)


class InputReader(abc.ABC):
    """How the torch-free predictor reads one kind of input file, and what it needs to do so.

    A reader is stateless and lives in a module that imports only numpy, PIL and core's
    torch-free modules at import time; packages such as pydicom or rasterio are imported inside
    its methods. Its module, and the project modules it imports, are copied into every bundle
    that names it.
    """

    name: ClassVar[str]
    """The value datamodules write as the contract's ``reader``: a dotted path
    ``package.module:OBJECT`` to this instance (or a key of :data:`BUILTIN_READERS`)."""
    extensions: ClassVar[tuple[str, ...]]
    """Input file extensions searched in folders, lower case (``""``: files without one)."""
    extra: ClassVar[str | None] = None
    """The convnext-domains pip extra that installs :attr:`packages` (None: the base install)."""
    modules: ClassVar[tuple[str, ...]] = ()
    """Project modules the predictor needs besides the reader's own module; the imports of
    both are followed when a bundle's predictor is assembled."""
    packages: ClassVar[tuple[str, ...]] = ()
    """Distributions the reader needs beyond the predictor's base packages; their version
    floors come from the project's declared requirements."""
    contract_class: ClassVar[type[InputContract]] = InputContract
    """The typed input contract this reader reads with (a subclass of :class:`InputContract`
    declaring the reader's own fields); datamodules build it with :meth:`contract`."""
    tiled: ClassVar[bool] = False
    """Whether :meth:`predict_scene` predicts inputs of any size tile by tile; for detection
    bundles the predictor then calls :meth:`detect_scene` instead of reading files whole."""
    scene_detection: ClassVar[bool] = False
    """Whether :meth:`detect_scene` is implemented (whole-scene detection, tiled readers)."""
    sample_unit: ClassVar[str] = "samples of the training source"
    """What a held-out test sample is, for the model card's limitations."""

    @abc.abstractmethod
    def read(self, path: Path, contract: InputContract) -> np.ndarray:
        """One input file as HWC float32, before resizing and normalisation."""

    def contract(self, **fields: Any) -> InputContract:
        """This reader's contract, checked, with :attr:`~InputContract.reader` set to its name."""
        return self.contract_class(reader=self.name, **fields)

    def predict_scene(self, bundle: Any, path: Path, out: Path, batch_size: int,
                      write_probabilities: bool = False) -> Path:
        """Predict one input of any size tile by tile into ``out``; returns the main output.

        Only readers with :attr:`tiled` set implement it.
        """
        raise DataError(f"input reader '{self.name}' has no tiled scene prediction; predict "
                        "its inputs one file at a time")

    def detect_scene(self, bundle: Any, path: Path, out: Path,
                     detect: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                     score_threshold: float) -> dict[str, Path]:
        """Detect objects in one input of any size tile by tile, writing into ``out``; returns
        the written files by kind.

        ``detect`` takes ONE preprocessed network input ``(C, H, W)`` float32 (normalised, the
        export size) and returns ``boxes (N, 4)`` xyxy in that tile's pixels, ``scores (N,)``
        and ``labels (N,)`` int (0-based), with no threshold applied beyond the graph's
        ``score_thresh``; detections below ``score_threshold`` are not kept. Only tiled readers
        (:attr:`tiled`, :attr:`scene_detection`) implement it.
        """
        raise DataError(f"input reader '{self.name}' has no tiled scene detection; detect "
                        "objects in its inputs one file at a time")

    def input_keys(self, path: Path) -> dict[str, str]:
        """Non-identifying keys of an input written beside its path in detection outputs (a
        DICOM reader: its ``SOPInstanceUID``); never a patient or person identifier."""
        return {}

    def outputs(self, task: str) -> dict[str, str]:
        """The files a prediction writes into the output folder, each with what it holds
        (``{stem}``: an input's file name without its extension).

        Readers with :attr:`tiled` scene prediction list their own.
        """
        if task == "segmentation":
            return {f"{{stem}}{MASK_SUFFIX}": "class index per pixel, at the network input size"}
        if task == "detection":
            return {DETECTIONS_JSON: "COCO dataset dict: images, categories (id = class index + 1) "
                                     "and the detections reaching the score threshold as "
                                     "annotations (bbox [x, y, w, h] in stored-image pixels, score)",
                    DETECTIONS_CSV: "one row per detection above score_thresh: file, x0, y0, x1, "
                                    "y1 (stored-image pixels), label, score, kept (reaches the "
                                    "threshold), threshold; an image without any: one empty row"}
        return {PREDICTIONS_CSV: "one row of probabilities and decision per input",
                PREDICTIONS_JSON: "the same rows with the threshold and its source"}

    def card_channels(self, contract: InputContract) -> str:
        """The model-card line on the input channels."""
        return f"- **Channels**: {contract.in_chans}."

    def card_input(self, contract: InputContract, size: str) -> list[str]:
        """Model-card lines on what the reader does to an input; ``size`` is ``HxW``."""
        return [f"- **Size**: resized to {size} (height x width)."]

    def card_scaling(self, contract: InputContract) -> str | None:
        """How raw values are scaled before normalisation, when the reader says so."""
        return None


class ReaderRegistry(Mapping[str, InputReader]):
    """Readers by the name a bundle stores: a dotted path, or a short name of the built-ins.

    Iterating lists the built-in short names only: plug-in readers are found by their path,
    never by scanning installed packages.
    """

    def __init__(self, builtins: Mapping[str, str]) -> None:
        self._builtins = dict(builtins)
        self._resolved: dict[str, InputReader] = {}

    def __getitem__(self, name: str) -> InputReader:
        if name not in self._resolved:
            self._resolved[name] = self._resolve(name)
        return self._resolved[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builtins)

    def __len__(self) -> int:
        return len(self._builtins)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except DataError:
            return False
        return True

    def path_of(self, name: str) -> str:
        """The dotted path a reader name stands for."""
        return self._builtins.get(name, name)

    def _resolve(self, name: str) -> InputReader:
        path = self.path_of(name) if isinstance(name, str) else ""
        module_name, _, attribute = path.partition(":")
        if not module_name or not attribute:
            raise DataError(
                f"input reader '{name}' is not supported by this version (it knows "
                f"{', '.join(self._builtins)}, or a plug-in path 'package.module:OBJECT'); "
                "upgrade convnext-domains or install the package that provides the reader")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise DataError(f"input reader '{name}' needs module {err.name}, which cannot be "
                            "imported; install the package that provides it") from err
        reader = getattr(module, attribute, None)
        if reader is None:
            raise DataError(f"input reader '{name}': module {module_name} has no {attribute}; "
                            "check the reader path in the contract")
        if not isinstance(reader, InputReader):
            raise DataError(f"input reader '{name}' is a {type(reader).__name__}, expected an "
                            f"instance of {InputReader.__module__}.{InputReader.__name__}")
        contract = getattr(reader, "contract_class", None)
        if not (isinstance(contract, type) and issubclass(contract, InputContract)):
            raise DataError(f"input reader '{name}' declares contract_class {contract!r}, expected a "
                            f"subclass of {InputContract.__module__}.{InputContract.__name__}")
        # A copied reader that kept its original's name would write contracts that resolve
        # to the original: refuse it where the copy is first used.
        own = getattr(reader, "name", None)
        if not isinstance(own, str) or self.path_of(own) != path:
            raise DataError(f"input reader {path} names itself '{own}', which stands for "
                            f"{self.path_of(own) if isinstance(own, str) else 'no reader'}; set "
                            f"{type(reader).__name__}.name = '{path}'")
        return reader


READERS = ReaderRegistry(BUILTIN_READERS)


def read_contract(data: Any, version: str) -> InputContract:
    """The typed contract of a bundle's ``input`` (or a checkpoint's ``preprocessing``),
    written with schema ``version``, read with the contract class of the reader it names.

    Raises:
        ContractError: no or an unknown reader, or a key missing, unknown or invalid; the
            message names the key and the schema version.
    """
    if not isinstance(data, Mapping):
        raise ContractError(f"input: expected a JSON object, got {type(data).__name__} (schema {version})")
    if "reader" not in data:
        raise ContractError(f"input contract has no key 'input.reader' (schema {version}); it names "
                            "the reader the bundle's inputs are read with")
    try:
        reader = READERS[data["reader"]]
    except DataError as err:
        raise ContractError(f"input.reader: {err} (schema {version})") from err
    return reader.contract_class.from_json(data, version)


def contract_json(contract: InputContract, version: str) -> dict[str, Any]:
    """``contract`` as JSON after checking that it reads back, through the reader it names,
    as the same contract (so a checkpoint never stores one a bundle would refuse)."""
    data = contract.to_json()
    again = read_contract(data, version)
    if again != contract:
        raise ContractError(f"{type(contract).__name__} names reader '{contract.reader}', whose "
                            f"contract is {type(again).__name__}; build it with that reader's "
                            "contract() method")
    return data


def reader_modules(reader: InputReader) -> tuple[str, ...]:
    """The project modules a reader declares for the predictor: its own and :attr:`modules`."""
    return (type(reader).__module__, *reader.modules)

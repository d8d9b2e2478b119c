"""``convnext-domains bundle verify DIR``: check a bundle as its receiver would, without running it.

Checks the schema version, ``metadata.json`` against the bundle's own JSON Schema
(``metadata.schema.json``, schema 2.x) and against the schema this version writes, the typed
input contract (every key known and present), the metadata digest, the sha256 of every listed
file, and that no file is unlisted. Needs neither torch nor onnxruntime.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.bundle import (
    METADATA,
    SCHEMA_FILE,
    WRITTEN_VERSIONS,
    BundleError,
    bundle_files,
    load_bundle,
)
from core.bundle_schema import metadata_schema
from core.contracts import schema_major
from core.json_schema import SchemaError, validate
from core.readers import READERS


@dataclass(frozen=True)
class Verified:
    """What :func:`verify_bundle` checked."""

    path: Path
    schema_version: str
    reader: str
    contract: str
    """The contract class the input was read with."""
    files: int
    """Files whose sha256 matched."""
    json_schema: bool
    """Whether metadata.json was checked against a JSON Schema (schema 2.x bundles)."""


def verify_bundle(path: str | Path) -> Verified:
    """Check the bundle at ``path``; raises :class:`~core.bundle.BundleError` at the first problem."""
    bundle = load_bundle(path)  # version, digest, every listed file's sha256, the input contract
    meta, folder = bundle.meta, bundle.path
    unlisted = sorted(set(bundle_files(folder)) - set(meta["files"]))
    if unlisted:
        raise BundleError(f"bundle '{folder}' holds {unlisted[0]}, which {METADATA} does not list "
                          f"({len(unlisted)} unlisted file(s)); remove it or copy the bundle again "
                          "from the original")
    version = str(meta["schema_version"])
    checked = schema_major(version) >= 2
    if checked:
        _check_json_schema(folder, meta, version, bundle.contract.reader)
    return Verified(folder, version, bundle.contract.reader, type(bundle.contract).__name__,
                    len(meta["files"]), checked)


def _check_json_schema(folder: Path, meta: dict, version: str, reader: str) -> None:
    named = meta.get("$schema")
    if named != SCHEMA_FILE or SCHEMA_FILE not in meta["files"]:
        raise BundleError(f"{folder / METADATA} names JSON Schema {named!r}, which is not the "
                          f"bundle's sealed {SCHEMA_FILE}; re-export the bundle")
    try:
        schema = json.loads((folder / SCHEMA_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{folder / SCHEMA_FILE} is not valid JSON ({err}); re-export the bundle") from err
    try:
        validate(meta, schema, "metadata")
    except SchemaError as err:
        raise BundleError(f"{folder / METADATA} does not match {SCHEMA_FILE} (schema {version}): {err}") from err
    except ValueError as err:  # a keyword this validator does not know: a newer writer
        raise BundleError(f"{folder / SCHEMA_FILE} cannot be checked by this version ({err}); "
                          "upgrade convnext-domains") from err
    # Sealed and self-consistent is not enough: a faulty writer may have sealed a weaker schema.
    if version in WRITTEN_VERSIONS and schema != metadata_schema(READERS[reader], version):
        raise BundleError(f"{folder / SCHEMA_FILE} is not the schema {version} that convnext-domains "
                          f"writes for '{reader}' bundles; re-export the bundle")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnext-domains bundle",
                                     description="Work with exported bundles without running them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify", help="check a bundle's metadata against its JSON Schema, its contract and every file's sha256",
        description="Check a bundle folder as its receiver would: schema version, metadata.json "
                    "against metadata.schema.json, the input contract, the digest and every file's sha256.")
    verify.add_argument("bundle", metavar="DIR", help="bundle folder from convnext-domains export")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``convnext-domains bundle verify DIR``: a summary on success; errors raise BundleError."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    result = verify_bundle(args.bundle)
    print(f"ok: {result.path}")
    if result.json_schema:
        print(f"  schema {result.schema_version}: {METADATA} matches {SCHEMA_FILE}")
    else:
        print(f"  schema {result.schema_version}: no JSON Schema in this version; read as "
              f"{result.schema_version} (upgraded in memory)")
    print(f"  input: reader '{result.reader}' ({result.contract}), every key known and present")
    print(f"  files: {result.files} match their sha256, the metadata digest too; none unlisted")

"""``manifest.json``: the commit record of an index directory.

It names the files of the current generation with their sizes and SHA-256, so loading
refuses a truncated, tampered or half-written file by name, and replacing the manifest
(atomically, last) is what commits an update: files it does not name are not part of
the index.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import DahpError
from ..serialization import atomic_write_bytes

FORMAT = "dahp-index"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_REQUIRED = ("index_id", "generation", "bits", "model_fingerprint", "backend", "count", "created", "updated",
             "files", "sources")
_FILE_ROLES = ("model", "engine", "metadata")
_KIND_NAMES = {int: "a whole number", str: "a string", dict: "an object", list: "a list"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """How the manifest pins a file: its name in the directory, size and SHA-256."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest, after checking it is one this version of dahp reads."""
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DahpError(f"{directory} is not a dahp index: {MANIFEST_FILE} is missing "
                        "(build one with `dahp index build`)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DahpError(f"{path} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DahpError(f"{path} is not a dahp index manifest (expected \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DahpError(f"{path} has index format version {manifest.get('format_version')}; "
                        f"this dahp reads version {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise DahpError(f"{path} is corrupt: it lacks {missing}")
    problem = _shape_problem(manifest)
    if problem:
        raise DahpError(f"{path} is corrupt: {problem}")
    return manifest


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's structure (valid JSON that dahp did not write), or None."""
    for key, kind in (("bits", int), ("count", int), ("generation", int), ("backend", str),
                      ("model_fingerprint", str), ("files", dict), ("sources", list)):
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            return f'"{key}" is {json.dumps(manifest[key])}, expected {_KIND_NAMES[kind]}'
    if manifest["count"] < 0 or manifest["bits"] < 1:
        return f'"count" is {manifest["count"]} and "bits" {manifest["bits"]}, expected count >= 0 and bits >= 1'
    roles = [role for role in _FILE_ROLES if role not in manifest["files"]]
    if roles:
        return f'"files" lacks {roles}'
    for role, record in manifest["files"].items():
        if not (isinstance(record, dict) and isinstance(record.get("name"), str)
                and isinstance(record.get("bytes"), int) and isinstance(record.get("sha256"), str)):
            return f'"files.{role}" is {json.dumps(record)}, expected {{"name", "bytes", "sha256"}}'
    for number, source in enumerate(manifest["sources"]):
        if not isinstance(source, dict) or not isinstance(source.get("skipped", []), list):
            return f'"sources[{number}]" is {json.dumps(source)}, expected an object with a "skipped" list'
    return None


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest names exists in ``directory`` with the recorded size and SHA-256."""
    for role, record in manifest["files"].items():
        name = record.get("name", "")
        if not name or Path(name).name != name or name in (".", ".."):
            raise DahpError(f"{directory / MANIFEST_FILE} is corrupt: bad file name {name!r} for the {role} file")
        path = directory / name
        if not path.is_file():
            raise DahpError(f"index file {path} is missing")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise DahpError(f"index file {path} is truncated or changed: {size} bytes, "
                            f"the manifest says {record['bytes']}")
        if sha256_file(path) != record["sha256"]:
            raise DahpError(f"index file {path} is corrupt: its SHA-256 does not match the manifest")

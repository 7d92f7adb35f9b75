"""The one on-disk container for model files and training checkpoints.

Layout: a magic line, one JSON header line, then a ``torch.save`` payload. The header
carries the kind, format version and the payload's length and SHA-256, so a file of
another version, a truncated download or a flipped byte is refused with a clear
message before any tensor is unpickled (and tensors load with ``weights_only=True``).
Writes go to a temporary file that is fsynced and renamed over the target, so a crash
at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DahpError

MAGIC = b"DAHP-FILE\n"
FORMAT_VERSION = 1


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux's
    ``/proc``): setting it to read it back would race with other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path, directory: bool = False) -> None:
    """Give a ``tempfile``-made file (0600) or folder (0700) the permissions a plain
    ``open``/``mkdir`` would have had, so another user (a server's account) can read
    what was written when the umask allows it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        honour_umask(tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_file(path: str | Path, kind: str, header: dict[str, Any], payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, containers) with a JSON ``header``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    meta = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "payload_bytes": len(body),
        "payload_sha256": hashlib.sha256(body).hexdigest(),
        **header,
    }
    atomic_write_bytes(path, MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n" + body)


def read_header(path: str | Path, kind: str) -> tuple[dict[str, Any], bytes]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DahpError(f"{path}: no such file") from None
    except OSError as exc:
        raise DahpError(f"{path}: cannot read ({exc.strerror})") from None
    if not raw.startswith(MAGIC):
        raise DahpError(f"{path} is not a dahp {kind} file (missing the DAHP-FILE header)")
    header_end = raw.find(b"\n", len(MAGIC))
    try:
        meta = json.loads(raw[len(MAGIC) : header_end])
    except (ValueError, UnicodeDecodeError):
        raise DahpError(f"{path}: the file header is corrupt") from None
    if not isinstance(meta, dict):
        raise DahpError(f"{path}: the file header is corrupt (a JSON {type(meta).__name__}, expected an object)")
    if meta.get("kind") != kind:
        raise DahpError(f"{path} is a dahp {meta.get('kind')!r} file, expected a {kind!r} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DahpError(
            f"{path} has format version {meta.get('format_version')}, this dahp reads version {FORMAT_VERSION}"
        )
    if not isinstance(meta.get("payload_bytes"), int) or not isinstance(meta.get("payload_sha256"), str):
        raise DahpError(f"{path}: the file header is corrupt (payload_bytes and payload_sha256 missing or mistyped)")
    body = raw[header_end + 1 :]
    if len(body) != meta["payload_bytes"]:
        raise DahpError(f"{path} is truncated: {len(body)} of {meta['payload_bytes']} payload bytes present")
    if hashlib.sha256(body).hexdigest() != meta["payload_sha256"]:
        raise DahpError(f"{path} is corrupt: its checksum does not match")
    return meta, body


def load_file(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate and load a file written by :func:`save_file`; returns ``(header, payload)``."""
    meta, body = read_header(path, kind)
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DahpError(f"{path}: refused to load its payload, which is not plain tensors and containers "
                        f"(nothing in it was run): {first_line}") from None
    if not isinstance(payload, dict):
        raise DahpError(f"{path}: the payload is a {type(payload).__name__}, expected a dictionary of tensors")
    return meta, payload


@contextmanager
def reading(path: str | Path, kind: str) -> Iterator[None]:
    """Turn what a well-formed file of the wrong shape raises while it is read (a missing
    key, a list where a mapping belongs, tensors of other shapes) into one clear error."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise DahpError(f"{path} is not a valid dahp {kind} file ({type(exc).__name__}: {exc})") from None


def atomic_write_npz(path: str | Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (the name is kept exactly, no ``.npz`` appended)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())

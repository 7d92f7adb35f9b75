import json
import os

import numpy as np
import pytest
import torch

from dahp import serialization
from dahp.errors import DahpError
from dahp.serialization import atomic_write_npz, load_file, save_file


def test_round_trip(tmp_path):
    path = tmp_path / "m.dahp"
    save_file(path, "model", {"bits": 12}, {"w": torch.arange(5.0), "names": ["a", "b"]})
    header, payload = load_file(path, "model")
    assert header["bits"] == 12 and header["format_version"] == serialization.FORMAT_VERSION
    assert torch.equal(payload["w"], torch.arange(5.0)) and payload["names"] == ["a", "b"]


def _saved(tmp_path):
    path = tmp_path / "m.dahp"
    save_file(path, "model", {}, {"w": torch.randn(100)})
    return path


def test_truncated_file_is_refused(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DahpError, match="truncated"):
        load_file(path, "model")


def test_flipped_byte_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DahpError, match="checksum"):
        load_file(path, "model")


def test_other_format_version_and_kind_are_refused(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    header_end = raw.index(b"\n", len(serialization.MAGIC))
    meta = json.loads(raw[len(serialization.MAGIC):header_end])
    meta["format_version"] = 99
    path.write_bytes(serialization.MAGIC + json.dumps(meta).encode() + raw[header_end:])
    with pytest.raises(DahpError, match="format version 99, this dahp reads version 1"):
        load_file(path, "model")
    with pytest.raises(DahpError, match="expected a 'checkpoint' file"):
        load_file(_saved(tmp_path), "checkpoint")


def test_foreign_and_missing_files_are_refused(tmp_path):
    other = tmp_path / "x.pt"
    torch.save({"w": 1}, other)
    with pytest.raises(DahpError, match="not a dahp model file"):
        load_file(other, "model")
    with pytest.raises(DahpError, match="no such file"):
        load_file(tmp_path / "missing.dahp", "model")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_file(path, "model", {}, {"w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.dahp"]  # no temporary left behind


def test_atomic_npz_keeps_the_exact_name(tmp_path):
    path = tmp_path / "codes.bin"
    atomic_write_npz(path, codes=np.arange(4, dtype=np.uint8))
    assert np.array_equal(np.load(path)["codes"], np.arange(4))


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _with_header(path, change):
    raw = path.read_bytes()
    header_end = raw.index(b"\n", len(serialization.MAGIC))
    meta = change(json.loads(raw[len(serialization.MAGIC):header_end]))
    path.write_bytes(serialization.MAGIC + json.dumps(meta).encode() + raw[header_end:])


def test_a_crafted_pickle_is_refused_with_one_clear_error_and_runs_nothing(tmp_path):
    path, marker = tmp_path / "evil.dahp", tmp_path / "the-payload-ran"
    save_file(path, "model", {}, {"w": _RunsCodeWhenUnpickled(marker)})  # a valid header around it
    with pytest.raises(DahpError, match="refused to load its payload, which is not plain tensors"):
        load_file(path, "model")
    assert not marker.exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda meta: [meta], "header is corrupt \\(a JSON list, expected an object\\)"),
    (lambda meta: {k: v for k, v in meta.items() if k != "payload_bytes"}, "payload_bytes and payload_sha256 missing"),
    (lambda meta: {**meta, "payload_sha256": 7}, "payload_bytes and payload_sha256 missing or mistyped"),
])
def test_a_header_of_the_wrong_shape_is_a_clear_error(tmp_path, change, message):
    path = _saved(tmp_path)
    _with_header(path, change)
    with pytest.raises(DahpError, match=message):
        load_file(path, "model")


def test_a_payload_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "m.dahp"
    save_file(path, "model", {}, [torch.zeros(2)])  # type: ignore[arg-type]
    with pytest.raises(DahpError, match="the payload is a list, expected a dictionary"):
        load_file(path, "model")


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        save_file(tmp_path / "shared.dahp", "model", {}, {"w": torch.zeros(1)})
        os.umask(0o077)
        save_file(tmp_path / "private.dahp", "model", {}, {"w": torch.zeros(1)})
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.dahp").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.dahp").stat().st_mode & 0o777 == 0o600

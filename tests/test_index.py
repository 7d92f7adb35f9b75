import fcntl
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime

import numpy as np
import pytest
import torch
from PIL import Image

from dahp.codes import demoted_codes, hamming_distance, pack_codes
from dahp.data import default_preprocess, load_digits
from dahp.errors import DahpError
from dahp.hasher import DeepHasher
from dahp.index import FaissEngine, Index, hash_layout, padded_width
from dahp.index import engine as engine_module
from dahp.index import ingest as ingest_module
from dahp.index import store as store_module
from dahp.index.ingest import IngestOptions, encode_shard, work_folder
from dahp.index.manifest import MANIFEST_FILE, sha256_file
from dahp.index.metadata import Metadata
from dahp.index.sharding import Shard
from dahp.index.store import tie_order
from dahp.models import ModelConfig
from dahp.training import TrainConfig

DIGITS = 1797
DIGITS_ORDER = tie_order(DIGITS)  # item id i of an index of all digits is image DIGITS_ORDER[i]


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    DeepHasher(ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=64), TrainConfig(epochs=1, batch_size=32),
               default_preprocess("digits"), weights="none", device="cpu", progress=False,
               ).fit(load_digits().subset(np.arange(0, DIGITS, 9)), out_dir=out)
    return out / "model.dahp"


@pytest.fixture(scope="module")
def other_model_path(model_path, tmp_path_factory):
    """The same architecture with one weight changed: another fingerprint, other codes."""
    hasher = DeepHasher.load(model_path, device="cpu")
    with torch.no_grad():
        next(hasher.model_.parameters()).add_(0.5)
    path = tmp_path_factory.mktemp("other") / "model.dahp"
    hasher.save(path)
    return path


@pytest.fixture(scope="module")
def hasher(model_path):
    return DeepHasher.load(model_path, device="cpu")


@pytest.fixture(scope="module")
def digits_index(model_path, tmp_path_factory):
    return Index.build(model_path, "digits", tmp_path_factory.mktemp("digits") / "index", device="cpu",
                       progress=False)


@pytest.fixture(scope="module")
def digits_codes(hasher):
    return hasher.encode(load_digits())


@pytest.fixture(scope="module")
def digits_by_id(digits_codes):
    """The digits' codes in the order the digits index numbers them."""
    return digits_codes[DIGITS_ORDER]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ROOT/<class>/<image>.png: 8 digits each of classes 0, 1, 2, plus a two-label CSV over the same files."""
    root = tmp_path_factory.mktemp("images")
    digits = load_digits()
    classes = digits.labels.argmax(axis=1)
    rows = ["path,even,small"]
    for digit in range(3):
        (root / "folder" / str(digit)).mkdir(parents=True)
        for n, i in enumerate(np.flatnonzero(classes == digit)[:8]):
            name = f"folder/{digit}/{n}.png"
            Image.fromarray(digits.images[i]).save(root / name)
            rows.append(f"{name},{int(digit % 2 == 0)},{int(digit < 2)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def index_copy(digits_index, tmp_path):
    """A private copy of the digits index for tests that change it."""
    target = tmp_path / "index"
    shutil.copytree(digits_index.path, target)
    return Index.load(target, device="cpu")


def brute_force(queries, database, k=None, radius=None):
    """(distance, id) per query, ranked by distance then id, by exhaustive numpy."""
    distances = hamming_distance(queries, database)
    ranked = []
    for row in distances:
        order = np.lexsort((np.arange(len(row)), row))
        if radius is not None:
            order = order[row[order] <= radius]
        ranked.append([(int(row[i]), int(i)) for i in order[:k]])
    return ranked


def pairs(results):
    return [[(hit.distance, hit.id) for hit in hits] for hits in results]


def random_codes(rng, n, bits):
    return pack_codes(rng.integers(0, 2, (n, bits)))


def near(rng, codes, bits, flips):
    """Copies of ``codes`` with ``flips`` random bits flipped each."""
    unpacked = np.unpackbits(codes, axis=1, count=bits)
    for row in unpacked:
        row[rng.choice(bits, flips, replace=False)] ^= 1
    return pack_codes(unpacked)


# --- engine --------------------------------------------------------------------------


def test_code_widths_and_hash_layout_rule():
    assert [padded_width(bits) for bits in (8, 12, 32, 33, 48, 64, 100, 128, 160, 161, 256)] == \
        [4, 4, 4, 8, 8, 8, 16, 16, 20, 32, 32]
    assert {bits: hash_layout(bits) for bits in (12, 16, 32, 48, 64, 100, 128, 256)} == {
        12: (1, 8), 16: (1, 16), 32: (1, 32), 48: (2, 24), 64: (3, 21), 100: (4, 24), 128: (5, 25), 256: (11, 23)}


@pytest.mark.parametrize("bits", [12, 48, 64, 100])
def test_engine_is_exact_for_padded_widths(bits, monkeypatch):
    rng = np.random.default_rng(bits)
    monkeypatch.setattr(engine_module, "MIN_SHARD_ROWS", 500)  # several shards for few queries
    database = random_codes(rng, 6000, bits)
    database[4000:4100] = database[:100]  # exact duplicates: ties broken by id
    engine = FaissEngine(bits, threads=4)
    engine.add(database[:2500], np.arange(2500))
    engine.add(database[2500:], np.arange(2500, 6000))
    queries = np.vstack([near(rng, database[:12], bits, 1), near(rng, database[12:24], bits, 2), database[24:30],
                         random_codes(rng, 2, bits)])
    for count in (1, 3, len(queries)):  # sharded (fewer queries than threads) and batched
        for k in (1, 10, 6000):
            distances, ids = engine.search(queries[:count], k)
            assert [list(zip(d.tolist(), i.tolist())) for d, i in zip(distances, ids)] == \
                brute_force(queries[:count], database, k=k)
    for radius in (0, 1, 2, 3, bits // 2, bits):
        found = engine.range_search(queries, radius)
        assert [list(zip(d.tolist(), i.tolist())) for d, i in found] == brute_force(queries, database, radius=radius)
    assert engine.radius_method(2) == "hash" and engine.radius_method(bits) == "scan"
    with pytest.raises(ValueError, match="numbers codes by position"):
        engine.add(database[:2], np.array([0, 1]))


def test_engine_save_load_round_trip_and_refuses_other_files(tmp_path):
    rng = np.random.default_rng(0)
    codes = random_codes(rng, 300, 48)
    engine = FaissEngine(48)
    engine.add(codes, np.arange(300))
    engine.save(tmp_path / "e.index")
    loaded = FaissEngine.load(tmp_path / "e.index", 48)
    assert loaded.ntotal == 300 and loaded.describe()["hash_tables"] == 2
    assert np.array_equal(loaded.search(codes[:5], 7)[1], engine.search(codes[:5], 7)[1])
    with pytest.raises(DahpError, match="expected an IndexBinaryMultiHash of 128 bits for 100-bit codes"):
        FaissEngine.load(tmp_path / "e.index", 100)
    (tmp_path / "junk.index").write_bytes(b"not faiss at all")
    with pytest.raises(DahpError, match="junk.index is not a readable faiss index"):
        FaissEngine.load(tmp_path / "junk.index", 48)


# --- building and searching ------------------------------------------------------------


def test_digits_index_searches_like_brute_force(digits_index, digits_codes, digits_by_id):
    rng = np.random.default_rng(1)
    queries = np.vstack([digits_codes[::300], random_codes(rng, 3, 16)])
    for k in (1, 10, 50, DIGITS + 5):
        assert pairs(digits_index.search(queries, k=k)) == brute_force(queries, digits_by_id, k=k)
        assert pairs(digits_index.search(queries[:1], k=k)) == brute_force(queries[:1], digits_by_id, k=k)
    for radius in (0, 1, 2, 5, 16):
        assert pairs(digits_index.search(queries, k=None, radius=radius)) == \
            brute_force(queries, digits_by_id, radius=radius)
        assert pairs(digits_index.search(queries, k=4, radius=radius)) == \
            brute_force(queries, digits_by_id, k=4, radius=radius)
    hit = digits_index.search(digits_codes[7:8], k=1)[0][0]
    image = DIGITS_ORDER[hit.id]
    assert hit.path == f"digits[{image}]" and hit.label == str(load_digits().labels[image].argmax())
    assert digits_index.search(np.zeros((0, 2), np.uint8)) == []


def test_an_index_stores_its_models_demoted_database_codes_and_queries_with_signs(model_path, tmp_path):
    """A model with ``demote_uncertain`` indexes its database codes (one bit moved on unsure images);
    its queries stay sign codes, as the model encodes them."""
    from dataclasses import replace

    demoting = DeepHasher.load(model_path, device="cpu")
    demoting.model_config = replace(demoting.model_config, demote_uncertain=1.0)
    demoting.save(tmp_path / "demoting.dahp")
    index = Index.build(tmp_path / "demoting.dahp", "digits", tmp_path / "index", device="cpu", progress=False)
    digits = load_digits()
    outputs = demoting.encode_real(digits)
    database = demoted_codes(outputs, 1.0)[DIGITS_ORDER]
    assert (database != pack_codes(outputs)[DIGITS_ORDER]).any(axis=1).mean() > 0.5
    queries = pack_codes(outputs[::300])
    png = io.BytesIO()
    Image.fromarray(digits.images[0]).save(png, format="PNG")
    png.seek(0)
    assert np.array_equal(index.encode_images([png]), queries[:1])
    assert pairs(index.search(queries, k=40)) == brute_force(queries, database, k=40)


def test_concurrent_searches_agree(digits_index, digits_codes):
    queries = digits_codes[::97]
    expected = [digits_index.search(query[None], k=12)[0] for query in queries]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda query: digits_index.search(query[None], k=12)[0], queries)) == expected
        assert list(pool.map(lambda query: digits_index.search(query[None], k=None, radius=1)[0], queries)) == \
            [digits_index.search(query[None], k=None, radius=1)[0] for query in queries]


def test_info_items_and_thumbnails(digits_index, hasher):
    info = digits_index.info()
    assert info["count"] == DIGITS and info["bits"] == 16 and info["code_bytes"] == 2 and info["generation"] == 1
    assert info["format_version"] == 1 and info["model_fingerprint"] == hasher.fingerprint_
    assert info["backend"] == {"name": "faiss", "faiss_version": info["backend"]["faiss_version"], "padded_bytes": 4,
                               "hash_tables": 1, "hash_key_bits": 16}
    assert set(info["files"]) == {"model", "engine", "metadata"} and info["skipped"] == []
    assert info["sources"][0]["spec"] == "digits" and info["sources"][0]["added"] == DIGITS
    for record in info["files"].values():
        assert sha256_file(digits_index.path / record["name"]) == record["sha256"]
    assert datetime.fromisoformat(info["created"]).utcoffset().total_seconds() == 0
    items, image = digits_index.items([5, 0]), DIGITS_ORDER[5]
    assert [item.id for item in items] == [5, 0] and items[0].path == f"digits[{image}]"
    assert items[0].label == str(load_digits().labels[image].argmax())
    assert items[0].has_thumbnail and items[0].added == info["created"]
    with Image.open(io.BytesIO(digits_index.thumbnail(5))) as thumbnail:
        assert np.array_equal(np.asarray(thumbnail.convert("RGB")), load_digits().images[image])
    with pytest.raises(DahpError, match=r"no item 1797 in index .*: its ids are 0..1796"):
        digits_index.items([3, DIGITS])
    with pytest.raises(DahpError, match="item id must be an integer >= 0, got -1"):
        digits_index.thumbnail(-1)


def test_folder_index_search_images_add_and_multi_labels(folder, model_path, hasher, tmp_path):
    index = Index.build(model_path, str(folder / "folder"), tmp_path / "index", device="cpu", progress=False)
    files, order = sorted((folder / "folder").rglob("*.png")), tie_order(24)
    assert index.count == 24
    item = index.items([0])[0]
    assert item.path == str(files[order[0]]) and item.label == files[order[0]].parent.name and not item.has_thumbnail
    assert index.thumbnail(0) is None
    queries = [files[3], str(files[20]), io.BytesIO(files[9].read_bytes())]
    codes = hasher.encode_images([files[3], files[20], files[9]])
    assert np.array_equal(index.encode_images(queries[:2]), codes[:2])
    queries[2].seek(0)
    assert index.search_images(queries, k=5) == index.search(codes, k=5)
    assert index.search_images(queries[:1], k=None, radius=0)[0][0].distance == 0

    added = index.add(str(folder / "labels.csv"), progress=False, model=model_path)
    assert added == 24 and index.count == 48
    everything = np.vstack([hasher.encode_images(files)[order]] * 2)  # each source numbered in its own shuffle
    assert pairs(index.search(codes, k=30)) == brute_force(codes, everything, k=30)
    digits = [int(files[order[i]].parent.name) for i in (0, 16)]
    assert [item.label for item in index.items([24, 40])] == \
        ["|".join(name for name, kept in (("even", d % 2 == 0), ("small", d < 2)) if kept) for d in digits]
    info = index.info()
    assert info["generation"] == 2 and [source["added"] for source in info["sources"]] == [24, 24]
    assert sorted(path.name for path in index.path.iterdir()) == \
        [".lock", "faiss-000002.index", MANIFEST_FILE, "metadata-000002.sqlite", "model.dahp"]
    reloaded = Index.load(index.path, device="cpu")
    assert reloaded.info() == info and reloaded.search(codes, k=30) == index.search(codes, k=30)


def test_equally_near_hits_come_from_every_folder_not_the_first_listed(model_path, tmp_path):
    """Ties are ordered by id, and a build numbers its images in a fixed shuffle, not folder by folder."""
    image = load_digits().images[0]
    for folder_name in ("a", "b"):  # 20 copies of one image: one code, 20 items at distance 0 from it
        (tmp_path / "tree" / folder_name).mkdir(parents=True)
        for n in range(10):
            Image.fromarray(image).save(tmp_path / "tree" / folder_name / f"{n}.png")
    index = Index.build(model_path, str(tmp_path / "tree"), tmp_path / "index", device="cpu", progress=False)
    hits = index.search_images([tmp_path / "tree" / "a" / "0.png"], k=6)[0]
    assert {hit.distance for hit in hits} == {0}
    assert {hit.label for hit in hits} == {"a", "b"}  # in listing order all six would be folder a's
    order = tie_order(1000)
    assert np.array_equal(np.sort(order), np.arange(1000)) and np.array_equal(order, tie_order(1000))


def test_skip_bad_images_are_left_out_and_listed(folder, model_path, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(folder / "folder", root)
    (root / "2" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DahpError, match="broken.png"):
        Index.build(model_path, str(root), tmp_path / "index", device="cpu", progress=False)
    assert not (tmp_path / "index").exists() and [p.name for p in tmp_path.iterdir()] == ["tree"]
    index = Index.build(model_path, str(root), tmp_path / "index", skip_bad=True, device="cpu", progress=False)
    assert index.count == 24 and [path for path, _ in index.info()["skipped"]] == [str(root / "2" / "broken.png")]


# --- bad input -------------------------------------------------------------------------------


def test_bad_queries_are_refused(digits_index, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DahpError, match="cannot read image .*notes.jpg"):
        digits_index.search_images([text])
    with pytest.raises(DahpError, match="no query images"):
        digits_index.search_images([])
    with pytest.raises(DahpError, match=r"holds 16-bit codes, expected a \(n, 2\) uint8 array .* got shape \(3, 6\)"):
        digits_index.search(np.zeros((3, 6), np.uint8))
    with pytest.raises(DahpError, match="got shape \\(2,\\) dtype uint8"):
        digits_index.search(np.zeros(2, np.uint8))
    with pytest.raises(DahpError, match="dtype int64"):
        digits_index.search(np.zeros((1, 2), np.int64))
    for kwargs, message in (({"k": 0}, "k must be an integer >= 1, got 0"),
                            ({"radius": -1}, "radius must be an integer >= 0, got -1"),
                            ({"k": 2.5}, "k must be an integer"),
                            ({"k": None}, "needs k .* radius .* or both")):
        with pytest.raises(DahpError, match=message):
            digits_index.search(np.zeros((1, 2), np.uint8), **kwargs)


def test_padding_bits_must_be_zero(folder, tmp_path):
    hasher = DeepHasher(ModelConfig(bits=12, output_stride=4, small_stem=True, hidden_dim=16),
                        TrainConfig(epochs=1, batch_size=64), default_preprocess("digits"), weights="none",
                        device="cpu", progress=False).fit(load_digits().subset(np.arange(0, DIGITS, 30)),
                                                          out_dir=tmp_path / "run12")
    index = Index.build(tmp_path / "run12" / "model.dahp", str(folder / "folder"), tmp_path / "index", device="cpu",
                        progress=False)
    codes = hasher.encode_images(sorted((folder / "folder").rglob("*.png")))
    by_id = codes[tie_order(len(codes))]
    assert index.info()["backend"]["padded_bytes"] == 4 and index.info()["code_bytes"] == 2
    assert pairs(index.search(codes[:4], k=9)) == brute_force(codes[:4], by_id, k=9)
    assert pairs(index.search(codes[:4], k=None, radius=3)) == brute_force(codes[:4], by_id, radius=3)
    with pytest.raises(DahpError, match="bits set past bit 12 .* 4 padding bits"):
        index.search(codes[:2] | np.array([0, 1], np.uint8))


def test_add_refuses_another_model_and_a_stale_index(index_copy, other_model_path, model_path, folder):
    with pytest.raises(DahpError, match="is not the model index .* was built with .* rebuild"):
        index_copy.add(str(folder / "folder"), model=other_model_path, progress=False)
    stale = Index.load(index_copy.path, device="cpu")
    index_copy.add(str(folder / "folder"), model=model_path, progress=False)
    with pytest.raises(DahpError, match="changed on disk since it was loaded"):
        stale.add(str(folder / "folder"), progress=False)
    assert Index.load(index_copy.path).count == DIGITS + 24


def _rewrite_manifest(path, change):
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    change(manifest)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def _refresh_checksum(path, role):
    def change(manifest):
        file = path / manifest["files"][role]["name"]
        manifest["files"][role].update(bytes=file.stat().st_size, sha256=sha256_file(file))
    _rewrite_manifest(path, change)


def _file(path, role):
    return path / json.loads((path / MANIFEST_FILE).read_text())["files"][role]["name"]


def test_damaged_files_are_named(index_copy):
    path = index_copy.path
    engine_file, metadata_file = _file(path, "engine"), _file(path, "metadata")
    original = engine_file.read_bytes()
    engine_file.write_bytes(original[:-10])
    with pytest.raises(DahpError, match=f"index file {engine_file} is truncated or changed: {len(original) - 10} bytes"):
        Index.load(path)
    engine_file.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    with pytest.raises(DahpError, match=f"index file {engine_file} is corrupt: its SHA-256 does not match"):
        Index.load(path)
    engine_file.write_bytes(b"\0" * len(original))
    _refresh_checksum(path, "engine")
    with pytest.raises(DahpError, match="is not a readable faiss index"):
        Index.load(path)
    engine_file.write_bytes(original)
    _refresh_checksum(path, "engine")
    assert Index.load(path).count == DIGITS

    data = bytearray(metadata_file.read_bytes())
    data[-1] ^= 0xFF
    metadata_file.write_bytes(bytes(data))
    with pytest.raises(DahpError, match=f"{metadata_file} is corrupt"):
        Index.load(path)
    metadata_file.unlink()
    with pytest.raises(DahpError, match=f"index file {metadata_file} is missing"):
        Index.load(path)


def test_damaged_manifest_is_refused(index_copy):
    path = index_copy.path
    manifest = (path / MANIFEST_FILE).read_text()
    (path / MANIFEST_FILE).write_text(manifest[: len(manifest) // 2])
    with pytest.raises(DahpError, match="manifest.json is corrupt: not valid JSON"):
        Index.load(path)
    tampered = [
        (lambda m: m.update(format_version=99), "has index format version 99; this dahp reads version 1"),
        (lambda m: m["files"]["engine"].update(name="../elsewhere.index"),
         "bad file name '../elsewhere.index' for the engine file"),
        (lambda m: m.update(count=5), "index is inconsistent: the manifest counts 5 items, the engine holds 1797"),
        (lambda m: m["files"].pop("metadata"), "\"files\" lacks \\['metadata'\\]"),
        (lambda m: m["files"].update(engine="codes.index"), "\"files.engine\" is \"codes.index\", expected"),
        (lambda m: m.update(files=[]), "\"files\" is \\[\\], expected an object"),
        (lambda m: m.update(sources=None), "\"sources\" is null, expected a list"),
        (lambda m: m.update(count="many"), "\"count\" is \"many\", expected a whole number"),
    ]
    for change, message in tampered:
        (path / MANIFEST_FILE).write_text(manifest)
        _rewrite_manifest(path, change)
        with pytest.raises(DahpError, match=message):
            Index.load(path)
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(DahpError, match="is not a dahp index: manifest.json is missing"):
        Index.load(path)
    with pytest.raises(DahpError, match="does not exist"):
        Index.load(path / "nothing")


def test_model_copy_of_another_model_is_refused(index_copy, other_model_path):
    shutil.copyfile(other_model_path, index_copy.path / "model.dahp")
    _refresh_checksum(index_copy.path, "model")
    with pytest.raises(DahpError, match="index is inconsistent: .*model.dahp is a 16-bit model with fingerprint"):
        Index.load(index_copy.path)


def test_missing_metadata_rows_are_an_error_not_a_wrong_answer(index_copy):
    metadata_file = _file(index_copy.path, "metadata")
    with pytest.raises(DahpError, match=r"index is inconsistent: .* no row for id\(s\) \[5000\]"):
        Metadata(metadata_file).get([3, 5000])
    with pytest.raises(DahpError, match=r"index is inconsistent: .* no row for id\(s\) \[5000\]"):
        Metadata(metadata_file).thumbnail(5000)
    with sqlite3.connect(metadata_file) as db:
        db.execute("DELETE FROM items WHERE id = 7")
    db.close()
    _refresh_checksum(index_copy.path, "metadata")
    with pytest.raises(DahpError, match=r"index is inconsistent: .* 1796 rows with ids \(0, 1796\)"):
        Index.load(index_copy.path)


# --- crashes -----------------------------------------------------------------------------


class Crash(Exception):
    pass


def _crash(*args, **kwargs):
    raise Crash("simulated crash")


def test_crash_during_add_leaves_the_old_index(index_copy, digits_codes, folder, monkeypatch):
    before = index_copy.search(digits_codes[:20], k=15)
    monkeypatch.setattr(store_module, "write_manifest", _crash)  # new files are written, the commit never happens
    with pytest.raises(Crash):
        index_copy.add(str(folder / "folder"), progress=False)
    monkeypatch.undo()
    assert index_copy.count == DIGITS and index_copy.search(digits_codes[:20], k=15) == before
    orphans = {"faiss-000002.index", "metadata-000002.sqlite"}
    assert orphans <= {path.name for path in index_copy.path.iterdir()}
    reloaded = Index.load(index_copy.path, device="cpu")
    assert reloaded.count == DIGITS and reloaded.search(digits_codes[:20], k=15) == before
    assert reloaded.add(str(folder / "folder"), progress=False) == 24
    assert {path.name for path in index_copy.path.iterdir()} == \
        {".lock", "faiss-000002.index", MANIFEST_FILE, "metadata-000002.sqlite", "model.dahp"}


def test_crash_during_build_leaves_the_old_index(index_copy, model_path, digits_codes, folder, monkeypatch):
    target = index_copy.path
    before = index_copy.search(digits_codes[:20], k=15)
    monkeypatch.setattr(store_module, "write_manifest", _crash)
    with pytest.raises(Crash):
        Index.build(model_path, str(folder / "folder"), target, device="cpu", progress=False)
    monkeypatch.undo()
    # staging removed; the encoded chunks stay for the rerun
    assert sorted(path.name for path in target.parent.iterdir()) == [".index.ingest", "index"]
    assert Index.load(target).search(digits_codes[:20], k=15) == before

    renames = []

    def second_rename_crashes(source, destination):
        renames.append(source)
        if len(renames) == 2:
            raise Crash("killed between the renames")
        store_module.os.replace(source, destination)

    monkeypatch.setattr(store_module.os, "rename", second_rename_crashes)
    with pytest.raises(Crash):
        Index.build(model_path, str(folder / "folder"), target, device="cpu", progress=False)
    monkeypatch.undo()
    assert not target.exists() and (target.parent / ".index.previous").is_dir()
    recovered = Index.load(target)  # puts the previous index back
    assert recovered.count == DIGITS and recovered.search(digits_codes[:20], k=15) == before

    rebuilt = Index.build(model_path, str(folder / "folder"), target, device="cpu", progress=False)
    assert rebuilt.count == 24 and Index.load(target).count == 24
    assert sorted(path.name for path in target.parent.iterdir()) == ["index"]


def test_build_refuses_to_replace_other_data(model_path, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "precious.txt").write_text("keep me")
    with pytest.raises(DahpError, match="refusing to replace .*results: it is not empty and not a dahp index"):
        Index.build(model_path, "digits", tmp_path / "results", progress=False)
    with pytest.raises(DahpError, match="missing.dahp: cannot read the model file"):
        Index.build(tmp_path / "missing.dahp", "digits", tmp_path / "index", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results"]


# --- command line --------------------------------------------------------------------------


def test_cli_build_add_info_search(cli, model_path, other_model_path, folder, tmp_path, capsys):
    index = tmp_path / "index"
    files = sorted((folder / "folder").rglob("*.png"))
    cli(["index", "build", model_path, folder / "folder", "-o", index, "--device", "cpu", "--quiet"])
    assert f"indexed 24 images of {folder / 'folder'}" in capsys.readouterr().out
    cli(["index", "add", index, folder / "labels.csv", "--model", model_path, "--batch-size", "7", "--quiet"])
    out = capsys.readouterr().out
    assert f"indexed 24 images of {folder / 'labels.csv'}" in out and "(48 images, 16-bit codes)" in out

    cli(["index", "info", index, "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 48 and info["generation"] == 2 and info["bits"] == 16
    cli(["index", "info", index])
    text = capsys.readouterr().out
    assert "48 images, 16-bit codes" in text and "metadata-000002.sqlite" in text

    cli(["search", index, files[0], files[10], "--top", "3", "--json", "--device", "cpu"])
    found = json.loads(capsys.readouterr().out)
    expected = Index.load(index).search_images(files[:1] + files[10:11], k=3)
    assert [[(hit["rank"], hit["distance"], hit["id"], hit["path"], hit["label"]) for hit in query["hits"]]
            for query in found["queries"]] == \
        [[(rank, hit.distance, hit.id, hit.path, hit.label) for rank, hit in enumerate(hits, 1)] for hits in expected]
    assert found["encode_ms"] > 0 and found["search_ms"] > 0
    cli(["search", index, files[0], "--radius", "0"])
    text = capsys.readouterr().out
    assert "(within distance 0)" in text and f"{files[0]}  0" in text and "encode " in text

    with pytest.raises(SystemExit):
        cli(["search", index, files[0], "--top", "3", "--radius", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(DahpError, match="k must be an integer >= 1, got 0"):
        cli(["search", index, files[0], "--top", "0"])
    with pytest.raises(DahpError, match="cannot read image .*labels.csv"):
        cli(["search", index, folder / "labels.csv"])
    with pytest.raises(SystemExit):  # parsed like every other command's --batch-size
        cli(["index", "add", index, folder / "folder", "--batch-size", "0", "--quiet"])
    assert "argument --batch-size: expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(DahpError, match="is not the model index"):
        cli(["index", "add", index, folder / "folder", "--model", other_model_path, "--quiet"])
    assert Index.load(index).count == 48


def test_a_killed_builds_staging_folder_is_removed_by_the_next_build(model_path, folder, tmp_path):
    """A kill (SIGKILL: no cleanup runs) leaves .NAME.build-HOST-PID-*; the next build deletes it
    once that process is gone, and leaves a live build's folder and other hosts' folders alone."""
    host = store_module._HOST
    dead = _finished_pid()
    abandoned = tmp_path / f".index.build-{host}-{dead}-x1"
    running = tmp_path / f".index.build-{host}-{os.getpid()}-x2"
    elsewhere = tmp_path / f".index.build-otherhost-{dead}-x3"
    for staging in (abandoned, running, elsewhere):
        (staging / "model.dahp").parent.mkdir()
        (staging / "model.dahp").write_bytes(b"half a model")
    Index.build(model_path, str(folder / "folder"), tmp_path / "index", device="cpu", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["index", running.name, elsewhere.name])


def _finished_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --- resumable and sharded ingest --------------------------------------------------------------

SMALL = {"chunk_size": 5, "batch_size": 2}  # the 24 folder images: chunks of 5, 5, 5, 5, 4, each in batches of 2
_WRITE_CHUNK = ingest_module.Ingest._write


def _contents(path):
    """What an index answers with: its engine file and codes, and its rows less their dates."""
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    with closing(sqlite3.connect(path / manifest["files"]["metadata"]["name"])) as db:
        rows = db.execute("SELECT id, path, label, thumbnail FROM items ORDER BY id").fetchall()
    index = Index.load(path)  # held while its codes are read: they live in the engine's faiss storage
    return manifest["files"]["engine"]["sha256"], index._engine._codes.tobytes(), rows


def _leftovers(index):
    """The hidden folders a build or add of ``index`` keeps beside it: staging, work, backup."""
    return sorted(path.name for path in index.parent.iterdir() if path.name.startswith(f".{index.name}."))


def _commits(monkeypatch, crash_after=None):
    """The chunks committed from now on; with ``crash_after``, a failure as a kill would leave it before the next."""
    written = []

    def write(self, chunk, codes):
        if len(written) == crash_after:
            raise Crash(f"killed after {crash_after} chunks")
        written.append(chunk)
        _WRITE_CHUNK(self, chunk, codes)

    monkeypatch.setattr(ingest_module.Ingest, "_write", write)
    return written


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("source", ["folder", "digits"])
def test_a_build_stopped_after_two_chunks_resumes_to_the_same_index(source, model_path, folder, tmp_path, monkeypatch,
                                                                    capsys):
    spec, options = (str(folder / "folder"), SMALL) if source == "folder" else ("digits", {"chunk_size": 400})
    reference = Index.build(model_path, spec, tmp_path / "reference", device="cpu", progress=False, **options)
    target = tmp_path / "index"
    _commits(monkeypatch, crash_after=2)
    with pytest.raises(Crash):
        Index.build(model_path, spec, target, device="cpu", progress=False, **options)
    assert not target.exists() and _leftovers(target) == [".index.ingest"]  # nothing staged while encoding
    written = _commits(monkeypatch)
    Index.build(model_path, spec, target, device="cpu", progress=False, **options)
    assert written == [2, 3, 4] and "resuming: 2 of 5 chunks" in capsys.readouterr().err
    assert _contents(target) == _contents(reference.path) and _leftovers(target) == []


@pytest.mark.usefixtures("one_thread")
def test_a_build_killed_with_sigkill_resumes_to_the_same_index(cli, model_path, tmp_path, capsys):
    target, work = tmp_path / "index", work_folder(tmp_path / "index")
    options = ["--chunk-size", "16", "--batch-size", "1", "--device", "cpu", "--quiet"]  # 113 chunks
    build = [sys.executable, "-m", "dahp.cli", "index", "build", model_path, "digits", "-o", target, *options]
    process = subprocess.Popen(list(map(str, build)), env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while len(list(work.glob("chunk-*.dahp"))) < 3:
        assert process.poll() is None, f"the build ended before it was killed: {process.stderr.read()}"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    committed = len(list(work.glob("chunk-*.dahp")))
    assert not target.exists() and 3 <= committed < 113
    cli(["index", "build", model_path, "digits", "-o", target, *options])
    assert f"resuming: {committed} of 113 chunks" in capsys.readouterr().err
    reference = Index.build(model_path, "digits", tmp_path / "reference", device="cpu", progress=False,
                            chunk_size=16, batch_size=1)
    assert _contents(target) == _contents(reference.path) and _leftovers(target) == []


@pytest.mark.usefixtures("one_thread")
def test_chunks_of_another_model_source_or_chunk_size_are_discarded(model_path, other_model_path, folder, tmp_path,
                                                                   monkeypatch, capsys):
    target, images = tmp_path / "index", str(folder / "folder")
    for rerun, changed in [({"model_path": other_model_path}, "model weights "),
                           ({"images_spec": str(folder / "labels.csv")}, "images listed "),
                           ({"chunk_size": 6}, "chunk size 5 (now 6)")]:
        _commits(monkeypatch, crash_after=3)
        with pytest.raises(Crash):
            Index.build(model_path, images, target, device="cpu", progress=False, **SMALL)
        written = _commits(monkeypatch)
        arguments = {"model_path": model_path, "images_spec": images, "out_dir": target, **SMALL, **rerun}
        Index.build(device="cpu", progress=False, **arguments)
        assert written == list(range(5 if "chunk_size" not in rerun else 4))
        assert f"discarding 3 chunk(s) in {work_folder(target)} encoded by an earlier run for another build: " \
               f"{changed}" in capsys.readouterr().err
        reference = Index.build(device="cpu", progress=False, **{**arguments, "out_dir": tmp_path / "reference"})
        assert _contents(target) == _contents(reference.path) and _leftovers(target) == []


@pytest.mark.usefixtures("one_thread")
def test_a_damaged_chunk_is_found_and_encoded_again(model_path, folder, tmp_path, monkeypatch, capsys):
    images, target, work = str(folder / "folder"), tmp_path / "index", work_folder(tmp_path / "index")
    reference = Index.build(model_path, images, tmp_path / "reference", device="cpu", progress=False, **SMALL)
    _commits(monkeypatch, crash_after=4)
    with pytest.raises(Crash):
        Index.build(model_path, images, target, device="cpu", progress=False, **SMALL)
    damaged = bytearray((work / "chunk-000001.dahp").read_bytes())
    damaged[-10] ^= 1  # one flipped bit
    (work / "chunk-000001.dahp").write_bytes(bytes(damaged))
    shutil.copy(work / "chunk-000003.dahp", work / "chunk-000002.dahp")  # a chunk under another's name
    (work / ".chunk-000004.dahp.x1.tmp").write_bytes(b"half a chunk")  # a write that was cut short
    written = _commits(monkeypatch)
    Index.build(model_path, images, target, device="cpu", progress=False, **SMALL)
    err = capsys.readouterr().err
    assert written == [1, 2, 4] and "resuming: 2 of 5 chunks" in err
    assert f"discarding chunk 1: {work / 'chunk-000001.dahp'} is corrupt: its checksum does not match; " \
           "encoding it again" in err
    assert f"discarding chunk 2: {work / 'chunk-000002.dahp'} holds (chunk, first image, count) (3, 15, 5), " \
           "expected (2, 10, 5); encoding it again" in err
    assert _contents(target) == _contents(reference.path) and _leftovers(target) == []


def test_a_second_writer_of_the_same_work_folder_is_refused(model_path, folder, tmp_path):
    target = tmp_path / "index"
    work_folder(target).mkdir()
    with open(work_folder(target) / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DahpError, match=r"\.index\.ingest is in use by another `dahp index build` or `add`"):
            Index.build(model_path, str(folder / "folder"), target, device="cpu", progress=False)
    assert not target.exists()


@pytest.mark.usefixtures("one_thread")
def test_an_add_stopped_after_three_chunks_resumes_to_the_same_index(index_copy, folder, tmp_path, monkeypatch,
                                                                    capsys):
    reference = tmp_path / "reference"
    shutil.copytree(index_copy.path, reference)
    Index.load(reference, device="cpu").add(str(folder / "folder"), progress=False, **SMALL)
    _commits(monkeypatch, crash_after=3)
    with pytest.raises(Crash):
        index_copy.add(str(folder / "folder"), progress=False, **SMALL)
    assert index_copy.count == DIGITS and _leftovers(index_copy.path) == [".index.ingest"]
    written = _commits(monkeypatch)
    assert index_copy.add(str(folder / "folder"), progress=False, **SMALL) == 24
    assert written == [3, 4] and "resuming: 3 of 5 chunks" in capsys.readouterr().err
    assert _contents(index_copy.path) == _contents(reference) and _leftovers(index_copy.path) == []


@pytest.mark.usefixtures("one_thread")
def test_shard_zero_waits_for_the_other_shards_chunks_and_builds_the_same_index(cli, model_path, folder, tmp_path,
                                                                                 monkeypatch, capsys):
    images, target = str(folder / "folder"), tmp_path / "index"
    reference = Index.build(model_path, images, tmp_path / "reference", device="cpu", progress=False, **SMALL)
    monkeypatch.setattr(ingest_module, "POLL_SECONDS", 0.01)
    written = _commits(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        shard_zero = pool.submit(Index.build, model_path, images, target, device="cpu", progress=False, shards=2,
                                 **SMALL)
        assert encode_shard(model_path, images, target, Shard(1, 2), IngestOptions(**SMALL), device="cpu") == 10
        shard_zero.result()
    assert sorted(written) == [0, 1, 2, 3, 4] and "waiting for 2 chunk(s) of the other 1 shard(s)" in \
        capsys.readouterr().err
    assert _contents(target) == _contents(reference.path) and _leftovers(target) == []

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert Shard.from_environment() == Shard(1, 3) and Shard.parse("2/4") == Shard(2, 4)
    with pytest.raises(SystemExit):
        cli(["index", "build", model_path, images, "-o", target, "--shard", "2/2"])
    assert "argument --shard: shard 2/2: expected RANK/WORLD with 0 <= RANK < WORLD" in capsys.readouterr().err
    with pytest.raises(DahpError, match="shard 0 writes the index"):
        encode_shard(model_path, images, target, Shard(0, 2), IngestOptions())


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_ranks_under_torchrun_build_the_single_process_index(model_path, folder, tmp_path):
    target, images = tmp_path / "index", str(folder / "folder")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "dahp.cli", "index", "build", model_path, images, "-o", target, "--chunk-size", "5", "--batch-size",
               "2", "--device", "cpu"]
    process = subprocess.Popen(list(map(str, command)), env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reference = Index.build(model_path, images, tmp_path / "reference", device="cpu", progress=False, **SMALL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert output.count("indexed 24 images") == 1 and "shard 1/2: encoded 10 images" in output
    assert _contents(target) == _contents(reference.path) and _leftovers(target) == []

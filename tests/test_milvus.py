"""The Milvus backend (on embedded Milvus Lite) answers exactly like the faiss backend, survives crashes, and
reports bad databases clearly."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs the milvus extra: pip install 'dahp[milvus]'")
pytest.importorskip("milvus_lite", reason="these tests run Milvus Lite (milvus-lite, in the milvus extra on Linux)")

from dahp.codes import hamming_distance, pack_codes  # noqa: E402
from dahp.data import default_preprocess, load_digits  # noqa: E402
from dahp.errors import DahpError  # noqa: E402
from dahp.hasher import DeepHasher  # noqa: E402
from dahp.index import FaissEngine, Index  # noqa: E402
from dahp.index import milvus as milvus_module  # noqa: E402
from dahp.index import store as store_module  # noqa: E402
from dahp.index.milvus import MilvusEngine  # noqa: E402
from dahp.models import ModelConfig  # noqa: E402
from dahp.training import TrainConfig  # noqa: E402

DIGITS = 1797


class Crash(Exception):
    pass


def _crash(*args, **kwargs):
    raise Crash("simulated crash")


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory):
    """One Milvus Lite file for the engine tests (each uses its own collection): Lite starts once per file."""
    return str(tmp_path_factory.mktemp("lite") / "engines.db")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    DeepHasher(ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=64),
               TrainConfig(epochs=1, batch_size=32), default_preprocess("digits"), weights="none", device="cpu",
               progress=False).fit(load_digits().subset(np.arange(0, DIGITS, 9)), out_dir=out)
    return out / "model.dahp"


def tied_codes(rng, n, bits):
    """Random codes plus many exact and near duplicates, so top-k boundaries and radii cut through ties."""
    codes = pack_codes(rng.integers(0, 2, (n, bits)))
    codes[100:180] = codes[0]
    unpacked = np.unpackbits(codes[:1], axis=1, count=bits).repeat(60, axis=0)
    unpacked[np.arange(60), rng.integers(0, bits, 60)] ^= 1  # 60 codes at distance 1 from code 0
    codes[200:260] = pack_codes(unpacked)
    return codes


def both_engines(lite_db, codes, bits, tmp_path):
    """The same codes in faiss and in a Milvus collection, added in two batches like two index generations."""
    faiss_engine, milvus_engine = FaissEngine(bits), MilvusEngine.create(bits, lite_db, tmp_path / "index")
    half = len(codes) // 2
    for engine in (faiss_engine, milvus_engine):
        engine.add(codes[:half], np.arange(half))
        engine.add(codes[half:], np.arange(half, len(codes)))
    return faiss_engine, milvus_engine


def assert_same_knn(expected, got):
    assert np.array_equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])


def assert_same_ranges(expected, got):
    assert len(expected) == len(got)
    for (want_d, want_i), (got_d, got_i) in zip(expected, got):
        assert np.array_equal(want_d, got_d) and np.array_equal(want_i, got_i)


# --- engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 48, 64])
def test_engine_answers_exactly_like_faiss(bits, lite_db, tmp_path):
    rng = np.random.default_rng(bits)
    codes = tied_codes(rng, 1500, bits)
    faiss_engine, milvus_engine = both_engines(lite_db, codes, bits, tmp_path)
    queries = np.vstack([codes[:12], pack_codes(rng.integers(0, 2, (12, bits)))])
    assert milvus_engine.ntotal == len(codes)
    for k in (1, 10, 50, 81, 100, 141, 2000):  # 81 codes equal code 0, 60 more at distance 1: k-th ties
        expected, got = faiss_engine.search(queries, k), milvus_engine.search(queries, k)
        assert_same_knn(expected, got)
        # Milvus reads our packed bytes with the same distances as dahp.codes
        for row_distances, row_ids, query in zip(*got, queries):
            assert np.array_equal(row_distances, hamming_distance(query[None], codes[row_ids])[0])
    distances = hamming_distance(queries[:1], codes)[0]
    assert np.sum(distances == 1) >= 60 and np.sum(distances == 0) == 81  # the ties exist
    for radius in (0, 1, 2, bits):
        assert_same_ranges(faiss_engine.range_search(queries, radius), milvus_engine.range_search(queries, radius))


def test_ties_and_capped_results_do_not_depend_on_which_hits_milvus_returns(lite_db, tmp_path, monkeypatch):
    """Milvus may return any of the hits tied at the cut: here it returns the largest ids, and at most 8 hits."""
    bits = 12
    rng = np.random.default_rng(0)
    codes = tied_codes(rng, 600, bits)
    faiss_engine, milvus_engine = both_engines(lite_db, codes, bits, tmp_path)
    client, real_search = milvus_engine._client, milvus_engine._client.search

    def adversarial_search(collection, data, limit, **kwargs):
        rows = []
        for hits in real_search(collection, data=data, limit=len(codes), **kwargs):  # every hit, then the worst cut
            kept = sorted(zip(hits.distances, hits.ids), key=lambda hit: (hit[0], -hit[1]))[:limit]
            rows.append(SimpleNamespace(distances=[d for d, _ in kept], ids=[i for _, i in kept]))
        return rows

    monkeypatch.setattr(client, "search", adversarial_search)
    queries = np.vstack([codes[:6], pack_codes(rng.integers(0, 2, (6, bits)))])
    for k in (1, 5, 81, 100):
        assert_same_knn(faiss_engine.search(queries, k), milvus_engine.search(queries, k))
    monkeypatch.setattr(milvus_module, "MAX_TOPK", 8)  # range searches must split their boxes to see every hit
    for k in (1, 7, 8):
        assert_same_knn(faiss_engine.search(queries, k), milvus_engine.search(queries, k))
    for radius in (0, 1, 3, bits):
        assert_same_ranges(faiss_engine.range_search(queries, radius), milvus_engine.range_search(queries, radius))
    with pytest.raises(DahpError, match="k=9: Milvus returns at most 8 nearest codes per query"):
        milvus_engine.search(queries, 9)


def test_save_load_and_uncommitted_rows_are_invisible(lite_db, tmp_path):
    bits = 24
    rng = np.random.default_rng(1)
    codes = tied_codes(rng, 400, bits)
    faiss_engine, milvus_engine = both_engines(lite_db, codes[:300], bits, tmp_path)
    pointer = tmp_path / "milvus-000001.index"
    milvus_engine.save(pointer)
    saved = json.loads(pointer.read_text())
    assert not Path(saved["uri"]).is_absolute() and (tmp_path / saved["uri"]).resolve() == Path(lite_db).resolve()
    assert (saved["bits"], saved["dimension"], saved["count"]) == (bits, 24, 300)

    milvus_engine.add(codes[300:], np.arange(300, 400))  # an add that crashes before its commit
    loaded = MilvusEngine.load(pointer, bits)
    assert loaded.ntotal == 300
    queries = codes[:10]
    assert_same_knn(faiss_engine.search(queries, 150), loaded.search(queries, 150))
    assert_same_ranges(faiss_engine.range_search(queries, bits), loaded.range_search(queries, bits))

    replacement = pack_codes(rng.integers(0, 2, (50, bits)))  # the next add reuses ids 300..349 for other codes
    for engine in (faiss_engine, loaded):
        engine.add(replacement, np.arange(300, 350))
    assert loaded.ntotal == 350
    assert_same_knn(faiss_engine.search(queries, 400), loaded.search(queries, 400))
    assert_same_ranges(faiss_engine.range_search(replacement, 2), loaded.range_search(replacement, 2))
    with pytest.raises(ValueError, match="expected ids 350..351"):
        loaded.add(codes[:2], np.array([0, 1]))


# --- index -------------------------------------------------------------------------------


def pairs(results):
    return [[(hit.distance, hit.id) for hit in hits] for hits in results]


def test_index_on_milvus_lite_matches_faiss_and_survives_a_crashed_add(model_path, tmp_path, monkeypatch):
    faiss_index = Index.build(model_path, "digits", tmp_path / "faiss", device="cpu", progress=False)
    milvus_index = Index.build(model_path, "digits", tmp_path / "milvus", device="cpu", progress=False,
                               backend="milvus")
    assert (tmp_path / "milvus.milvus.db").is_file()  # the default: a Lite file beside the index directory
    codes = DeepHasher.load(model_path, device="cpu").encode(load_digits())
    queries = codes[::180]

    def assert_same(index):
        for k in (1, 10, 100):  # 16-bit codes of 1,797 digits: the k-th distance is shared by many
            assert pairs(index.search(queries, k=k)) == pairs(faiss_index.search(queries, k=k))
        for radius in (0, 1, 2, 16):
            assert pairs(index.search(queries, k=None, radius=radius)) == \
                pairs(faiss_index.search(queries, k=None, radius=radius))

    assert_same(milvus_index)
    assert_same(Index.load(tmp_path / "milvus", device="cpu"))
    info = milvus_index.info()["backend"]
    assert info["name"] == "milvus" and info["dimension"] == 16 and info["index_type"] == "BIN_FLAT"

    monkeypatch.setattr(store_module, "write_manifest", _crash)  # rows are inserted, the commit never happens
    with pytest.raises(Crash):
        milvus_index.add("digits", progress=False)
    monkeypatch.undo()
    engine = milvus_index._engine
    rows = engine._client.query(engine.collection, filter="id >= 0", output_fields=["count(*)"])[0]["count(*)"]
    assert rows == 2 * DIGITS and milvus_index.count == DIGITS
    assert_same(milvus_index)
    reloaded = Index.load(tmp_path / "milvus", device="cpu")
    assert reloaded.count == DIGITS
    assert_same(reloaded)

    assert reloaded.add("digits", progress=False) == DIGITS
    assert faiss_index.add("digits", progress=False) == DIGITS
    assert Index.load(tmp_path / "milvus", device="cpu").count == 2 * DIGITS
    assert_same(reloaded)

    # a build that crashes before its commit leaves the index it would replace untouched
    monkeypatch.setattr(store_module, "write_manifest", _crash)
    with pytest.raises(Crash):
        Index.build(model_path, "digits", tmp_path / "milvus", device="cpu", progress=False, backend="milvus")
    monkeypatch.undo()
    assert_same(Index.load(tmp_path / "milvus", device="cpu"))


def test_cli_builds_a_milvus_index_at_a_uri(cli, model_path, tmp_path, capsys):
    uri = tmp_path / "codes.db"
    cli(["index", "build", model_path, "digits", "-o", tmp_path / "index", "--backend", "milvus", "--uri", uri,
         "--device", "cpu", "--quiet"])
    assert f"indexed {DIGITS} images of digits" in capsys.readouterr().out
    cli(["index", "info", tmp_path / "index"])
    out = capsys.readouterr().out
    assert "backend milvus: pymilvus_version" in out and f"uri {uri}, collection dahp_" in out and uri.is_file()
    with pytest.raises(DahpError, match="a uri is for the milvus backend"):
        cli(["index", "build", model_path, "digits", "-o", tmp_path / "other", "--uri", uri, "--quiet"])


# --- errors ------------------------------------------------------------------------------


def test_unusable_uris_are_named(tmp_path, monkeypatch):
    with pytest.raises(DahpError, match="the directory .*missing of the Milvus Lite database does not exist"):
        MilvusEngine.create(16, str(tmp_path / "missing" / "codes.db"), tmp_path / "index")
    with pytest.raises(DahpError, match="a Milvus Lite database must be a file named like 'NAME.db'"):
        MilvusEngine.create(16, str(tmp_path / ("x" * 40 + ".db")), tmp_path / "index")
    with pytest.raises(DahpError, match="choose one with --uri"):  # the default Lite name is too long for Lite
        MilvusEngine.create(16, None, tmp_path / ("an index with a long name and spaces"))
    monkeypatch.setattr(milvus_module, "CONNECT_TIMEOUT", 0.5)
    with pytest.raises(DahpError, match="cannot reach Milvus at http://127.0.0.1:9 "):
        MilvusEngine.create(16, "http://127.0.0.1:9", tmp_path / "index")
    with pytest.raises(DahpError, match="unknown backend 'annoy': choose from \\['faiss', 'milvus'\\]"):
        store_module._new_engine("annoy", 16, None, tmp_path / "index")


def test_a_lite_file_open_in_another_process_is_refused(tmp_path):
    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", f"from pymilvus import MilvusClient; MilvusClient({str(db)!r}); "
                               "print('open', flush=True); input()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(DahpError, match="another process may have it open"):
            MilvusEngine.create(16, str(db), tmp_path / "index")
    finally:
        holder.communicate("\n", timeout=30)


def test_damaged_pointers_and_collections_are_named(lite_db, tmp_path):
    rng = np.random.default_rng(2)
    engine = MilvusEngine.create(24, lite_db, tmp_path / "index")
    engine.add(pack_codes(rng.integers(0, 2, (40, 24))), np.arange(40))
    pointer = tmp_path / "milvus-000001.index"
    engine.save(pointer)

    def rewritten(**changes):
        path = tmp_path / "changed.index"
        path.write_text(json.dumps({**json.loads(pointer.read_text()), **changes}))
        return path

    with pytest.raises(DahpError, match="points to 24-bit codes, expected 16-bit codes"):
        MilvusEngine.load(pointer, 16)
    with pytest.raises(DahpError, match="holds 24-dimensional binary vectors, expected 16 for 16-bit codes"):
        MilvusEngine.load(rewritten(bits=16), 16)
    with pytest.raises(DahpError, match="holds 40 rows with ids below 41, the index commits 41"):
        MilvusEngine.load(rewritten(count=41), 24)
    with pytest.raises(DahpError, match="has no collection dahp_gone: it was dropped"):
        MilvusEngine.load(rewritten(collection="dahp_gone"), 24)
    with pytest.raises(DahpError, match="the Milvus Lite database .*nowhere.db of index file .* does not exist"):
        MilvusEngine.load(rewritten(uri="nowhere.db"), 24)
    (tmp_path / "faiss.index").write_bytes(b"\x00" * 10)
    with pytest.raises(DahpError, match="faiss.index is not a readable dahp Milvus pointer"):
        MilvusEngine.load(tmp_path / "faiss.index", 24)
    engine._client.drop_collection(engine.collection)
    with pytest.raises(DahpError, match=f"has no collection {engine.collection}"):
        MilvusEngine.load(pointer, 24)


def test_missing_pymilvus_is_a_clear_error_and_faiss_indexes_do_not_import_it(model_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus now raises ImportError
    with pytest.raises(DahpError, match="pip install 'dahp\\[milvus\\]'"):
        Index.build(model_path, "digits", tmp_path / "index", device="cpu", progress=False, backend="milvus")
    assert not (tmp_path / "index").exists()
    faiss_index = Index.build(model_path, "digits", tmp_path / "faiss", device="cpu", progress=False)
    assert Index.load(faiss_index.path).count == DIGITS
    check = ("import sys; from dahp.index import Index; from dahp.index.engine import ENGINES; "
             "assert 'milvus' in ENGINES and 'pymilvus' not in sys.modules")
    subprocess.run([sys.executable, "-c", check], check=True)

import json

import numpy as np
import pytest

from dahp.data import PROTOCOLS, ImageCollection, Protocol, describe, get_protocol, load_protocol, save_protocol
from dahp.data.collection import one_hot
from dahp.errors import DahpError


def _synthetic(per_class: int, classes: int = 10, test_per_class: int = 0) -> ImageCollection:
    """Tiny 1x1 images, classes interleaved; the last ``test_per_class`` of each class form the test partition."""
    classes_of = np.tile(np.arange(classes), per_class)
    rank = np.repeat(np.arange(per_class), classes)
    partition = np.where(rank >= per_class - test_per_class, "test", "train") if test_per_class else None
    names = [f"class{k}" for k in range(classes)]
    return ImageCollection(
        np.zeros((len(classes_of), 1, 1, 3), np.uint8), one_hot(classes_of, classes), names, "synthetic", partition
    )


def _check_disjointness(split, train_in_database: bool) -> None:
    assert not np.intersect1d(split.query, split.database).size
    assert not np.intersect1d(split.query, split.train).size
    assert np.isin(split.train, split.database).all() == train_in_database
    for indices in (split.query, split.train, split.database):
        assert np.array_equal(indices, np.unique(indices))  # sorted, no repeats


@pytest.fixture(scope="module")
def cifar_sized():
    return _synthetic(6000, test_per_class=1000)


def test_real_cifar10_sizes(cifar_sized):
    split = get_protocol("cifar10", seed=0).split(cifar_sized)
    assert split.sizes() == {"query": 1000, "train": 5000, "database": 59000}
    assert cifar_sized.labels[split.query].sum(axis=0).tolist() == [100] * 10
    assert cifar_sized.labels[split.train].sum(axis=0).tolist() == [500] * 10
    assert (cifar_sized.partition[split.query] == "test").any(), "queries are drawn from all 60,000 images"
    _check_disjointness(split, train_in_database=True)

    disjoint = get_protocol("cifar10-disjoint", seed=0).split(cifar_sized)
    assert disjoint.sizes() == {"query": 1000, "train": 5000, "database": 54000}
    assert np.array_equal(disjoint.query, split.query) and np.array_equal(disjoint.train, split.train)
    _check_disjointness(disjoint, train_in_database=False)

    official = get_protocol("cifar10-official").split(cifar_sized)
    assert official.sizes() == {"query": 10000, "train": 50000, "database": 50000}
    assert (cifar_sized.partition[official.query] == "test").all()
    assert np.array_equal(official.train, official.database)


def test_scaled_protocols_on_a_small_collection():
    data = _synthetic(200, test_per_class=40)
    sizes = {
        ("per-class", (("query_per_class", 10), ("train_per_class", 50))): (100, 500, 1900),
        ("per-class", (("query_per_class", 10), ("train_per_class", 50), ("database", "rest-minus-train"))): (
            100,
            500,
            1400,
        ),
        ("per-class", (("query_per_class", 10), ("train_per_class", 0))): (100, 1900, 1900),
        ("cifar10", (("query_per_class", 20), ("train_per_class", 100))): (200, 1000, 1800),
        ("cifar10-official", ()): (400, 1600, 1600),
        ("official", (("query_partition", "train"), ("database_partition", "test"))): (1600, 1600, 400),
        ("random", (("query", 150), ("train", 300))): (150, 300, 1850),
        ("random", (("query", 150), ("train", 0), ("database", "rest-minus-train"))): None,
        ("all", ()): (0, 2000, 2000),
    }
    for (name, params), expected in sizes.items():
        protocol = get_protocol(name, seed=5, **dict(params))
        if expected is None:
            with pytest.raises(DahpError, match="leaves no images for the database"):
                protocol.split(data)
            continue
        split = protocol.split(data)
        assert tuple(split.sizes().values()) == expected, (name, params)
        assert not np.intersect1d(split.query, split.database).size


def test_seeds_are_reproducible_and_matter(cifar_sized):
    for name, params in (("cifar10", {}), ("random", {"query": 100, "train": 500})):
        first = get_protocol(name, seed=7, **params).split(cifar_sized)
        again = get_protocol(name, seed=7, **params).split(cifar_sized)
        other = get_protocol(name, seed=8, **params).split(cifar_sized)
        assert all(np.array_equal(a, b) for a, b in zip(vars(first).values(), vars(again).values()))
        assert not np.array_equal(first.query, other.query) and not np.array_equal(first.train, other.train)


def test_random_protocol_on_multi_label_data():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < 0.4).astype(np.uint8)
    data = ImageCollection(np.zeros((300, 1, 1, 3), np.uint8), labels, list("abcde"), "nus")
    split = get_protocol("random", seed=1, query=30, train=100).split(data)
    assert split.sizes() == {"query": 30, "train": 100, "database": 270}
    with pytest.raises(
        DahpError, match=r"protocol cifar10 draws per class .* multi-label .* use the 'random' protocol"
    ):
        get_protocol("cifar10").split(data)
    assert "multi-label" in describe(data, split)


def test_round_trips_and_saved_records(tmp_path, cifar_sized):
    protocol = get_protocol("cifar10-disjoint", seed=3, train_per_class=200)
    assert protocol.parameters == {"query_per_class": 100, "train_per_class": 200, "database": "rest-minus-train"}
    record = json.loads(json.dumps(protocol.to_dict()))
    assert Protocol.from_dict(record) == protocol and record["seed"] == 3
    for name in PROTOCOLS:
        assert Protocol.from_dict(get_protocol(name, seed=1).to_dict()) == get_protocol(name, seed=1)

    split = protocol.split(cifar_sized)
    path = tmp_path / "run" / "protocol.json"
    save_protocol(path, protocol, split)
    assert json.loads(path.read_text())["sizes"] == {"query": 1000, "train": 2000, "database": 57000}
    again, replayed = load_protocol(path, cifar_sized)
    assert again == protocol and np.array_equal(replayed.train, split.train)
    shuffled = cifar_sized.subset(np.random.default_rng(0).permutation(len(cifar_sized)))
    with pytest.raises(DahpError, match=r"protocol.json: protocol cifar10-disjoint \(seed 3\) now splits"):
        load_protocol(path, shuffled)
    path.write_text("{not json")
    with pytest.raises(DahpError, match="protocol.json is not a protocol record"):
        load_protocol(path, cifar_sized)


def test_protocol_errors_are_clear():
    with pytest.raises(
        DahpError, match=r"unknown protocol 'cifar100': expected one of cifar10, cifar10-disjoint, .*all"
    ):
        get_protocol("cifar100")
    with pytest.raises(DahpError, match=r"protocol cifar10 has no parameter\(s\) \['queries'\]; it takes"):
        get_protocol("cifar10", queries=5)
    with pytest.raises(DahpError, match=r"query_per_class must be an integer >= 0, got -1"):
        get_protocol("per-class", query_per_class=-1)
    with pytest.raises(DahpError, match=r"database must be one of \['rest', 'rest-minus-train'\], got 'all'"):
        get_protocol("per-class", database="all")
    with pytest.raises(DahpError, match="seed must be an integer"):
        Protocol("cifar10", seed="1")  # type: ignore[arg-type]
    with pytest.raises(DahpError, match="needs 'name'"):
        Protocol.from_dict({"seed": 1})

    small = _synthetic(200)
    small.labels[:15] = 0
    small.labels[:15, 3] = 1  # class3 grows, the others shrink to 198 or 199
    with pytest.raises(
        DahpError, match=r"needs 600 images per class \(100 query \+ 500 train\).*class 'class0' has 198"
    ):
        get_protocol("cifar10").split(small)
    with pytest.raises(DahpError, match=r"uses the dataset.s own train/test partition, but synthetic has none"):
        get_protocol("cifar10-official").split(small)
    with pytest.raises(DahpError, match=r"no images in partition 'val' \(query_partition\); its partitions are"):
        get_protocol("official", query_partition="val").split(_synthetic(10, test_per_class=2))
    with pytest.raises(DahpError, match=r"needs 1500 query \+ 600 train images, but synthetic has 2000"):
        get_protocol("random", query=1500, train=600).split(small)


def test_describe_tabulates_sizes_per_class():
    data = _synthetic(20, classes=3, test_per_class=5)
    text = describe(data, get_protocol("per-class", query_per_class=2, train_per_class=5).split(data))
    lines = text.splitlines()
    assert lines[0] == "synthetic: 60 images, 3 classes" and lines[1] == "partition: test 15, train 45"
    assert lines[2].split() == ["class", "query", "train", "database", "all"]
    assert lines[3].split() == ["class0", "2", "5", "18", "20"] and lines[-1].split() == [
        "images",
        "6",
        "15",
        "54",
        "60",
    ]

import os
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dahp.data import ImageCollection, get_protocol, load_source
from dahp.data import sources as sources_module
from dahp.errors import DahpError

REPO = Path(__file__).resolve().parents[1]
CIFAR_JPEG = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _pixels(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write_tree(root: Path, layout: dict[str, int], size: int = 8) -> dict[str, np.ndarray]:
    """Write PNGs (lossless, so pixels can be compared) as ``{relative dir: count}``; returns path -> pixels."""
    written = {}
    for directory, count in layout.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = _pixels(len(written), size)
            Image.fromarray(pixels).save(root / directory / f"{i}.png")
            written[f"{directory}/{i}.png"] = pixels
    return written


def _tar(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    return archive


PARTITIONED = {"train/cat": 3, "train/dog": 2, "test/cat": 1, "test/dog": 1}


# --- image trees -------------------------------------------------------------------------------


def test_plain_image_folder_matches_the_existing_loader(tmp_path):
    _write_tree(tmp_path / "set", {"dog": 2, "cat": 3})
    data = load_source(str(tmp_path / "set"))
    assert data.class_names == ["cat", "dog"] and data.labels.argmax(axis=1).tolist() == [0, 0, 0, 1, 1]
    assert [p.name for p in data.images] == ["0.png", "1.png", "2.png", "0.png", "1.png"]
    assert data.partition is None and data.skipped == []


def test_partitioned_folder_records_train_and_test(tmp_path):
    _write_tree(tmp_path / "set", PARTITIONED)
    (tmp_path / "set" / ".hidden").mkdir()
    Image.fromarray(_pixels(0)).save(tmp_path / "set" / ".hidden" / "x.png")
    data = load_source(str(tmp_path / "set"))
    assert data.class_names == ["cat", "dog"] and len(data) == 7
    assert data.partition.tolist() == ["train"] * 5 + ["test"] * 2
    assert data.labels.argmax(axis=1).tolist() == [0, 0, 0, 1, 1, 0, 1]
    assert str(data.images[5]).endswith("test/cat/0.png")
    # Subsets keep the partition aligned with the images.
    sub = data.subset(np.array([6, 0]))
    assert sub.partition.tolist() == ["test", "train"] and str(sub.images[0]).endswith("test/dog/0.png")


def test_wrapping_directory_is_looked_through(tmp_path):
    _write_tree(tmp_path / "outer" / "cifar", PARTITIONED)
    data = load_source(str(tmp_path / "outer"))
    assert data.class_names == ["cat", "dog"] and sorted(set(data.partition.tolist())) == ["test", "train"]


# --- archives and their cache ----------------------------------------------------------------


def _count_reads(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    original = sources_module._read_archive

    def counting(archive, files_dir):
        calls.append(archive)
        return original(archive, files_dir)

    monkeypatch.setattr(sources_module, "_read_archive", counting)
    return calls


def test_archive_loads_in_memory_and_is_cached(tmp_path, monkeypatch):
    written = _write_tree(tmp_path / "set", PARTITIONED)
    archive = _tar(tmp_path / "set", tmp_path / "set.tar.gz")
    reads = _count_reads(monkeypatch)
    cache = tmp_path / "cache"
    data = load_source(str(archive), cache_dir=cache)
    assert isinstance(data.images, np.ndarray) and data.images.shape == (7, 8, 8, 3)
    assert data.class_names == ["cat", "dog"] and data.partition.tolist() == ["train"] * 5 + ["test"] * 2
    np.testing.assert_array_equal(data.images[0], written["train/cat/0.png"])
    np.testing.assert_array_equal(data.images[6], written["test/dog/0.png"])
    assert len(reads) == 1 and len(list((cache / "archives").glob("set-*.npz"))) == 1

    again = load_source(str(archive), cache_dir=cache)
    assert len(reads) == 1, "the second load must come from the cache"
    np.testing.assert_array_equal(again.images, data.images)
    np.testing.assert_array_equal(again.labels, data.labels)
    assert again.partition.tolist() == data.partition.tolist() and again.source == str(archive)


def _rewrite_npz(path: Path, **changes: np.ndarray) -> None:
    """A well-formed cache file whose contents no longer agree with each other."""
    with np.load(path) as stored:
        arrays = dict(stored)
    np.savez(path, **{**arrays, **changes})


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: f.write_bytes(b"not an npz"),
        lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
        lambda f: _rewrite_npz(f, count=np.int64(8)),
        lambda f: _rewrite_npz(f, images=np.zeros((7, 8, 8), np.uint8)),
    ],
    ids=["garbage", "truncated", "wrong-count", "wrong-shape"],
)
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    _write_tree(tmp_path / "set", PARTITIONED)
    archive = _tar(tmp_path / "set", tmp_path / "set.tgz")
    first = load_source(str(archive), cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache" / "archives").glob("*.npz")
    damage(cache_file)
    reads = _count_reads(monkeypatch)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_source(str(archive), cache_dir=tmp_path / "cache")
    assert len(reads) == 1
    np.testing.assert_array_equal(rebuilt.images, first.images)
    load_source(str(archive), cache_dir=tmp_path / "cache")  # the rebuilt cache is valid again
    assert len(reads) == 1


def test_a_changed_archive_gets_a_new_cache_entry(tmp_path, monkeypatch):
    _write_tree(tmp_path / "set", PARTITIONED)
    archive = _tar(tmp_path / "set", tmp_path / "set.tar")
    reads = _count_reads(monkeypatch)
    load_source(str(archive), cache_dir=tmp_path / "cache")
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_source(str(archive), cache_dir=tmp_path / "cache")
    assert len(reads) == 2 and len(list((tmp_path / "cache" / "archives").glob("*.npz"))) == 2


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    _write_tree(tmp_path / "set", {"a": 1, "b": 1})
    archive = _tar(tmp_path / "set", tmp_path / "set.tar.gz")
    monkeypatch.setenv("DAHP_CACHE", str(tmp_path / "env-cache"))
    load_source(str(archive))
    assert len(list((tmp_path / "env-cache" / "archives").glob("set-*.npz"))) == 1


def test_archive_of_large_images_is_extracted_to_the_cache(tmp_path, monkeypatch):
    _write_tree(tmp_path / "big", {"a": 2, "b": 1}, size=80)
    archive = _tar(tmp_path / "big", tmp_path / "big.tar.gz")
    reads = _count_reads(monkeypatch)
    data = load_source(str(archive), cache_dir=tmp_path / "cache")
    assert isinstance(data.images, list) and len(data) == 3 and data.class_names == ["a", "b"]
    assert all(p.is_file() and str(p).startswith(str(tmp_path / "cache")) for p in data.images)
    assert Image.open(data.images[2]).size == (80, 80)
    assert load_source(str(archive), cache_dir=tmp_path / "cache").images == data.images and len(reads) == 1
    data.images[0].unlink()  # an incomplete extraction is not trusted
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(load_source(str(archive), cache_dir=tmp_path / "cache")) == 3
    assert len(reads) == 2


def test_archive_member_escaping_the_tree_is_refused(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(_pixels(0)).save(image)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(image, arcname="../outside/x.png")
    with pytest.raises(DahpError, match=r"evil.tar: member ../outside/x.png points outside"):
        load_source(str(archive), cache_dir=tmp_path / "cache")


def test_broken_archive_is_named(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(DahpError, match=r"cannot read archive .*broken.tar.gz"):
        load_source(str(archive), cache_dir=tmp_path / "cache")


# --- CIFAR python batches ----------------------------------------------------------------------


def _write_batches(directory: Path, per_batch: int = 4, classes: int = 3) -> None:
    """Batches in the original format: pickled dicts with bytes keys, channel-major rows of 3072 bytes."""
    directory.mkdir(parents=True)
    names = {f"data_batch_{i}": i for i in range(1, 6)} | {"test_batch": 6}
    for name, value in names.items():
        data = np.zeros((per_batch, 3, 32, 32), np.uint8)
        data[:, 0], data[:, 1], data[:, 2] = value, 100 + value, 200  # R, G, B planes
        batch = {
            b"batch_label": name.encode(),
            b"data": data.reshape(per_batch, 3072),
            b"labels": list(range(per_batch)),
        }
        batch[b"labels"] = [k % classes for k in range(per_batch)]
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{k}".encode() for k in range(classes)], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar_python_batches(tmp_path):
    _write_batches(tmp_path / "cifar-10-batches-py")
    for spec in (tmp_path / "cifar-10-batches-py", tmp_path):  # the batch directory or torchvision's root
        data = load_source(str(spec))
        assert data.images.shape == (24, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.class_names == ["class0", "class1", "class2"]
        assert data.partition.tolist() == ["train"] * 20 + ["test"] * 4
        assert data.labels.argmax(axis=1).tolist()[:4] == [0, 1, 2, 0]
        np.testing.assert_array_equal(data.images[4, 5, 7], [2, 102, 200])  # batch 2 pixel as (R, G, B)
        np.testing.assert_array_equal(data.images[23, 0, 0], [6, 106, 200])


def test_bad_cifar_batches_are_named(tmp_path):
    _write_batches(tmp_path / "b")
    (tmp_path / "b" / "test_batch").unlink()
    with pytest.raises(DahpError, match=r"b/test_batch is missing: .*data_batch_1"):
        load_source(str(tmp_path / "b"))
    (tmp_path / "b" / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(DahpError, match=r"b/test_batch: expected b'data' as \(n, 3072\) uint8"):
        load_source(str(tmp_path / "b"))
    (tmp_path / "b" / "test_batch").write_bytes(pickle.dumps({b"data": os.system}, protocol=2))
    with pytest.raises(DahpError, match=r"b/test_batch is not a CIFAR python batch: refusing to load"):
        load_source(str(tmp_path / "b"))


def test_cifar10_download_uses_the_cache_and_reports_failure(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DahpError, match=r"cannot download CIFAR-10 into .*empty.*name resolution.*python batches"):
        load_source("cifar10-download", cache_dir=tmp_path / "empty")
    _write_batches(tmp_path / "cache" / "cifar-10-batches-py")
    assert len(load_source("cifar10", cache_dir=tmp_path / "cache")) == 24  # present: no download attempted


# --- list files ----------------------------------------------------------------------------------


def test_list_file_multi_label(tmp_path):
    _write_tree(tmp_path / "img", {"a": 3})
    (tmp_path / "train.txt").write_text("img/a/0.png 1 0 1\n\nimg/a/1.png 0 1 0\nimg/a/2.png 0 0 1\n")
    data = load_source(str(tmp_path / "train.txt"))
    assert data.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]] and data.num_classes == 3
    assert data.images[1] == tmp_path / "img" / "a" / "1.png" and data.partition is None
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "db.txt").write_text("a/2.png 1 1\n")
    for data in (
        load_source(str(tmp_path / "lists" / "db.txt"), image_root=tmp_path / "img"),
        load_source(f"{tmp_path / 'lists' / 'db.txt'}?image_root={tmp_path / 'img'}"),
    ):
        assert data.images == [tmp_path / "img" / "a" / "2.png"] and data.labels.tolist() == [[1, 1]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a/0.png 1 0 1\na/1.png 0 1\n", r"list.txt:2: expected 3 labels \(as on line 1\), got 2"),
        ("a/0.png 1 0\na/1.png 0 x\n", r"list.txt:2: label 2 is 'x': expected 0 or 1"),
        ("a/0.png 1 2\n", r"list.txt:1: label 2 is '2': expected 0 or 1"),
        ("a/0.png 1 0\n\na/9.png 0 1\n", r"list.txt:3: image .*a/9.png does not exist"),
        ("a/0.png\n", r"list.txt:1: expected an image path then 0/1 labels"),
        ("\n\n", r"list.txt lists no images"),
    ],
    ids=["label-count", "non-numeric", "not-binary", "missing-image", "no-labels", "empty"],
)
def test_list_file_errors_name_file_and_line(tmp_path, text, message):
    _write_tree(tmp_path, {"a": 1})
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(DahpError, match=message):
        load_source(str(tmp_path / "list.txt"))


# --- CSV ----------------------------------------------------------------------------------------------


def test_csv_with_a_class_column(tmp_path):
    _write_tree(tmp_path, {"img": 3})
    (tmp_path / "data.csv").write_text("Image,Label,notes\nimg/0.png,10,x\nimg/1.png,2,\n\nimg/2.png,10,y\n")
    data = load_source(str(tmp_path / "data.csv"))
    assert data.class_names == ["2", "10"] and data.labels.argmax(axis=1).tolist() == [1, 0, 1]
    assert data.images[2] == tmp_path / "img" / "2.png" and data.partition is None


def test_csv_with_0_1_columns_and_named_columns(tmp_path):
    _write_tree(tmp_path / "pics", {"x": 2})
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "multi.csv").write_text("file,sky,sea,dog\nx/0.png,1,1,0\nx/1.png,0,0,1\n")
    data = load_source(str(tmp_path / "meta" / "multi.csv"), image_root=tmp_path / "pics")
    assert data.class_names == ["sky", "sea", "dog"] and data.labels.tolist() == [[1, 1, 0], [0, 0, 1]]
    (tmp_path / "meta" / "named.csv").write_text("species,where\nbird,x/0.png\nfish,x/1.png\n")
    spec = f"{tmp_path / 'meta' / 'named.csv'}?path_column=where&label_column=species&image_root={tmp_path / 'pics'}"
    for data in (
        load_source(spec),
        load_source(
            str(tmp_path / "meta" / "named.csv"), tmp_path / "pics", path_column="where", label_column="species"
        ),
    ):
        assert data.class_names == ["bird", "fish"] and data.images[1] == tmp_path / "pics" / "x" / "1.png"


def test_csv_label_columns_pick_the_0_1_columns(tmp_path):
    _write_tree(tmp_path, {"img": 2})
    (tmp_path / "data.csv").write_text("path,sky,notes,dog,sea\nimg/0.png,1,blue,0,1\nimg/1.png,0,,1,0\n")
    for data in (load_source(f"{tmp_path / 'data.csv'}?label_columns=dog,sky"),
                 load_source(str(tmp_path / "data.csv"), label_columns=["dog", "sky"])):
        assert data.class_names == ["dog", "sky"] and data.labels.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(DahpError, match=r"data.csv:1: no label column 'cat'; the header has"):
        load_source(str(tmp_path / "data.csv"), label_columns="sky,cat")
    with pytest.raises(DahpError, match=r"data.csv:2: column 'notes' is 'blue': expected 0 or 1"):
        load_source(str(tmp_path / "data.csv"), label_columns="sky,notes")
    with pytest.raises(DahpError, match="label_column .* or label_columns .*, not both"):
        load_source(f"{tmp_path / 'data.csv'}?label_columns=sky&label_column=notes")


def test_csv_class_column_of_label_lists_is_multi_label(tmp_path):
    _write_tree(tmp_path, {"img": 4})
    (tmp_path / "movies.csv").write_text(
        'file,genres\nimg/0.png,"[\'Comedy\', \'Drama\']"\nimg/1.png,Drama|War\nimg/2.png,["War"]\n'
        "img/3.png,Comedy\n"
    )
    data = load_source(f"{tmp_path / 'movies.csv'}?label_column=genres")
    assert data.class_names == ["Comedy", "Drama", "War"]
    assert data.labels.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]]
    (tmp_path / "ids.csv").write_text('path,label\nimg/0.png,"[10, 2]"\nimg/1.png,2\n')  # numbers sort as numbers
    assert load_source(str(tmp_path / "ids.csv")).class_names == ["2", "10"]
    (tmp_path / "plural.csv").write_text("path,labels\nimg/0.png,cat|dog\nimg/1.png,dog\n")  # found without an option
    assert load_source(str(tmp_path / "plural.csv")).labels.tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize(
    "cell, message",
    [
        ('"[__import__(\'os\').system(\'touch pwned\')]"', r"data.csv:2: the 'label' column holds .*expected a "),
        ('"[\'a\', [\'b\']]"', r"data.csv:2: the 'label' column holds .*a list of quoted names"),
        ('"[]"', r"data.csv:2: the 'label' column holds no class name"),
        ("|", r"data.csv:2: the 'label' column holds no class name"),
    ],
    ids=["code", "nested", "empty-list", "empty-bars"],
)
def test_csv_label_lists_are_parsed_safely_or_refused(tmp_path, monkeypatch, cell, message):
    monkeypatch.chdir(tmp_path)
    _write_tree(tmp_path, {"img": 1})
    (tmp_path / "data.csv").write_text(f"path,label\nimg/0.png,{cell}\n")
    with pytest.raises(DahpError, match=message):
        load_source(str(tmp_path / "data.csv"))
    assert not (tmp_path / "pwned").exists()


def test_csv_ids_without_extension_find_their_images(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(_pixels(0)).save(tmp_path / "img" / "a1.png")
    Image.fromarray(_pixels(1)).save(tmp_path / "img" / "b2.JPG")
    Image.fromarray(_pixels(2)).save(tmp_path / "img" / "c3.webp")
    Image.fromarray(_pixels(3)).save(tmp_path / "img" / "c3.bmp")
    (tmp_path / "data.csv").write_text("image,label\nimg/a1,x\nimg/b2,y\nimg/c3,x\n")
    data = load_source(str(tmp_path / "data.csv"))
    assert [path.name for path in data.images] == ["a1.png", "b2.JPG", "c3.bmp"]  # IMAGE_EXTENSIONS order
    chosen = load_source(f"{tmp_path / 'data.csv'}?extension=webp")  # the given extension first
    assert [path.name for path in chosen.images] == ["a1.png", "b2.JPG", "c3.webp"]
    (tmp_path / "data.csv").write_text("image,label\nimg/a1,x\nimg/d4,y\n")
    with pytest.raises(DahpError, match=r"data.csv:3: image .*img/d4 does not exist \(nor with \.jpg or another"):
        load_source(str(tmp_path / "data.csv"))
    with pytest.raises(DahpError, match=r"extension must be a file suffix like \.jpg, got 'a/b'"):
        load_source(str(tmp_path / "data.csv"), extension="a/b")


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("path,label\nimg/0.png,a\n", {"label_column": "kind"}, r"data.csv:1: no label column 'kind'; the header has"),
        ("name,label\nimg/0.png,a\n", {}, r"data.csv:1: no path column: expected one named path / image / file"),
        ("path,sky,sea\nimg/0.png,1,0\nimg/0.png,1,yes\n", {}, r"data.csv:3: column 'sea' is 'yes': expected 0 or 1"),
        ("path,label\nimg/0.png,a\nimg/7.png,b\n", {}, r"data.csv:3: image .*img/7.png does not exist"),
        ("path,label\nimg/0.png,a,extra\n", {}, r"data.csv:2: expected 2 fields as in the header, got 3"),
        ("path,label\nimg/0.png,\n", {}, r"data.csv:2: the 'label' column is empty"),
        ("path,label\n,a\n", {}, r"data.csv:2: the 'path' column is empty: expected an image path"),
        ("path,label\n", {}, r"data.csv lists no images"),
        ("", {}, r"data.csv is empty"),
    ],
    ids=["missing-named", "no-path", "not-binary", "missing-image", "field-count", "empty-class", "empty-path",
         "no-rows", "empty"],
)
def test_csv_errors_name_file_and_line(tmp_path, text, options, message):
    _write_tree(tmp_path, {"img": 1})
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(DahpError, match=message):
        load_source(str(tmp_path / "data.csv"), **options)


# --- specs, options, bad images ------------------------------------------------------------------


def test_spec_errors(tmp_path):
    with pytest.raises(
        DahpError, match=r"image folder .*nope does not exist \(a data source is 'digits', 'cifar10', a directory"
    ):
        load_source(str(tmp_path / "nope"))
    with pytest.raises(DahpError, match=r"CSV file .*gone.csv does not exist"):
        load_source(str(tmp_path / "gone.csv"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DahpError, match="unrecognised file type"):
        load_source(str(tmp_path / "x.json"))
    (tmp_path / "l.txt").write_text("")
    with pytest.raises(DahpError, match=r"got 'colour=red'"):
        load_source(f"{tmp_path / 'l.txt'}?colour=red")
    with pytest.raises(DahpError, match=r"option\(s\) \['label_column'\] do not apply here"):
        load_source(str(tmp_path / "l.txt"), label_column="x")
    with pytest.raises(DahpError, match="given both in the spec and as an option"):
        load_source(f"{tmp_path / 'l.txt'}?image_root=a", image_root="b")
    assert len(load_source("digits")) == 1797


def test_skip_bad_drops_and_lists_unreadable_files(tmp_path):
    _write_tree(tmp_path / "set", PARTITIONED)
    bad = tmp_path / "set" / "train" / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = load_source(str(tmp_path / "set"))
    assert len(data) == 7  # files are only decoded when used, where decode_image names the bad one
    kept = load_source(str(tmp_path / "set"), skip_bad=True)
    assert len(kept) == 6 and bad not in kept.images
    assert [path for path, _ in kept.skipped] == [str(bad)] and kept.skipped[0][1]
    assert kept.partition.tolist() == ["train"] * 4 + ["test"] * 2
    assert kept.subset(np.array([0])).skipped == kept.skipped


def test_bad_archive_member_fails_without_skip_bad_and_is_listed_with_it(tmp_path):
    _write_tree(tmp_path / "set", PARTITIONED)
    (tmp_path / "set" / "test" / "cat" / "0.png").write_bytes(b"garbage")
    archive = _tar(tmp_path / "set", tmp_path / "set.tar.gz")
    with pytest.raises(DahpError, match=r"cannot read image .*set.tar.gz:set/test/cat/0.png: .*skip-bad"):
        load_source(str(archive), cache_dir=tmp_path / "cache")
    data = load_source(str(archive), cache_dir=tmp_path / "cache", skip_bad=True)  # from the cache now
    assert len(data) == 6 and data.partition.tolist().count("test") == 1
    assert [path for path, _ in data.skipped] == [f"{archive}:set/test/cat/0.png"]


def test_collection_rejects_a_misaligned_partition():
    with pytest.raises(DahpError, match="partition must name one part per image"):
        ImageCollection(np.zeros((2, 1, 1, 3), np.uint8), np.eye(2, dtype=np.uint8), ["a", "b"], "x", np.array(["t"]))


# --- the real CIFAR-10 (JPEG) archive -----------------------------------------------------------------


@pytest.mark.datasets
def test_real_cifar10_jpeg_archive(tmp_path):
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} is absent (the shared datasets are not mounted here)")
    started = time.perf_counter()
    data = load_source(str(CIFAR_JPEG), cache_dir=tmp_path)
    built = time.perf_counter() - started
    started = time.perf_counter()
    cached = load_source(str(CIFAR_JPEG), cache_dir=tmp_path)
    reloaded = time.perf_counter() - started
    print(f"CIFAR-10 JPEG: cache built in {built:.1f} s, loaded from it in {reloaded:.2f} s")
    assert data.images.shape == (60000, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.sum(axis=0).tolist() == [6000] * 10 and data.class_names[0] == "airplane"
    assert (data.partition == "train").sum() == 50000 and (data.partition == "test").sum() == 10000
    assert np.array_equal(cached.images, data.images) and built < 90 and reloaded < 10
    assert get_protocol("cifar10", seed=0).split(data).sizes() == {"query": 1000, "train": 5000, "database": 59000}

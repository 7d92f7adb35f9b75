from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dahp.data import (
    ImageCollection,
    ImageTooLarge,
    Preprocess,
    decode_image,
    default_preprocess,
    iterate_batches,
    load_digits,
    load_source,
    max_image_pixels,
    split_per_class,
)
from dahp.errors import DahpError


def test_digits_are_the_real_embedded_dataset():
    digits = load_digits()
    assert len(digits) == 1797 and digits.images.shape == (1797, 8, 8, 3) and digits.images.dtype == np.uint8
    assert digits.num_classes == 10 and (digits.labels.sum(axis=1) == 1).all()
    assert digits.images.max() == 255


def test_split_per_class_sizes_disjointness_and_determinism():
    labels = load_digits().labels
    split = split_per_class(labels, 20, 100, seed=3)
    assert split.sizes() == {"query": 200, "train": 1000, "database": 1597}
    assert not set(split.query) & set(split.database)
    assert set(split.train) <= set(split.database)
    assert (labels[split.query].sum(axis=0) == 20).all() and (labels[split.train].sum(axis=0) == 100).all()
    again = split_per_class(labels, 20, 100, seed=3)
    assert np.array_equal(split.query, again.query) and np.array_equal(split.train, again.train)
    assert not np.array_equal(split.query, split_per_class(labels, 20, 100, seed=4).query)


def test_split_errors_name_the_problem():
    labels = load_digits().labels
    with pytest.raises(DahpError, match="class 0 has 178 images but the split needs 300"):
        split_per_class(labels, 100, 200, seed=0)
    multi = labels.copy()
    multi[0, 1] = 1
    with pytest.raises(DahpError, match="multi-label"):
        split_per_class(multi, 1, 1, seed=0)


def _write_folder(root, per_class=3, size=12):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_loading_and_batches(tmp_path):
    _write_folder(tmp_path)
    data = load_source(str(tmp_path))
    assert data.class_names == ["cat", "dog"] and len(data) == 6
    assert data.labels.argmax(axis=1).tolist() == [0, 0, 0, 1, 1, 1]
    batches = list(iterate_batches(data, np.arange(6), 4, Preprocess(image_size=16)))
    assert [b.shape for b, _ in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert [i.tolist() for _, i in batches] == [[0, 1, 2, 3], [4, 5]]


def test_decoding_processes_give_the_batches_decoding_in_process_gives(tmp_path):
    _write_folder(tmp_path, per_class=4)
    data, preprocess, order = load_source(str(tmp_path)), Preprocess(image_size=16), np.arange(8)[::-1]
    in_process = list(iterate_batches(data, order, 3, preprocess))
    in_workers = list(iterate_batches(data, order, 3, preprocess, workers=2))
    assert [i.tolist() for _, i in in_workers] == [[7, 6, 5], [4, 3, 2], [1, 0]]
    for (expected, expected_indices), (got, indices) in zip(in_process, in_workers, strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, expected) and np.array_equal(indices, expected_indices)


def test_bad_folders_and_images_are_named(tmp_path):
    with pytest.raises(DahpError, match="does not exist"):
        load_source(str(tmp_path / "nope"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DahpError, match="no images found"):
        load_source(str(tmp_path / "empty"))
    _write_folder(tmp_path / "bad")
    (tmp_path / "bad" / "cat" / "0.png").write_bytes(b"not a png")
    data = load_source(str(tmp_path / "bad"))
    with pytest.raises(DahpError, match=r"cannot read image .*cat/0.png: .*--skip-bad .* leaves unreadable images out"):
        list(iterate_batches(data, np.arange(len(data)), 8, Preprocess(image_size=8)))


def test_empty_collection_is_refused():
    with pytest.raises(DahpError, match="empty"):
        ImageCollection(np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 2), np.uint8), ["a", "b"], "x")


def test_preprocess_normalises_and_resizes():
    pre = Preprocess(image_size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = pre.batch(np.full((1, 8, 8, 3), 255, np.uint8))
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out, torch.ones(1, 3, 4, 4))
    assert default_preprocess("digits").image_size == 8
    assert default_preprocess("/photos").image_size == 224
    assert Preprocess.from_dict(pre.to_dict()) == pre


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    _write_folder(tmp_path / "photos")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "photos" / "cat" / "0.png")
    monkeypatch.setenv("DAHP_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLarge, match=r"0.png is 40 x 30 = 1,200 pixels, over the limit of 1,000 "
                                            r"\(set \$DAHP_MAX_IMAGE_PIXELS to change it\)"):
        decode_image(tmp_path / "photos" / "cat" / "0.png", 8)
    kept = load_source(str(tmp_path / "photos"), skip_bad=True)
    assert [Path(path).name for path, _ in kept.skipped] == ["0.png"] and "over the limit" in kept.skipped[0][1]
    monkeypatch.setenv("DAHP_MAX_IMAGE_PIXELS", "1200")
    assert decode_image(tmp_path / "photos" / "cat" / "0.png", 8).shape == (8, 8, 3)
    monkeypatch.setenv("DAHP_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DahpError, match=r"\$DAHP_MAX_IMAGE_PIXELS is 'lots', expected a positive whole number"):
        max_image_pixels()

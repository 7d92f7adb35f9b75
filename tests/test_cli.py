import json

import numpy as np
import pytest
from PIL import Image

from dahp.cli import main
from dahp.data import load_digits
from dahp.hasher import MODEL_FILE

TINY_TRAIN = ["--bits", "16", "--small-stem", "--output-stride", "4", "--hidden-dim", "64", "--batch-size", "32",
              "--weights", "none", "--device", "cpu", "--quiet"]


def test_anchors_reproduces_the_papers_worked_example(capsys):
    assert main(["anchors", "--bits", "12", "--classes", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["min_distance"] == 6 and result["candidates"] == 16 and len(result["codes"]) == 10
    assert main(["anchors", "--bits", "48", "--classes", "100"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("100 anchors of 48 bits") and "Plotkin bound 24.24" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["anchors", "--bits", "300", "--classes", "10"], "argument --bits: must be between 8 and 256, got 300"),
    (["anchors", "--bits", "x", "--classes", "10"], "expected an integer between 8 and 256"),
    (["anchors", "--bits", "12", "--classes", "10", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["train", "--data", "digits"], "the following arguments are required: --out"),
])
def test_usage_errors_exit_2_without_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["anchors", "--bits", "8", "--classes", "300"], "cannot make 300 distinct 8-bit anchors"),
    (["anchors", "--bits", "12", "--classes", "10", "--min-distance", "7"], "Plotkin bound"),
    (["train", "--data", "/no/such/folder", "--out", "x"], "image folder /no/such/folder does not exist"),
    (["train", "--data", "digits", "--out", "x", "--resume"], "no checkpoint to resume from"),
    (["train", "--data", "digits", "--out", "x", "--optimizer", "sgd", "--lr", "-1"], "--lr must be a positive"),
    (["encode", "missing.dahp", "digits", "-o", "c.npz"], "missing.dahp: no such file"),
])
def test_user_errors_exit_1_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dahp: error: ") and message in err and err.count("\n") == 1


def test_train_encode_evaluate_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--query-per-class", "5",
                 "--train-per-class", "10", "--epochs", "2", *TINY_TRAIN]) == 0
    text = capsys.readouterr().out
    assert "training on 100 images of digits (10 classes), 16 bits" in text and "random init" in text
    assert main(["encode", str(out / MODEL_FILE), "digits", "-o", str(tmp_path / "codes.npz")]) == 0
    codes = np.load(tmp_path / "codes.npz")
    assert codes["codes"].shape == (1797, 2) and codes["codes"].dtype == np.uint8 and int(codes["bits"]) == 16
    assert np.array_equal(codes["labels"], load_digits().labels)
    capsys.readouterr()
    assert main(["evaluate", str(out / MODEL_FILE), "--json"]) == 0  # the model's own split
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] == 50 and result["database"] == 1747 and 0.0 <= result["mAP@ALL"] <= 1.0


def test_corrupt_model_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--train-per-class", "3", "--epochs", "1",
                 *TINY_TRAIN]) == 0
    model = out / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-100])
    capsys.readouterr()
    assert main(["evaluate", str(model), "--query-per-class", "2"]) == 1
    assert "is truncated" in capsys.readouterr().err


def test_image_folder_train_encode_and_folder_evaluation(tmp_path, capsys):
    digits = load_digits()
    for split, offset in (("train", 0), ("query", 1000)):
        for index in range(offset, offset + 40):
            folder = tmp_path / split / f"digit{digits.labels[index].argmax()}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits.images[index]).save(folder / f"{index}.png")
    # every class present in both folders, so the class lists agree
    for split in ("train", "query"):
        for digit in range(10):
            folder = tmp_path / split / f"digit{digit}"
            if not folder.exists():
                folder.mkdir()
                Image.fromarray(digits.images[np.flatnonzero(digits.labels[:, digit])[0]]).save(folder / "x.png")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "train"), "--out", str(out), "--image-size", "16",
                 "--epochs", "1", *TINY_TRAIN]) == 0
    assert main(["encode", str(out / MODEL_FILE), str(tmp_path / "query"), "-o", str(tmp_path / "q.npz")]) == 0
    names = np.load(tmp_path / "q.npz")["names"]
    assert all(name.endswith(".png") for name in names)
    capsys.readouterr()
    assert main(["evaluate", str(out / MODEL_FILE), "--query", str(tmp_path / "query"),
                 "--database", str(tmp_path / "train"), "--top-k", "10"]) == 0
    assert capsys.readouterr().out.startswith("mAP@10 = ")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dahp.cli import SERVE_RUNTIMES, main
from dahp.data import load_digits
from dahp.hasher import MODEL_FILE, RUNTIMES
from dahp.serialization import MAGIC

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
    (["train", "--data", "digits", "--out", "x", "--protocol", "random", "--query-per-class", "5"],
     "--query-per-class does not apply to protocol random: it takes --query-size, --train-size"),
    (["data", "describe", "digits", "--protocol", "per-class", "--query-size", "5", "--train-size", "9"],
     "--query-size, --train-size do not apply to protocol per-class: it takes --query-per-class, --train-per-class"),
    (["data", "describe", "digits", "--protocol", "all", "--train-size", "9"],
     "--train-size does not apply to protocol all: it takes no sizing flags"),
    (["data", "describe", "digits", "--query-per-class", "5", "--query-size", "5"],
     "--query-per-class, --query-size size different protocols (per-class: --query-per-class, --train-per-class; "
     "random: --query-size, --train-size)"),
])
def test_user_errors_exit_1_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dahp: error: ") and message in err and err.count("\n") == 1


def _train_tiny(out, *extra):
    return main(["train", "--data", "digits", "--out", str(out), "--query-per-class", "5", "--train-per-class", "10",
                 "--epochs", "2", *TINY_TRAIN, *extra])


def test_train_encode_evaluate_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train_tiny(out) == 0
    text = capsys.readouterr().out
    assert "training DAHP (resnet18, 8 px) on 100 images of digits (10 classes; protocol per-class, seed 0), 16 bits, 2 epochs" in text
    assert "random init" in text
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["protocol"]["parameters"]["query_per_class"] == 5 and protocol["sizes"]["database"] == 1747
    assert main(["encode", str(out / MODEL_FILE), "digits", "-o", str(tmp_path / "codes.npz")]) == 0
    codes = np.load(tmp_path / "codes.npz")
    assert codes["codes"].shape == (1797, 2) and codes["codes"].dtype == np.uint8 and int(codes["bits"]) == 16
    assert np.array_equal(codes["labels"], load_digits().labels)
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["evaluate", str(out / MODEL_FILE), "--out", str(report), "--json"]) == 0  # the model's own split
    headline = json.loads(capsys.readouterr().out)["run"]
    assert headline["queries"] == 50 and headline["database"] == 1747 and 0.0 <= headline["map"] <= 1.0
    assert headline["chance_map"] == pytest.approx(0.1, abs=0.01)  # ten classes: a random ranking's mAP
    saved = json.loads((report / "results.json").read_text())
    assert saved["results"]["run"]["map"] == headline["map"]
    assert saved["context"]["protocol"]["name"] == "per-class" and saved["context"]["models"]["run"]["method"] == "DAHP"
    assert "empty_radius" in saved["results"]["run"]["conventions"]
    assert (report / "results.md").read_text().startswith("| method | bits |")
    for png in ("pr_curves.png", "precision_at_n.png"):
        assert (report / png).read_bytes().startswith(b"\x89PNG")
    assert not (report / "precision_radius_vs_bits.png").exists()  # one code length only


def test_a_demoting_model_encodes_databases_demoted_and_queries_as_signs(tmp_path):
    from dahp.codes import demoted_codes, pack_codes
    from dahp.hasher import DeepHasher

    out = tmp_path / "run"
    assert _train_tiny(out, "--epochs", "1", "--demote-uncertain", "1") == 0
    hasher = DeepHasher.load(out / MODEL_FILE, device="cpu")
    assert hasher.model_config.demote_uncertain == 1.0
    outputs = hasher.encode_real(load_digits())
    for role, expected in (("database", demoted_codes(outputs, 1.0)), ("query", pack_codes(outputs))):
        assert main(["encode", str(out / MODEL_FILE), "digits", "-o", str(tmp_path / f"{role}.npz"), "--role", role,
                     "--quiet"]) == 0
        assert np.array_equal(np.load(tmp_path / f"{role}.npz")["codes"], expected)
    assert main(["encode", str(out / MODEL_FILE), "digits", "-o", str(tmp_path / "default.npz"), "--quiet"]) == 0
    assert np.array_equal(np.load(tmp_path / "default.npz")["codes"], np.load(tmp_path / "database.npz")["codes"])


def test_evaluate_several_models_plots_precision_against_code_length(tmp_path, capsys):
    for bits in ("16", "24"):
        assert _train_tiny(tmp_path / f"dahp{bits}", "--bits", bits, "--epochs", "1") == 0
    capsys.readouterr()
    report = tmp_path / "report"
    models = [str(tmp_path / f"dahp{bits}" / MODEL_FILE) for bits in ("16", "24")]
    assert main(["evaluate", *models, "--out", str(report), "--top-k", "100", "--radius", "1"]) == 0
    table = capsys.readouterr().out
    assert "| dahp16 | 16 | 100 |" in table and "| dahp24 | 24 | 100 |" in table
    assert (report / "precision_radius_vs_bits.png").read_bytes().startswith(b"\x89PNG")


def test_data_describe_prints_the_protocol_table(capsys):
    assert main(["data", "describe", "digits", "--protocol", "per-class", "--query-per-class", "20",
                 "--train-per-class", "100"]) == 0
    text = capsys.readouterr().out
    assert "protocol per-class (seed 0)" in text and "digits: 1797 images, 10 classes" in text
    assert text.rstrip().splitlines()[-1].split() == ["images", "200", "1000", "1597", "1797"]


def test_size_flags_select_and_size_the_random_protocol(capsys):
    assert main(["data", "describe", "digits", "--query-size", "30", "--train-size", "100", "--split-seed", "3"]) == 0
    text = capsys.readouterr().out
    assert 'protocol random (seed 3): {"query": 30, "train": 100, "database": "rest"}' in text
    assert text.rstrip().splitlines()[-1].split() == ["images", "30", "100", "1767", "1797"]


def _digit_folder(root, count=20):
    digits = load_digits()
    for index in range(count):
        folder = root / f"d{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[index]).save(folder / f"{index}.png")


def test_evaluate_from_another_folder_finds_the_data_and_shows_progress(tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    _digit_folder(work / "images")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "--data", "images", "--out", "run", "--image-size", "8", "--epochs", "1",
                 "--query-size", "4", "--train-size", "10", *TINY_TRAIN]) == 0
    monkeypatch.chdir(elsewhere)
    model = "../work/run/model.dahp"
    capsys.readouterr()
    assert main(["evaluate", model, "--out", "report"]) == 0  # the path typed in work/ resolved at training
    captured = capsys.readouterr()
    assert "| run | 16 | all |" in captured.out
    assert "run: encoding 4 query images" in captured.err and "run: encoding 16 database images" in captured.err
    assert "encoding: 100%" in captured.err  # the progress bars
    context = json.loads((elsewhere / "report" / "results.json").read_text())["context"]
    assert context["source"] == str(work / "images") and context["protocol"]["name"] == "random"
    assert main(["evaluate", model, "--out", "report", "--quiet"]) == 0
    assert capsys.readouterr().err == ""

    (work / "images").rename(tmp_path / "moved")
    assert main(["evaluate", model, "--out", "report"]) == 1
    err = capsys.readouterr().err
    assert f"{model} was trained on images, which is not found from here ({elsewhere}) (nor {work / 'images'})" in err
    assert "give --data PATH" in err
    assert main(["evaluate", model, "--data", "../moved", "--out", "report", "--quiet"]) == 0  # same split


def test_skip_bad_leaves_out_a_corrupt_image_and_says_so(tmp_path, capsys):
    _digit_folder(tmp_path / "images")
    (tmp_path / "images" / "d0" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "images"), "--out", str(out), "--image-size", "8", "--epochs", "1",
            *TINY_TRAIN]
    assert main(argv) == 1
    assert "broken.png" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "training DAHP (resnet18, 8 px) on 20 images" in captured.out and "skipped 1 unreadable images" in captured.err


def test_corrupt_model_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--train-per-class", "3", "--epochs", "1",
                 *TINY_TRAIN]) == 0
    model = out / MODEL_FILE
    good = model.read_bytes()
    header_end = good.index(b"\n", len(MAGIC))
    header = json.loads(good[len(MAGIC):header_end])
    damaged = {
        "is truncated": good[:-100],
        "preprocess.image_size is -5, expected a whole number of pixels": MAGIC + json.dumps(
            {**header, "preprocess": {**header["preprocess"], "image_size": -5}}).encode() + good[header_end:],
        "is not a valid dahp model file (KeyError: 'model_config')": MAGIC + json.dumps(
            {k: v for k, v in header.items() if k != "model_config"}).encode() + good[header_end:],
    }
    for message, content in damaged.items():
        model.write_bytes(content)
        capsys.readouterr()
        assert main(["evaluate", str(model), "--query-per-class", "2", "--out", str(tmp_path / "report")]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


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
                 "--database", str(tmp_path / "train"), "--top-k", "10", "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.startswith("| method | bits | K |")
    assert json.loads((tmp_path / "report" / "results.json").read_text())["results"]["run"]["queries"] == len(names)


def _settings(argv):
    from dahp.cli import _train_settings, build_parser

    return _train_settings(build_parser().parse_args(["train", "--out", "unused", *argv]))


def test_train_budget_is_a_starting_point_that_flags_override(tmp_path):
    budget = tmp_path / "mine.json"
    budget.write_text(json.dumps({
        "name": "mine", "description": "a test budget", "dataset": "digits", "protocol": "all", "image_size": 16,
        "model": {"backbone": "resnet18", "output_stride": 4, "small_stem": True, "hidden_dim": 32, "hash_norm": True},
        "train": {"epochs": 3, "lr": 0.02, "schedule": "cosine", "frozen_epochs": 1, "min_steps": 10},
        "method_train": {"dpsh": {"lr": 0.005}}, "weights": "none",
    }))
    model, config, preprocess, weights = _settings(["--data", "digits", "--budget", str(budget), "--epochs", "5"])
    assert (config.epochs, config.lr, config.schedule, config.frozen_epochs, config.min_steps) == (5, 0.02, "cosine", 1, 10)
    assert model.hash_norm and model.hidden_dim == 32 and model.attention and weights == "none"
    assert preprocess.image_size == 16
    model, config, _, _ = _settings(["--data", "digits", "--budget", str(budget), "--method", "dpsh", "--no-hash-norm",
                                     "--image-size", "24"])
    assert config.lr == 0.005 and not model.hash_norm and model.backbone == "alexnet" and not model.attention  # as the benchmark
    model, _, _, _ = _settings(["--data", "digits", "--budget", str(budget), "--residual-fusion"])
    assert model.residual_fusion and model.attention and model.hidden_dim == 32
    model, _, _, _ = _settings(["--data", "digits", "--budget", str(budget), "--mirror-average"])
    assert model.mirror_average and not model.residual_fusion
    model, _, _, _ = _settings(["--data", "digits", "--budget", str(budget), "--demote-uncertain", "0.5"])
    assert model.demote_uncertain == 0.5 and not model.mirror_average
    model, config, preprocess, weights = _settings(["--data", "digits"])  # no budget: the built-in defaults
    assert (config.epochs, config.lr, model.backbone, model.hash_norm, preprocess.image_size) == (50, 0.04, "resnet18",
                                                                                                 False, 8)
    assert not model.residual_fusion and not model.mirror_average  # the paper's network unless asked for
    assert model.demote_uncertain == 0  # and its sign codes


def test_preprocessing_follows_the_backbone_weights_unless_overridden():
    from dahp.models.efficientnet import INPUT_MEAN, INPUT_STD

    _, _, lite, _ = _settings(["--data", "photos/", "--backbone", "efficientnet_lite0", "--image-size", "96"])
    assert (lite.image_size, lite.mean, lite.std) == (96, INPUT_MEAN, INPUT_STD)  # [-1, 1], as its weights expect
    _, _, lite2, _ = _settings(["--data", "photos/", "--backbone", "efficientnet_lite2"])
    assert lite2.image_size == 260  # the weights' own resolution
    _, _, resnet, _ = _settings(["--data", "photos/"])
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.image_size == 224
    _, _, budget, _ = _settings(["--data", "photos/", "--budget", "cpu-pretrained"])
    assert budget.mean == (0.5, 0.5, 0.5) and budget.image_size == 96  # a budget's explicit normalisation wins
    model, config, transfer, weights = _settings(["--data", "photos/", "--budget", "cpu-transfer"])
    assert (transfer.image_size, transfer.mean) == (160, INPUT_MEAN)  # no normalisation in the budget: the weights'
    assert (model.backbone, model.head_channels, model.attention, config.frozen_epochs) == ("efficientnet_lite0", 320,
                                                                                           True, 1)
    assert weights.endswith(".pth")  # the packaged ImageNet file, never random init
    lite1_file = str(Path(__file__).parents[1] / "benchmarks/budgets/cpu-transfer-lite1-residual-fusion-mirror.json")
    lite1, _, _, lite1_weights = _settings(["--data", "photos/", "--budget", lite1_file])  # the README's larger recipe
    assert (lite1.backbone, lite1.residual_fusion, lite1.mirror_average) == ("efficientnet_lite1", True, True)
    assert "lite1" in lite1_weights


def test_train_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--epochs EPOCHS default 50, or the budget's", "default constant, or the budget's",
                  "--output-stride {2,4,8,16,32} default 8", "default 0.04, or the budget's", "code length (default 48)",
                  "--batch-size BATCH_SIZE default 128", "--augment {none,flip,flip-crop,resized-crop}"):
        assert shown in text


@pytest.mark.parametrize(("command", "shown"), [
    (["demo"], ["--epochs EPOCHS training epochs of each model (default: 12)", "(default: 0)"]),
    (["index", "build"], ["--batch-size BATCH_SIZE images per forward pass (default: 256)",
                          "--cache-dir CACHE_DIR where decoded archives are cached", "oversized images"]),
    (["evaluate"], ["--cache-dir CACHE_DIR where decoded archives are cached", "--workers WORKERS image-decoding "
                    "processes (default: 0)"]),
    (["serve"], ["--port PORT TCP port (default: 8000)", "--runtime {auto,pytorch,onnxruntime}", "(default: auto)"]),
    (["benchmark"], ["cpu-transfer", "(default: smoke)"]),
])
def test_every_command_shows_its_defaults_and_words_shared_options_alike(capsys, command, shown):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in shown:
        assert phrase in text


def test_resume_says_where_it_continues(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--out", str(tmp_path / "run"), "--train-per-class", "3", *TINY_TRAIN]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'run' / 'checkpoint.dahp'} after epoch 1 of 2" in out
    assert "backbone: restored from the checkpoint (at the start: random init" in out
    assert "epoch 2:" in out


def test_serve_offers_every_runtime_the_hasher_knows():
    assert SERVE_RUNTIMES == ("auto", *RUNTIMES)

import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from dahp.codes import demoted_codes, pack_codes
from dahp.data import default_preprocess, load_digits
from dahp.errors import DahpError
from dahp.hasher import CHECKPOINT_FILE, MODEL_FILE, DeepHasher
from dahp.models import HashingNetwork, ModelConfig
from dahp.serialization import load_file
from dahp.training import RESIZED_CROP_AREA, TrainConfig, Trainer, TrainingDiverged, augment_batch, resized_crops

SMALL_MODEL = ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=64)


@pytest.fixture(scope="module")
def small_digits():
    digits = load_digits()
    return digits.subset(np.arange(0, 1797, 9))  # 200 images, all classes


def _hasher(epochs=3, model=SMALL_MODEL, **overrides):
    config = TrainConfig(**{"epochs": epochs, "batch_size": 32, "seed": 0, **overrides})
    return DeepHasher(model, config, default_preprocess("digits"), weights="none", device="cpu", progress=False)


def _interrupt_after(monkeypatch, epochs_done, action):
    original = Trainer.save_checkpoint

    def save_then_act(self, done):
        original(self, done)
        if done == epochs_done:
            action(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_act)


def test_training_reduces_the_loss_and_saves_a_loadable_model(small_digits, tmp_path):
    hasher = _hasher(epochs=3).fit(small_digits, out_dir=tmp_path)
    losses = [record["loss"] for record in hasher.history_]
    assert losses[-1] < losses[0]
    loaded = DeepHasher.load(tmp_path / MODEL_FILE, device="cpu")
    assert loaded.bits == 16 and loaded.anchors_ == hasher.anchors_
    assert np.array_equal(loaded.encode(small_digits), hasher.encode(small_digits))
    assert hasher.encode(small_digits).shape == (200, 2)


@pytest.mark.parametrize("method", ["dahp", "dagh"])  # dagh: a companion network is checkpointed too
def test_resume_after_interruption_equals_an_uninterrupted_run(small_digits, tmp_path, monkeypatch, method):
    straight = _hasher(method=method).fit(small_digits, out_dir=tmp_path / "straight")

    def interrupt(trainer):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1, interrupt)
        with pytest.raises(KeyboardInterrupt):
            _hasher(method=method).fit(small_digits, out_dir=tmp_path / "resumed")
    assert not (tmp_path / "resumed" / MODEL_FILE).exists()
    resumed = _hasher(method=method).fit(small_digits, out_dir=tmp_path / "resumed", resume=True)
    for key, value in straight.model_.state_dict().items():
        assert torch.equal(value, resumed.model_.state_dict()[key]), key
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in straight.history_]


def test_resume_with_other_settings_or_without_checkpoint_is_refused(small_digits, tmp_path, monkeypatch):
    with pytest.raises(DahpError, match="no checkpoint to resume from"):
        _hasher().fit(small_digits, out_dir=tmp_path, resume=True)
    _hasher(epochs=1).fit(small_digits, out_dir=tmp_path)
    with pytest.raises(DahpError, match=r"different settings \(lr\)"):
        _hasher(epochs=2, lr=0.1).fit(small_digits, out_dir=tmp_path, resume=True)
    longer = _hasher(epochs=2).fit(small_digits, out_dir=tmp_path, resume=True)  # more epochs is fine
    assert [r["epoch"] for r in longer.history_] == [1, 2]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(small_digits, tmp_path, monkeypatch):
    def poison(trainer):
        with torch.no_grad():
            trainer.model.hash_layer.bias.fill_(float("nan"))

    _interrupt_after(monkeypatch, 1, poison)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1.*checkpoint"):
        _hasher().fit(small_digits, out_dir=tmp_path)
    header, payload = load_file(tmp_path / CHECKPOINT_FILE, "checkpoint")
    assert header["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_train_config_validation():
    with pytest.raises(DahpError, match="--optimizer must be one of"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(DahpError, match="--lr must be a positive number"):
        TrainConfig(lr=0)
    with pytest.raises(DahpError, match="--epochs must be >= 1"):
        TrainConfig(epochs=0)


def test_a_loss_with_a_companion_module_refuses_torchrun(monkeypatch):
    from dahp import distributed
    from dahp.models import HashingNetwork

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "wrap_model", lambda model, device: model)
    anchors = torch.where(torch.rand(10, 16) > 0.5, 1.0, -1.0)
    with pytest.raises(DahpError, match="--method dlbhc trains a companion module .* not supported under torchrun"):
        Trainer(HashingNetwork(SMALL_MODEL), anchors, default_preprocess("digits"), TrainConfig(method="dlbhc"),
                torch.device("cpu"), progress=False)


def _one_step_with_a_current_memory(data, micro_batch_size):
    """A network after one optimiser step on the whole of ``data``, the memory of training codes
    filled beforehand with the codes the network gives now (so no row of it is stale)."""
    from dahp.data import iterate_batches

    torch.manual_seed(0)
    # No layer normalises by batch statistics: the backbone's BatchNorm is kept on its
    # running statistics, and the head has neither the reduction, the attention nor hash_norm.
    model = HashingNetwork(ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=64, attention=False))
    anchors = torch.where(torch.rand(10, 16) > 0.5, 1.0, -1.0)
    config = TrainConfig(epochs=1, batch_size=len(data), lr=0.05, frozen_batch_norm=True,
                         micro_batch_size=micro_batch_size)
    trainer = Trainer(model, anchors, default_preprocess("digits"), config, torch.device("cpu"), progress=False)
    images, _ = next(iterate_batches(data, np.arange(len(data)), len(data), default_preprocess("digits")))
    model.eval()
    with torch.no_grad():
        trainer.memory = trainer.loss.activate(model(images), 0)
    initial = model.hash_layer.weight.detach().clone()
    trainer.fit(data)
    assert not torch.allclose(model.hash_layer.weight, initial)  # the step moved the weights
    return model, trainer.history[0]["loss"]


def test_micro_batches_add_up_to_the_whole_batchs_step(small_digits):
    whole, whole_loss = _one_step_with_a_current_memory(small_digits, None)
    chunked, chunked_loss = _one_step_with_a_current_memory(small_digits, 48)  # 200 rows: 5 chunks of 40
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)
    for (name, value), other in zip(whole.state_dict().items(), chunked.state_dict().values()):
        assert torch.allclose(value, other, atol=1e-6), name


def test_micro_batches_never_leave_one_image_alone(small_digits):
    anchors = torch.where(torch.rand(10, 16) > 0.5, 1.0, -1.0)
    trainer = Trainer(HashingNetwork(SMALL_MODEL), anchors, default_preprocess("digits"),
                      TrainConfig(batch_size=32, micro_batch_size=16), torch.device("cpu"), progress=False)
    assert [len(chunk) for chunk in trainer._chunks(32)] == [16, 16]
    assert [len(chunk) for chunk in trainer._chunks(17)] == [9, 8]  # not 16 + 1: BatchNorm needs two
    assert [len(chunk) for chunk in trainer._chunks(3)] == [3]
    hasher = _hasher(epochs=2, micro_batch_size=7).fit(small_digits)  # 200 = 6 x 32 + 8, chunks of 7, 6 and 4
    assert np.isfinite([record["loss"] for record in hasher.history_]).all()


def _trained_with_layout(data, channels_last):
    torch.manual_seed(0)
    model = HashingNetwork(SMALL_MODEL)  # attention and hash outputs included
    anchors = torch.where(torch.rand(10, 16) > 0.5, 1.0, -1.0)
    trainer = Trainer(model, anchors, default_preprocess("digits"),
                      TrainConfig(epochs=2, batch_size=50, lr=0.05, augment="flip-crop"), torch.device("cpu"),
                      progress=False, channels_last=channels_last)
    trainer.fit(data)
    return model, trainer.history


def test_channels_last_training_is_the_same_training(small_digits):
    nchw, nchw_history = _trained_with_layout(small_digits, channels_last=False)
    nhwc, nhwc_history = _trained_with_layout(small_digits, channels_last=True)
    assert nhwc.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert [r["loss"] for r in nhwc_history] == pytest.approx([r["loss"] for r in nchw_history], rel=1e-4)
    for (name, value), other in zip(nchw.state_dict().items(), nhwc.state_dict().values()):
        assert torch.allclose(value, other, atol=1e-4), name


def test_micro_batch_settings_are_checked(monkeypatch):
    with pytest.raises(DahpError, match=r"--micro-batch-size must be >= 2 and at most --batch-size \(32\)"):
        TrainConfig(batch_size=32, micro_batch_size=64)
    with pytest.raises(DahpError, match="--micro-batch-size needs --pairs memory"):
        TrainConfig(batch_size=32, micro_batch_size=8, pairs="batch")
    from dahp import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "wrap_model", lambda model, device: model)
    with pytest.raises(DahpError, match="--micro-batch-size trains in one process"):
        Trainer(HashingNetwork(SMALL_MODEL), torch.where(torch.rand(10, 16) > 0.5, 1.0, -1.0),
                default_preprocess("digits"), TrainConfig(micro_batch_size=8), torch.device("cpu"), progress=False)

@pytest.mark.slow
def test_sigkill_during_training_then_resume(tmp_path):
    """A run killed with SIGKILL resumes from its last checkpoint to the uninterrupted result."""
    command = [sys.executable, "-m", "dahp.cli", "train", "--data", "digits", "--train-per-class", "8",
               "--bits", "16", "--epochs", "6", "--batch-size", "32", "--small-stem", "--output-stride", "4",
               "--hidden-dim", "64", "--weights", "none", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    victim = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    header, _ = load_file(checkpoint, "checkpoint")  # intact, whatever moment the kill hit
    assert header["epochs_done"] < 6, "the run finished before it could be killed"
    subprocess.run([*command, "--out", str(tmp_path / "killed"), "--resume"], check=True, env=env,
                   capture_output=True)
    straight = DeepHasher.load(tmp_path / "straight" / MODEL_FILE, device="cpu").model_.state_dict()
    resumed = DeepHasher.load(tmp_path / "killed" / MODEL_FILE, device="cpu").model_.state_dict()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


def test_a_last_batch_of_one_image_is_skipped_not_fatal(small_digits):
    one_by_one = ModelConfig(bits=16, output_stride=8, small_stem=True, hidden_dim=64)  # 8 px -> 1x1 map
    hasher = _hasher(epochs=1, model=one_by_one, batch_size=33)  # 199 images = 6 batches of 33 + 1
    hasher.fit(small_digits.subset(np.arange(199)))
    assert hasher.history_[0]["epoch"] == 1


def test_encode_images_matches_encoding_the_collection(small_digits, tmp_path):
    from PIL import Image

    hasher = _hasher(epochs=1).fit(small_digits, out_dir=tmp_path)
    files = []
    for index in range(3):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(small_digits.images[index]).save(files[-1])
    with open(files[2], "rb") as stream:
        codes = hasher.encode_images([files[0], str(files[1]), stream])
    assert np.array_equal(codes, hasher.encode(small_digits.subset(np.arange(3))))
    assert len(DeepHasher.load(tmp_path / MODEL_FILE).fingerprint_) == 64
    with pytest.raises(DahpError, match="cannot read image"):
        hasher.encode_images([tmp_path / "missing.png"])


def test_a_database_is_encoded_with_the_models_demotion_rule_and_queries_without(small_digits):
    demoting = _hasher(epochs=1, model=replace(SMALL_MODEL, demote_uncertain=1.0)).fit(small_digits)
    outputs = demoting.encode_real(small_digits)
    database = demoting.encode(small_digits, role="database")
    np.testing.assert_array_equal(database, demoted_codes(outputs, 1.0))
    np.testing.assert_array_equal(demoting.encode(small_digits), pack_codes(outputs))  # queries: sign codes
    assert (database != pack_codes(outputs)).any(axis=1).mean() > 0.5  # ratio 1: every row below its mean
    plain = _hasher(epochs=1)
    plain.model_ = demoting.model_
    np.testing.assert_array_equal(plain.encode(small_digits, role="database"), pack_codes(outputs))  # 0: off
    with pytest.raises(DahpError, match="role must be one of query, database"):
        demoting.codes(outputs, "index")


def _backbone_parameters(model):
    return {name: value.detach().clone() for name, value in model.backbone.named_parameters()}


def test_frozen_epochs_train_only_the_new_layers_then_fine_tune(small_digits, tmp_path, monkeypatch):
    torch.manual_seed(0)
    initial = _backbone_parameters(HashingNetwork(SMALL_MODEL))
    after_first = {}

    def remember(trainer):
        after_first.update(_backbone_parameters(trainer.model))
        after_first["fc1"] = trainer.model.fc1[0].weight.detach().clone()

    _interrupt_after(monkeypatch, 1, remember)
    hasher = _hasher(epochs=2, frozen_epochs=1).fit(small_digits, out_dir=tmp_path)
    fc1 = after_first.pop("fc1")
    assert all(torch.equal(after_first[name], initial[name]) for name in initial)  # epoch 1: backbone frozen
    assert not torch.equal(fc1, hasher.model_.fc1[0].weight)  # ... while the head learned, and goes on
    final = _backbone_parameters(hasher.model_)
    assert any(not torch.equal(final[name], initial[name]) for name in initial)  # epoch 2: fine-tuned


def test_backbone_lr_scale_zero_keeps_the_pretrained_weights(small_digits):
    torch.manual_seed(0)
    initial = _backbone_parameters(HashingNetwork(SMALL_MODEL))
    hasher = _hasher(epochs=1, backbone_lr_scale=0.0, weight_decay=0.0, momentum=0.0).fit(small_digits)
    final = _backbone_parameters(hasher.model_)
    assert all(torch.equal(final[name], initial[name]) for name in initial)
    assert hasher.history_[-1]["lr"] > 0


def _batch_norm_statistics(model):
    return {name: value.clone() for name, value in model.backbone.named_buffers() if "running" in name}


@pytest.mark.parametrize("frozen_batch_norm", [True, False])
def test_frozen_batch_norm_keeps_the_backbones_statistics_while_it_fine_tunes(small_digits, frozen_batch_norm):
    torch.manual_seed(0)
    network = HashingNetwork(SMALL_MODEL)
    initial, weights = _batch_norm_statistics(network), _backbone_parameters(network)
    hasher = _hasher(epochs=2, frozen_epochs=1, frozen_batch_norm=frozen_batch_norm).fit(small_digits)
    final = _batch_norm_statistics(hasher.model_)
    assert initial and all(torch.equal(final[name], initial[name]) for name in initial) == frozen_batch_norm
    trained = _backbone_parameters(hasher.model_)
    assert any(not torch.equal(trained[name], weights[name]) for name in weights)  # fine-tuned either way


def test_frozen_stages_keep_their_weights_and_statistics_while_the_rest_fine_tunes(small_digits):
    torch.manual_seed(0)
    network = HashingNetwork(SMALL_MODEL)
    state = {name: value.clone() for name, value in network.backbone.state_dict().items()}
    hasher = _hasher(epochs=2, frozen_stages=2).fit(small_digits)  # the stem and layer1 of ResNet-18
    trained = hasher.model_.backbone.state_dict()
    kept = {name for name in state if torch.equal(trained[name], state[name]) and "num_batches" not in name}
    fixed = {name for name in state if name.split(".")[0] in ("conv1", "bn1", "layer1") and "num_batches" not in name}
    assert fixed and kept == fixed  # weights and running statistics of those stages, and nothing else
    assert any(name.startswith("layer1.") and "running" in name for name in kept)


def test_frozen_stages_are_checked_against_the_backbone(small_digits):
    with pytest.raises(DahpError, match=re.escape("--frozen-stages must be at most 5 (the stages of this backbone")):
        _hasher(epochs=1, frozen_stages=6).fit(small_digits)


def test_min_steps_raise_the_epochs_of_a_small_training_set(small_digits):
    config = TrainConfig(epochs=4, batch_size=32, min_steps=50, frozen_epochs=2)
    sized = config.sized_for(200)  # 7 steps per epoch (6 full batches and one of 8)
    assert config.steps_per_epoch(200) == 7 and sized.epochs == 8 and sized.frozen_epochs == 4
    assert TrainConfig(epochs=4, batch_size=32, min_steps=10).sized_for(200).epochs == 4  # already enough
    hasher = _hasher(epochs=1, min_steps=14).fit(small_digits)
    assert len(hasher.history_) == 2 and hasher.train_config.epochs == 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": 2, "frozen_epochs": 2}, "--frozen-epochs must be >= 0 and below --epochs (2), got 2"),
    ({"backbone_lr_scale": -1.0}, "--backbone-lr-scale must be a number >= 0, got -1.0"),
    ({"min_steps": -1}, "--min-steps must be >= 0, got -1"),
    ({"frozen_stages": -1}, "--frozen-stages must be >= 0, got -1"),
])
def test_transfer_settings_are_validated(overrides, message):
    with pytest.raises(DahpError, match=re.escape(message)):
        TrainConfig(**overrides)


def test_resized_crop_zooms_into_a_window_of_the_image():
    centres = (torch.arange(64) * 2 + 1) / 64 - 1  # each pixel's x in grid_sample's [-1, 1] coordinates
    ramp = centres.expand(1, 3, 64, 64).contiguous()
    whole = resized_crops(ramp, torch.tensor([[1.0, 0.5, 0.5, 0.5]]))  # 100% of the area, square
    assert torch.allclose(whole, ramp, atol=1e-5)
    left = resized_crops(ramp, torch.tensor([[0.0, 0.5, 0.0, 0.5]]))  # the smallest window, at the left
    side = math.sqrt(RESIZED_CROP_AREA[0])
    assert left.shape == ramp.shape
    assert left[0, 0, 32, 32].item() == pytest.approx(-1 + side + side / 64, abs=1e-5)  # the middle pixel's centre
    assert left[0, 0, 32, -1].item() == pytest.approx(-1 + 2 * side - side / 64, abs=1e-5)


@pytest.mark.parametrize("mode", ["flip", "flip-crop", "resized-crop"])
def test_an_augmented_shard_is_that_rows_of_the_augmented_batch(mode):
    images = torch.randn(6, 3, 24, 24)
    whole = augment_batch(images, mode, torch.Generator().manual_seed(3))
    shard = augment_batch(images[2:5], mode, torch.Generator().manual_seed(3), slice(2, 5), 6)
    assert torch.equal(shard, whole[2:5])
    assert not torch.equal(whole, images)  # some image was changed

"""Training under ``torchrun`` with 2 CPU processes equals one process on the same global batch."""

import os
import runpy
import subprocess
import sys

import pytest
import torch

from dahp.hasher import CHECKPOINT_FILE, MODEL_FILE, DeepHasher

# Global batch 27 on 40 images: batches of 27 and 13, split 14/13 and 7/6, so unequal
# shards check the loss weighting and the padded gathers. DSH's loss is ~10x
# DAHP's: at lr 0.04 its training is chaotic here (one thread instead of two moves its
# weights by 0.16 in a single process), so it trains with a smaller step. So does the
# flip-crop run: trained channels-last, the 27-image batch and its 14/13-row shards round
# differently (one step: 6e-7 in the outputs), and at lr 0.04 four steps grew that to 3e-4
# of a weight; at 0.001 they agree to 3e-6, while a doubled step would move them by 1.6e-3.
SCRIPT = '''
import sys

import numpy as np
import torch

from dahp.data import default_preprocess, load_digits
from dahp.distributed import is_main_process
from dahp.hasher import DeepHasher
from dahp.models import ModelConfig
from dahp.training import TrainConfig

RUNS = {
    "dahp-memory": {"method": "dahp"},
    "dahp-batch": {"method": "dahp", "pairs": "batch", "augment": "flip-crop", "lr": 0.001},
    "dsh-batch": {"method": "dsh", "pairs": "batch", "lr": 0.005},
}
DATA = load_digits().subset(np.arange(0, 40 * 9, 9))  # 40 images, all classes


def train(name, epochs=2, out_dir=None, resume=False):
    model = ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=32)
    config = TrainConfig(**{"epochs": epochs, "batch_size": 27, "seed": 0, **RUNS[name]})
    hasher = DeepHasher(model, config, default_preprocess("digits"), weights="none", device="cpu", progress=False)
    return hasher.fit(DATA, out_dir=out_dir, resume=resume)


def result(hasher):
    return {"state": hasher.model_.state_dict(), "loss": [r["loss"] for r in hasher.history_]}


if __name__ == "__main__":  # under torchrun; dahp-memory stops after epoch 1 and is resumed
    torch.set_num_threads(1)
    results = {name: result(train(name)) for name in RUNS if name != "dahp-memory"}
    train("dahp-memory", epochs=1, out_dir=sys.argv[2])
    results["dahp-memory"] = result(train("dahp-memory", out_dir=sys.argv[2], resume=True))
    if is_main_process():
        torch.save(results, sys.argv[1])
'''


def _torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _assert_same(run, reference):
    assert run["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    for key, value in reference["state"].items():
        torch.testing.assert_close(run["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_processes_train_the_single_process_model(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    process = _torchrun(script, tmp_path / "results.pt", tmp_path / "resumed", cwd=tmp_path)
    single = runpy.run_path(str(script), run_name="reference")  # meanwhile, the reference in this process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: reductions over 2 threads round differently
    try:
        reference = {name: single["result"](single["train"](name)) for name in single["RUNS"]}
    finally:
        torch.set_num_threads(threads)
    _finish(process)
    results = torch.load(tmp_path / "results.pt")
    for name, expected in reference.items():
        _assert_same(results[name], expected)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [CHECKPOINT_FILE, MODEL_FILE]


@pytest.mark.slow
def test_cli_under_torchrun_writes_one_model_and_prints_once(tmp_path):
    out = tmp_path / "run"
    process = _torchrun("-m", "dahp.cli", "train", "--data", "digits", "--train-per-class", "5", "--bits", "16",
                        "--epochs", "1", "--batch-size", "16", "--small-stem", "--output-stride", "4",
                        "--hidden-dim", "32", "--weights", "none", "--device", "cpu", "--quiet", "--out", out,
                        cwd=tmp_path)
    output = _finish(process)
    assert output.count("model saved to") == 1 and output.count("training ") == 1
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE, MODEL_FILE, "protocol.json"]
    assert [r["epoch"] for r in DeepHasher.load(out / MODEL_FILE, device="cpu").history_] == [1]

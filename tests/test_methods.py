"""Each method's loss against a small case computed by hand, and the registry's errors."""

import math

import pytest
import torch

from dahp.errors import DahpError
from dahp.losses import LossInputs
from dahp.methods import LossSettings, get_method, list_methods, parse_methods
from dahp.methods.csq import CSQLoss
from dahp.methods.dsh import DSHLoss
from dahp.methods.hashnet import HashNetLoss
from dahp.models import ModelConfig

LABELS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 similar, 2 the odd one out


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_registry_lists_every_method_in_table_order():
    assert list_methods()[:4] == ["dahp", "dahp-v1", "dahp-v2", "dpsh"]
    assert {"hashnet", "dsh", "csq", "lsh", "itq"} <= set(list_methods())


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(DahpError, match=r"unknown method 'dpshh'; valid methods: dahp, dahp-v1, .*itq"):
        get_method("dpshh")
    with pytest.raises(DahpError, match="more than once"):
        parse_methods("dahp,dahp")
    assert [m.name for m in parse_methods("all")] == list_methods()


def test_variants_set_attention_and_dpsh_its_own_backbone():
    base = ModelConfig(bits=48, output_stride=8)
    assert get_method("dahp").model_config(base).attention
    assert not get_method("dahp-v1").model_config(base).attention
    assert get_method("dahp-v2").model_config(base).attention
    dpsh = get_method("dpsh").model_config(base)
    assert (dpsh.backbone, dpsh.output_stride, dpsh.attention) == ("alexnet", 32, False)
    assert not get_method("dahp").model_config(base, attention=False).attention


def test_methods_without_an_anchor_loss_refuse_an_anchor_weight():
    for name in ("dpsh", "dahp-v1", "hashnet", "dsh", "csq"):
        with pytest.raises(DahpError, match=f"method '{name}' has no anchor loss"):
            get_method(name).loss(LossSettings(8, anchor_weight=0.05))
    with pytest.raises(DahpError, match="shallow"):
        get_method("itq").loss(LossSettings(8))


def test_dpsh_loss_by_hand():
    codes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    loss, parts = get_method("dpsh").loss(LossSettings(2))(LossInputs.within_batch(codes, LABELS, codes))
    # theta = ½ bᵢᵀbⱼ: rows (½, ½, 0), (½, 1, -1), (0, -1, 2); similar pairs (0,0), (0,1), (1,0), (1,1), (2,2)
    theta = [[0.5, 0.5, 0.0], [0.5, 1.0, -1.0], [0.0, -1.0, 2.0]]
    similar = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    pairwise = sum(softplus(t) - s * t for row_t, row_s in zip(theta, similar) for t, s in zip(row_t, row_s)) / 9
    quantization = (0 + 0 + 0 + 0 + 0 + 1) / 6  # (b - sign b)², sign(0) = 0: only -2 -> -1 costs 1
    assert parts["pairwise"] == pytest.approx(pairwise)
    assert parts["quantization"] == pytest.approx(quantization)
    assert loss.item() == pytest.approx(pairwise + 0.1 * quantization)


def test_hashnet_continuation_and_balanced_weights_by_hand():
    loss_fn = HashNetLoss(bits=2)
    assert loss_fn.scale(0) == 1.0 and loss_fn.scale(600) == pytest.approx(2.0)
    raw = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.3, 0.7]])
    codes = loss_fn.activate(raw, 600)
    torch.testing.assert_close(codes, torch.tanh(2.0 * raw))
    _, parts = loss_fn(LossInputs.within_batch(codes, LABELS, codes))
    z = codes.tolist()
    inner = [[5.0 * sum(a * b for a, b in zip(z[i], z[j])) for j in range(3)] for i in range(3)]
    similar = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    pos = [softplus(inner[i][j]) - inner[i][j] for i in range(3) for j in range(3) if similar[i][j]]
    neg = [softplus(inner[i][j]) for i in range(3) for j in range(3) if not similar[i][j]]
    assert parts["pairwise"] == pytest.approx(sum(pos) / len(pos) + sum(neg) / len(neg), rel=1e-6)


def test_dsh_contrastive_with_margin_and_regulariser_by_hand():
    loss_fn = DSHLoss(bits=2)  # margin m = 2c = 4
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.5, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss, parts = loss_fn(LossInputs.within_batch(codes, labels, codes))
    # squared distances: d01 = 4, d02 = 0.25, d12 = 4.25; similar pairs: (0,2) and the diagonal
    pairs = 2 * (0.5 * max(4 - 4, 0) + 0.5 * 0.25 + 0.5 * max(4 - 4.25, 0))
    assert parts["contrastive"] == pytest.approx(pairs / 9)
    assert parts["regulariser"] == pytest.approx((0 + 0 + 0.5) / 3)  # || |b| - 1 ||_1 per image
    assert loss.item() == pytest.approx(pairs / 9 + 0.01 * 0.5 / 3)


def test_csq_central_bce_by_hand():
    loss_fn = CSQLoss()
    codes = loss_fn.activate(torch.tensor([[0.0, 1.0]]), 0)
    centres = torch.tensor([[1.0, -1.0]])
    loss, parts = loss_fn(LossInputs.within_batch(codes, torch.tensor([[1.0]]), centres))
    u = math.tanh(1.0)
    bce = (-math.log(0.5) - math.log(1 - (u + 1) / 2)) / 2  # bit 1 wants 1 from p = 0.5, bit 2 wants 0 from p
    assert parts["central"] == pytest.approx(bce, rel=1e-6)
    assert parts["quantization"] == pytest.approx((1 + (u - 1) ** 2) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(bce + 1e-4 * parts["quantization"], rel=1e-6)


@pytest.mark.parametrize("name", ["dahp", "dpsh", "hashnet", "dsh", "csq"])
def test_every_deep_loss_has_finite_gradients_and_keeps_signs(name):
    torch.manual_seed(0)
    loss_fn = get_method(name).loss(LossSettings(16))
    raw = (5 * torch.randn(6, 16)).requires_grad_()
    codes = loss_fn.activate(raw, 100)
    assert torch.equal(torch.sign(codes), torch.sign(raw))  # codes are always sign(raw output)
    labels = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    targets = torch.sign(torch.randn(3, 16))[labels.argmax(1)]
    loss, parts = loss_fn(LossInputs(codes, labels, targets, codes.detach()[:4], labels[:4]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    assert all(math.isfinite(value) for value in parts.values())

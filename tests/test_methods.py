"""Each method's loss against a small case computed by hand, and the registry's errors."""

import math

import pytest
import torch

from dahp.errors import DahpError
from dahp.losses import LossInputs
from dahp.methods import LossSettings, get_method, list_methods, parse_methods
from dahp.methods.csq import CSQLoss
from dahp.methods.dagh import DAgHLoss
from dahp.methods.dbdh import DBDHLoss, straight_through_sign
from dahp.methods.dhn import DHNLoss, log_cosh
from dahp.methods.dlbhc import DLBHCLoss
from dahp.methods.dsh import DSHLoss
from dahp.methods.hashnet import HashNetLoss
from dahp.models import HashingNetwork, ModelConfig

LABELS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # images 0 and 1 similar, 2 the odd one out
SIMILAR = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
SMALL_NETWORK = ModelConfig(bits=16, output_stride=4, small_stem=True, hidden_dim=32)
DEEP = ["dahp", "dpsh", "hashnet", "dsh", "csq", "dbdh", "dagh", "dlbhc", "dhn"]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_registry_lists_every_method_in_table_order():
    assert list_methods()[:4] == ["dahp", "dahp-v1", "dahp-v2", "dpsh"]
    assert set(DEEP) | {"lsh", "itq", "sdh"} <= set(list_methods())
    assert [name for name in list_methods() if get_method(name).deep] == ["dahp", "dahp-v1", "dahp-v2", *DEEP[1:]]
    table_iv = parse_methods("table-iv")  # the paper's ten rows, each with its four published figures
    assert [m.title for m in table_iv] == ["DAHP", "DBDH", "DAgH", "DPSH", "HashNet", "DSH", "DLBHC (FastH)", "DHN",
                                           "SDH", "ITQ"]
    assert all(sorted(m.paper_cifar10) == [12, 24, 32, 48] for m in table_iv)


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
    for name in DEEP[1:]:
        with pytest.raises(DahpError, match=f"method '{name}' has no anchor loss"):
            get_method(name).loss(LossSettings(8, anchor_weight=0.05, classes=2, network=SMALL_NETWORK))
    for name in ("dbdh", "dlbhc", "dagh"):
        with pytest.raises(DahpError, match=f"method '{name}' has no quantisation term"):
            get_method(name).loss(LossSettings(8, quantization_weight=0.1, classes=2, network=SMALL_NETWORK))
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


@pytest.mark.parametrize("name", DEEP)
def test_every_deep_loss_has_finite_gradients_and_keeps_signs(name):
    torch.manual_seed(0)
    loss_fn = get_method(name).loss(LossSettings(16, classes=3, network=SMALL_NETWORK))
    raw = (5 * torch.randn(6, 16)).requires_grad_()
    codes = loss_fn.activate(raw, 100)
    assert torch.equal(torch.sign(codes), torch.sign(raw))  # codes are always sign(raw output)
    labels = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    targets = torch.sign(torch.randn(3, 16))[labels.argmax(1)]
    images = torch.randn(6, 3, 8, 8)
    loss, parts = loss_fn(LossInputs(codes, labels, targets, codes.detach()[:4], labels[:4], images=images))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    assert all(math.isfinite(value) for value in parts.values())
    if loss_fn.companion is not None:  # the companion module learns from the same loss
        grads = [p.grad for p in loss_fn.companion.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0


def dpsh_pairwise(theta: list[list[float]]) -> float:
    """Mean over the 3 x 3 pairs of ``softplus(θ) - s θ`` for LABELS."""
    return sum(softplus(t) - s * t for row_t, row_s in zip(theta, SIMILAR) for t, s in zip(row_t, row_s)) / 9


def test_dhn_pairwise_and_log_cosh_quantization_by_hand():
    codes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    loss, parts = DHNLoss()(LossInputs.within_batch(codes, LABELS, codes))
    pairwise = dpsh_pairwise([[0.5, 0.5, 0.0], [0.5, 1.0, -1.0], [0.0, -1.0, 2.0]])
    # |z| - 1 = 0, -1, 0, 0, -1, 1: three elements cost log cosh(1)
    quantization = 3 * math.log(math.cosh(1.0)) / 6
    assert parts["pairwise"] == pytest.approx(pairwise)
    assert parts["quantization"] == pytest.approx(quantization)
    assert loss.item() == pytest.approx(pairwise + 0.1 * quantization)
    big = torch.tensor([0.0, 1.0, -3.0, 200.0], dtype=torch.float64)  # cosh(200) overflows float32; log cosh does not
    torch.testing.assert_close(log_cosh(big), torch.tensor([0.0, math.log(math.cosh(1.0)), math.log(math.cosh(3.0)),
                                                             200 - math.log(2.0)], dtype=torch.float64))


def test_dbdh_discrete_codes_straight_through_and_balance_by_hand():
    loss_fn = DBDHLoss()
    raw = torch.tensor([[0.5, -2.0], [3.0, 1.0], [-1.0, -0.1]], requires_grad=True)
    codes = loss_fn.activate(raw, 0)
    assert codes.tolist() == [[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]  # discrete in the forward pass
    loss, parts = loss_fn(LossInputs.within_batch(codes, LABELS, codes))
    pairwise = dpsh_pairwise([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.0, -1.0, 1.0]])
    balance = ((1 / 3) ** 2 + (-1 / 3) ** 2) / 2  # bit means (1 + 1 - 1) / 3 and (-1 + 1 - 1) / 3
    assert parts["pairwise"] == pytest.approx(pairwise)
    assert parts["balance"] == pytest.approx(balance)
    assert loss.item() == pytest.approx(pairwise + 0.1 * balance)
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    raw.grad = None
    (straight_through_sign(raw) * weights).sum().backward()
    assert torch.equal(raw.grad, weights)  # the gradient passes sign() unchanged


def test_dlbhc_sigmoid_latent_classification_by_hand():
    classifier = torch.nn.Linear(2, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(2))
        classifier.bias.zero_()
    loss_fn = DLBHCLoss(classifier)
    raw = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    codes = loss_fn.activate(raw, 0)
    torch.testing.assert_close(codes, torch.tanh(raw / 2))  # 2σ(f) - 1: threshold 0.5 on σ is sign(f)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # one label; two labels share the target
    loss, parts = loss_fn(LossInputs.within_batch(codes, labels, codes))
    logits = [0.5, 1 / (1 + math.exp(-2.0))]  # the latent layer σ(f), classified by the identity
    log_norm = math.log(math.exp(logits[0]) + math.exp(logits[1]))
    single = log_norm - logits[0]
    double = log_norm - (logits[0] + logits[1]) / 2
    assert parts["classification"] == pytest.approx((single + double) / 2, rel=1e-6)
    assert loss_fn.companion is classifier
    with pytest.raises(DahpError, match="number of classes"):
        get_method("dlbhc").loss(LossSettings(8))


class FixedStream(torch.nn.Module):
    """Stands in for DAgH's guiding stream with known outputs."""

    def __init__(self, guide: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.guide, self.mask = guide, mask

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.guide, self.mask


def test_dagh_semantic_attention_and_guidance_by_hand():
    guide = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2).expand(3, 1, 2, 2)  # mean 0.25
    loss_fn = DAgHLoss(FixedStream(guide, mask))
    codes = torch.tensor([[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]])
    loss, parts = loss_fn(LossInputs(codes, LABELS, codes, codes, LABELS, images=torch.zeros(3, 3, 2, 2)))
    semantic = dpsh_pairwise([[0.5, 0.5, 0.0], [0.5, 1.0, -1.0], [0.0, -1.0, 2.0]])
    # guided codes sign(g) = (1, 0), (1, 1), (0, -1): squared differences .25 + .25 + 0 + 0 + 0 + 1 over 6
    guidance = 1.5 / 6
    assert parts["semantic"] == pytest.approx(semantic)
    assert parts["quantization"] == pytest.approx(1 / 6)
    assert parts["attention"] == pytest.approx(0.25)
    assert parts["guidance"] == pytest.approx(guidance)
    assert loss.item() == pytest.approx(semantic + 0.1 / 6 + 0.1 * 0.25 + guidance)
    with pytest.raises(DahpError, match="needs the batch's images"):
        loss_fn(LossInputs.within_batch(codes, LABELS, codes))


def test_dagh_guiding_stream_starts_from_the_networks_backbone():
    torch.manual_seed(0)
    network = HashingNetwork(SMALL_NETWORK)
    loss_fn = get_method("dagh").loss(LossSettings(16, network=SMALL_NETWORK))
    first = loss_fn.companion.hashing
    assert not torch.equal(first.backbone.conv1.weight, network.backbone.conv1.weight)
    loss_fn.attach(network)
    for name, value in network.backbone.state_dict().items():
        assert torch.equal(first.backbone.state_dict()[name], value), name
    assert not torch.equal(first.hash_layer.weight, network.hash_layer.weight)  # heads stay independent
    mask = loss_fn.companion.attention(torch.randn(2, 3, 8, 8))
    assert mask.shape == (2, 1, 8, 8) and ((mask > 0) & (mask < 1)).all()
    with pytest.raises(DahpError, match="network's configuration"):
        get_method("dagh").loss(LossSettings(16))

import math

import pytest
import torch

from dahp.losses import DAHPLoss, LossInputs, anchor_mse, anchor_targets, pairwise_nll, quantization_error, similarity


def _naive_pairwise(codes_a, codes_b, similar):
    total = 0.0
    for i in range(len(codes_a)):
        for j in range(len(codes_b)):
            theta = 0.5 * float(codes_a[i] @ codes_b[j])
            p_similar = 1.0 / (1.0 + math.exp(-theta))
            total += -math.log(p_similar if similar[i, j] else 1.0 - p_similar)
    return total / (len(codes_a) * len(codes_b))


def test_similarity_is_multi_label_aware():
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]]).float()
    assert torch.equal(similarity(labels, labels), expected)


def test_pairwise_nll_equals_naive_negative_log_likelihood():
    torch.manual_seed(0)
    codes, memory = torch.randn(5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    similar = (torch.rand(5, 7) > 0.5).double()
    assert pairwise_nll(codes, memory, similar).item() == pytest.approx(_naive_pairwise(codes, memory, similar))


def test_pairwise_nll_is_stable_for_large_codes():
    codes = torch.full((2, 64), 30.0)
    codes[1] *= -1  # theta = -28,800 and +28,800: exp() would overflow
    value = pairwise_nll(codes, codes, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(28800 / 4)  # only the similar, opposite pair costs |theta|


def test_gradient_matches_paper_equation_13():
    torch.manual_seed(1)
    codes = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.eye(3)[torch.tensor([0, 1, 0, 2])]
    anchors = torch.sign(torch.randn(3, 6, dtype=torch.float64))
    targets = anchor_targets(labels.double(), anchors, torch.ones(6, dtype=torch.float64))
    weight = 0.05
    loss, _ = DAHPLoss(anchor_weight=weight)(LossInputs.within_batch(codes, labels, targets))
    loss.backward()
    b, s = codes.detach(), similarity(labels, labels).double()
    a = torch.sigmoid(0.5 * b @ b.T)
    n = len(b)
    # eq. 13 for the sum over ordered pairs, scaled by our means (pairs: 1/n², images: 1/n)
    expected = (0.5 * (a - s) @ b + 0.5 * (a - s).T @ b) / n**2 + 2 * weight * (b - targets) / n
    torch.testing.assert_close(codes.grad, expected)


@pytest.mark.parametrize("with_memory", [False, True])
def test_loss_passes_gradcheck(with_memory):
    torch.manual_seed(2)
    codes = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 1]]).double()
    targets = torch.sign(torch.randn(4, 5, dtype=torch.float64))
    memory = (torch.randn(6, 5, dtype=torch.float64), torch.tensor([[1, 0], [0, 1]] * 3).double())
    loss = DAHPLoss(anchor_weight=0.05, quantization_weight=0.1)

    def objective(x):
        paired = memory if with_memory else (x, labels)
        return loss(LossInputs(x, labels, targets, *paired))[0]

    assert torch.autograd.gradcheck(objective, (codes,))


def test_anchor_targets_single_and_multi_label_with_seeded_ties():
    anchors = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, 1.0]])
    tie_breaker = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    labels = torch.tensor([[0, 1, 0], [1, 1, 0], [1, 1, 1]]).float()
    targets = anchor_targets(labels, anchors, tie_breaker)
    assert torch.equal(targets[0], anchors[1])
    assert torch.equal(targets[1], torch.tensor([1.0, 1.0, 1.0, -1.0]))  # sums (2, 0, 0, -2): ties -> breaker
    assert torch.equal(targets[2], torch.tensor([1.0, -1.0, -1.0, -1.0]))  # sums (1, -1, -1, -1)


def test_anchor_and_quantization_terms():
    codes = torch.tensor([[0.5, -2.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert anchor_mse(codes, targets).item() == pytest.approx(((0.25 + 1.0) + 4.0) / 2)
    assert quantization_error(codes).item() == pytest.approx((0.25 + 1.0 + 0 + 0) / 4)


def test_anchor_weight_zero_drops_the_anchor_term():
    codes = torch.randn(3, 4)
    labels = torch.eye(3)
    inputs = LossInputs.within_batch(codes, labels, torch.ones(3, 4))
    loss_on, parts_on = DAHPLoss(0.05)(inputs)
    loss_off, parts_off = DAHPLoss(0.0)(inputs)
    assert "anchor" in parts_on and "anchor" not in parts_off
    assert loss_on.item() == pytest.approx(loss_off.item() + 0.05 * parts_on["anchor"])

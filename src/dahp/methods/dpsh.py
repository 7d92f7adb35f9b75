"""DPSH — Deep Pairwise-Supervised Hashing (Li, Wang & Kang, IJCAI 2016).

Loss: the pairwise negative log-likelihood with ``theta_ij = ½ u_iᵀu_j`` plus
``eta * ||u_i - sign(u_i)||²``. DPSH sums both over pairs / images with eta = 10; we
average (pairs over ``n x N``, quantisation over images and bits), for which the
equivalent weight is ``eta * c / N`` ≈ 0.1 at 48 bits and 5,000 training images — the
value of the widely used PyTorch re-implementation, kept for every setting.

Network: DPSH used CNN-F (an AlexNet-family network) with ImageNet weights; here its
default backbone is torchvision's AlexNet, which is the Table III "DPSH" row. Pairs are
formed against a memory of the whole training set's codes, as in DPSH's own code.
"""

from __future__ import annotations

from .dahp import dpsh_loss
from .registry import Method, register_method

register_method(Method(
    "dpsh", "DPSH", "Li, Wang & Kang. Feature learning based deep supervised hashing with pairwise labels. IJCAI 2016",
    build_loss=dpsh_loss("dpsh"), backbone="alexnet",
    paper_cifar10={12: 0.7292, 24: 0.7320, 32: 0.7385, 48: 0.7455},
))

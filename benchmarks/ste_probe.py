"""Does DBDH's straight-through estimator optimise its own objective? A synthetic probe.

DBDH scores discrete codes ``b = sign(u)`` with the DPSH pairwise likelihood plus a bit
balance term and passes the gradient of ``b`` to ``u`` unchanged. On CIFAR-10 from
scratch its training loss rises above random codes' level while the relaxed methods'
falls (README, benchmark table). Our reading: while codes are uninformative the
likelihood pulls every code towards 0, and through the estimator that pull shrinks the
outputs' scale until each bit's offset sets its sign for every image. This probe
separates the estimator from the images: a two-layer MLP with the budgets'
batch-normalised hash outputs learns 48-bit codes for Gaussian clusters (10 classes in
256 dimensions), against a memory of training codes like the benchmark's runs, with

* ``dbdh``: the shipped loss, straight-through sign;
* ``relaxed``: the same loss on ``clamp(u, -1, 1)``, a continuous relaxation.

Same data, network, initialisation, batches and optimiser; only the activation differs.
It reports the smallest BatchNorm scale |γ| of the outputs during training (where the
pull goes) and, on the training set in eval mode, the pairwise loss of the codes, the
mean code agreement (``bᵀb' / bits``) of same-class and of different-class pairs (ten
balanced classes allow about -0.11 for the latter), the bit balance, and the mAP of
held-out points against the training set.

    python benchmarks/ste_probe.py [--steps 1500] [--lr 0.04,0.01] [--separation 0.12]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dahp.codes import pack_codes
from dahp.losses import LossInputs, pairwise_nll, similarity
from dahp.methods.dbdh import DBDHLoss, bit_balance
from dahp.metrics import mean_average_precision

BITS, CLASSES, FEATURES, BATCH = 48, 10, 256, 128


@dataclass(frozen=True)
class RelaxedDBDHLoss(DBDHLoss):
    """DBDH's objective on ``clamp(u, -1, 1)``: continuous where the codes are uncertain."""

    def activate(self, outputs: Tensor, step: int) -> Tensor:
        return outputs.clamp(-1.0, 1.0)


def clusters(n: int, separation: float, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points around ten random centres (same centres for every seed's draw)."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, CLASSES, (n,), generator=generator)
    points = separation * centres[classes] + torch.randn(n, FEATURES, generator=generator)
    return points, nn.functional.one_hot(classes, CLASSES).float()


def train(loss: DBDHLoss, points: Tensor, labels: Tensor, lr: float, steps: int, seed: int) -> tuple[nn.Module, float]:
    """The trained network and the smallest mean BatchNorm scale |γ| of its outputs during training."""
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, BITS), nn.BatchNorm1d(BITS))
    optimiser = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9)
    memory = torch.zeros(len(points), BITS)
    batches = torch.Generator().manual_seed(seed)
    smallest_scale = 1.0
    for step in range(steps):
        batch = torch.randint(0, len(points), (BATCH,), generator=batches)
        codes = loss.activate(network(points[batch]), step)
        memory[batch] = codes.detach()
        value, _ = loss(LossInputs(codes, labels[batch], torch.zeros_like(codes), memory, labels, step))
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        smallest_scale = min(smallest_scale, float(network[-1].weight.detach().abs().mean()))
    return network.eval(), smallest_scale


@torch.inference_mode()
def score(network: nn.Module, train_set: tuple[Tensor, Tensor], held_out: tuple[Tensor, Tensor]) -> dict[str, float]:
    codes = torch.sign(network(train_set[0]))
    same = similarity(train_set[1], train_set[1]).bool()
    agreement = codes @ codes.T / BITS
    query = torch.sign(network(held_out[0]))
    return {
        "pairwise": float(pairwise_nll(codes, codes, same.float())),
        "same": float(agreement[same].mean()),
        "different": float(agreement[~same].mean()),
        "balance": float(bit_balance(codes)),
        "map": mean_average_precision(pack_codes(query.numpy()), pack_codes(codes.numpy()),
                                      held_out[1].numpy().astype(np.uint8), train_set[1].numpy().astype(np.uint8),
                                      BITS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", default="0.04,0.01", help="comma-separated SGD learning rates")
    parser.add_argument("--separation", type=float, default=0.12, help="scale of the class centres (smaller: harder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # threaded float sums would change the collapse's (chaotic) trajectory run to run
    train_set = clusters(2000, args.separation, seed=1)
    held_out = clusters(500, args.separation, seed=2)
    print(f"{BITS} bits, {CLASSES} classes, separation {args.separation}, {args.steps} steps of {BATCH}")
    print("| lr | activation | smallest scale | pairwise loss | same-class agreement | different-class agreement "
          "| bit balance | mAP |")
    print("|---|---|---|---|---|---|---|---|")
    for lr in (float(value) for value in args.lr.split(",")):
        results = {}
        for name, loss in (("dbdh", DBDHLoss()), ("relaxed", RelaxedDBDHLoss())):
            network, smallest_scale = train(loss, *train_set, lr, args.steps, args.seed)
            results[name] = r = score(network, train_set, held_out)
            print(f"| {lr} | {name} | {smallest_scale:.3f} | {r['pairwise']:.3f} | {r['same']:.3f} "
                  f"| {r['different']:.3f} | {r['balance']:.3f} | {r['map']:.4f} |")
        print(f"| {lr} | dbdh / relaxed mAP | | | | | | {results['dbdh']['map'] / results['relaxed']['map']:.3f} |")


if __name__ == "__main__":
    main()

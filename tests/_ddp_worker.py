"""Run under torchrun (2 ranks, gloo on CPU) by tests/test_train.py::test_ddp_*.

Trains two tiny models with elastigraph.train.train and writes each rank's result to
``<out>/rank<r>.pt``: one without BatchNorm (DDP must equal single-process training on
the same global batches) and one with BatchNorm and a mask (ranks must agree exactly).
"""

import sys

import torch
from torch import nn

from elastigraph.train import TrainConfig, synthetic, train


def tiny_net(bn: bool) -> nn.Module:
    """A 2-conv net on 1x8x8 inputs; deterministic init under the caller's seed."""
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def data():
    return synthetic(64, (1, 8, 8), 3, seed=0), synthetic(30, (1, 8, 8), 3, seed=0, split="test")


def config() -> TrainConfig:
    return TrainConfig(steps=6, batch_size=16, lr=0.05, weight_decay=1e-3, eval_every=3, augment=True, seed=3)


def mask_for(model: nn.Module) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"0.weight": torch.rand(model[0].weight.shape, generator=g) > 0.5}


def run(bn: bool):
    torch.manual_seed(0)
    model = tiny_net(bn)
    tr, te = data()
    return train(model, tr, te, config(), mask=mask_for(model) if bn else None, rewind_step=2)


if __name__ == "__main__":
    import torch.distributed as dist

    out = sys.argv[1]
    plain, with_bn = run(False), run(True)
    rank = dist.get_rank()
    torch.save({"plain": {"final": plain.final_state, "rewind": plain.rewind_state, "history": plain.history,
                          "device": plain.device},
                "bn": {"final": with_bn.final_state, "history": with_bn.history}}, f"{out}/rank{rank}.pt")
    dist.barrier()  # nobody tears the group down while the other rank still talks
    dist.destroy_process_group()

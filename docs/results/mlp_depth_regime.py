"""Does depth pay for narrow MLPs on Fashion-MNIST (issue 19, section 1, a second family)?

Dense MLPs of width 32, 64 and 100 with 2, 4 and 8 hidden layers, trained at one pre-set
schedule (the MLP study's: SGD lr 0.1, no momentum, batch 128, constant learning rate,
11 epochs; recipes/fmnist_mlp_stretch.yaml), 5 seeds each; the protocol and the rule that
names a regime are in depth_search.py (validation decides, test is reported).

    OMP_NUM_THREADS=1 python docs/results/mlp_depth_regime.py > docs/results/mlp_depth_regime.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depth_search import Search, main  # noqa: E402


def build(width: int, depth: int):
    from elastigraph.models import create

    return create("mlp", depth=depth, width=width, num_classes=10, in_chans=1)


SEARCH = Search(
    command="OMP_NUM_THREADS=1 python docs/results/mlp_depth_regime.py",
    build=build, groups=(32, 64, 100), depths=(2, 4, 8), pairs=((4, 2), (8, 4), (8, 2)), chosen_pair=(4, 2),
    train=dict(epochs=11, batch_size=128, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", augment=False),
)

if __name__ == "__main__":
    main(SEARCH)

"""Does depth pay for narrow VGGs on Fashion-MNIST (issue 19, section 1, a convolutional family)?

CIFAR-VGG (models/cifar_vgg.py: 3x3 conv-BN-ReLU stages, 2x2 max-pool between stages,
global average pooling, one linear head) cut to three stages of 8, 16 and 32 channels,
with 1, 2 or 4 convolutions per stage (3, 6 or 12 conv layers), dense, 5 seeds, on the
full Fashion-MNIST. One schedule fixed before the run (the vision recipes' SGD: lr 0.05,
momentum 0.9, weight decay 1e-4, batch 128, step decay at 50% and 75%, no augmentation)
at 5 epochs, the most the session's budget allowed for a study to follow (the 12-conv
network measured 55-85 s an epoch on one thread of this machine). The protocol and the
rule that names a regime are in depth_search.py (validation decides, test is reported);
the pair a study uses is 4 vs 2 convolutions per stage, because a stage needs at least
one width-preserving convolution (its second) to be stretched or squeezed.

    OMP_NUM_THREADS=1 python docs/results/vgg_depth_regime.py > docs/results/vgg_depth_regime.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depth_search import Search, main  # noqa: E402

WIDTHS = (8, 16, 32)


def build(width: int, depth: int):
    from elastigraph.models import create

    widths = [width * 2**i for i in range(len(WIDTHS))]
    return create("cifar_vgg_11", depths=[depth] * len(widths), widths=widths, num_classes=10, in_chans=1)


SEARCH = Search(
    command="OMP_NUM_THREADS=1 python docs/results/vgg_depth_regime.py",
    build=build, groups=(WIDTHS[0],), depths=(1, 2, 4), pairs=((2, 1), (4, 2), (4, 1)), chosen_pair=(4, 2),
    train=dict(epochs=5, batch_size=128, lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="step",
               milestones=(0.5, 0.75), augment=False),
)

if __name__ == "__main__":
    main(SEARCH, extra={"model": "cifar_vgg_11?depths=[d,d,d]&widths=[8,16,32]"})

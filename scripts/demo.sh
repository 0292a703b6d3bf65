#!/usr/bin/env bash
# The README's main job: one real E-LTH experiment on Fashion-MNIST, end to end, in
# about 2-3 minutes on a 2-core CPU: a ResNet-20 ticket found by IMP (one 20% round,
# rewound to step 12) is stretched to ResNet-32, retrained, and compared with a random
# mask at the same sparsity and the dense ResNet-32; then the report (tables, CSV, PNGs).
# Usage: scripts/demo.sh [OUT_DIR]   (default runs/demo; a rerun reuses finished steps)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ensure_fashion_mnist
OUT=${1:-runs/demo}
elastigraph run recipes/cifar_resnet_stretch.yaml --smoke --out "$OUT" \
  --set dataset.train_limit=4000 --set dataset.test_limit=500 \
  --set train.steps=120 --set train.batch_size=64 --set train.lr=0.05 --set prune.rewind_step=12 \
  --set 'targets=[{model: cifar_resnet_32}]' --set 'baselines=[random, dense]'
elastigraph report "$OUT"

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and make it the active one.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again (it only installs
# what is missing or when pyproject.toml changed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ELASTIGRAPH_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
STAMP=$VENV/.elastigraph-installed

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch, torchvision" 2>/dev/null; then
    # A machine that already has torch (a GPU box with its CUDA build): reuse it.
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
export PATH="$VENV/bin:$PATH"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    # Unpinned torch would pull the newest multi-GB build; this pair is the one the
    # project's machines serve locally. Override with ELASTIGRAPH_TORCH="torch torchvision".
    python -m pip install -q ${ELASTIGRAPH_TORCH:-torch==2.14.1 torchvision==0.29.1}
  fi
  python -m pip install -q -e "$ROOT[dev]"
  # the Ray executor's tests run on a local Ray (tests/test_ray.py); where no ray wheel
  # exists for this Python/platform they are skipped, the rest of the suite is not
  python -m pip install -q -e "$ROOT[ray]" ||
    echo "elastigraph: could not install the ray extra; tests of --executor ray will be skipped" >&2
  touch "$STAMP"
fi

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
ensure_fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  [ -f "$dir/train-images-idx3-ubyte.gz" ] && return 0
  [ -n "${FASHION_MNIST_ROOT:-}" ] && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "elastigraph: installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "elastigraph: Fashion-MNIST not found at $dir; install it with" >&2
    echo "  sudo apt-get install dataset-fashion-mnist   (or set FASHION_MNIST_ROOT)" >&2
    return 1
  fi
}

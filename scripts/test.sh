#!/usr/bin/env bash
# Run the full test suite (creates/reuses .venv first). Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_fashion_mnist || echo "elastigraph: tests that need Fashion-MNIST will be skipped" >&2
cd "$ROOT"
exec python -m pytest -q "$@"

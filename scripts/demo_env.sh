# Shared by the demo scripts: the repository root, the interpreter (the project's .venv when present),
# one intra-op thread (the DataLoader worker takes the other core of a 2-core machine; results depend on
# it, so it stays fixed) and the toy dataset's folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
DATA_DIR="${DATA_DIR:-$ROOT/data/toy}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

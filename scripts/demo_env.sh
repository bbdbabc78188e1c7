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

# make_toy_data: the toy dataset in DATA_DIR, generated when absent, completed when partial, checked against its
# parameters (NUM_TRAIN, NUM_TEST, TOY_SEED, TOY_SECONDS); a folder made with other values stops the demo with one
# line naming DATA_DIR.
make_toy_data() {
  "$PYTHON" -m preprocess.make_toy_dataset --output_dir "$DATA_DIR" --seed "${TOY_SEED:-0}" \
    --num_train "${NUM_TRAIN:-600}" --num_test "${NUM_TEST:-100}" --seconds "${TOY_SECONDS:-2.4}" \
    --other_folder_hint "set DATA_DIR=another/folder"
}

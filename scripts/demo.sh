#!/usr/bin/env bash
# The one-command demo (docs/demo.md): generate the toy dataset when absent, train a tiny CLIP from
# scratch on it through the ordinary MSR-VTT path on CPU, evaluate, print the metrics table.
#
#   bash scripts/demo.sh                                  # seqTransf, configs/demo.yaml
#   SIM_HEADER=meanP bash scripts/demo.sh                 # the order-blind baseline
#   bash scripts/demo.sh --epochs 2 --lr 5e-4             # any flag of main_task_retrieval.py wins
#
# Environment (all optional):
#   DATA_DIR     toy dataset folder                    (default: <repo>/data/toy)
#   OUTPUT_DIR   logs, metrics.jsonl, checkpoints       (default: <repo>/outputs/demo)
#   SIM_HEADER   head: meanP, seqLSTM, seqTransf, ...   (default: configs/demo.yaml's, seqTransf)
#   NUM_TRAIN, NUM_TEST, TOY_SEED, TOY_SECONDS
#                toy dataset size, seed and clip length (defaults 600, 100, 0, 2.4); a folder made
#                with other values is refused, so pick another DATA_DIR when changing them
#   PYTHON       interpreter (default: <repo>/.venv/bin/python if present, else python)
#   OMP_NUM_THREADS  intra-op threads of the training process (default 1: the DataLoader worker
#                takes the other core of a 2-core machine; results depend on it, so keep it fixed)
source "$(dirname "${BASH_SOURCE[0]}")/demo_env.sh"
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/outputs/demo}"
started=$(date +%s)

# 1. The toy dataset: generated when absent, completed when partial, checked against its parameters.
# A folder made with other values stops the demo with one line naming DATA_DIR.
make_toy_data

# 2. Train and evaluate (configs/demo.yaml; SIM_HEADER and the command line override it).
mkdir -p "$OUTPUT_DIR"
rm -f "$OUTPUT_DIR/metrics.jsonl"  # this run's numbers only
header=()
if [ -n "${SIM_HEADER:-}" ]; then header=(--sim_header "$SIM_HEADER"); fi
"$PYTHON" "$ROOT/main_task_retrieval.py" --config "$ROOT/configs/demo.yaml" \
  --data_path "$DATA_DIR" --features_path "$DATA_DIR/videos" --output_dir "$OUTPUT_DIR" \
  ${header[@]+"${header[@]}"} "$@"

# 3. The table of the final test evaluation, with the temporal-order subset beside the overall numbers.
"$PYTHON" - "$OUTPUT_DIR/metrics.jsonl" "$(( $(date +%s) - started ))" <<'EOF'
import json
import sys

from modules.metrics import format_table

path, seconds = sys.argv[1], int(sys.argv[2])
records = [json.loads(line) for line in open(path)]
test = [r for r in records if r["split"] == "test"][-1]
m = test["metrics"]
videos = int(m["num_videos"])
chance = 100.0 / videos
print()
print(f"UniVTR demo, {test.get('reported_weights', 'test')}: {int(m['num_captions'])} test captions x {videos} videos "
      f"(chance R@1 = {chance:.2f}%)")
print(format_table(m))
line = f"T2V R@1 {m['t2v/R1']:.2f}% overall ({m['t2v/R1'] / chance:.1f}x chance)"
if "temporal/t2v/R1" in m:
    line += (f", {m['temporal/t2v/R1']:.2f}% on the {int(m['temporal/num_captions'])} temporal-order captions "
             "(temporal_pairs.json)")
print(line)
print(f"metrics: {path}; wall time {seconds // 60} min {seconds % 60} s")
EOF

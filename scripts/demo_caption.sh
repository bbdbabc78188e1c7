#!/usr/bin/env bash
# The captioning demo: generate the toy dataset when absent, score an untrained tiny model, train it on
# CPU (configs/demo_caption.yaml), score it again, print both side by side with a few captions.
#
#   bash scripts/demo_caption.sh
#   bash scripts/demo_caption.sh --epochs 5 --beam_size 3     # any flag of main_task_caption.py wins
#
# Environment (all optional): DATA_DIR (default <repo>/data/toy), OUTPUT_DIR (default
# <repo>/outputs/demo_caption), NUM_TRAIN, NUM_TEST, TOY_SEED, TOY_SECONDS, PYTHON, OMP_NUM_THREADS (1).
source "$(dirname "${BASH_SOURCE[0]}")/demo_env.sh"
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/outputs/demo_caption}"
started=$(date +%s)

make_toy_data

common=(--config "$ROOT/configs/demo_caption.yaml" --data_path "$DATA_DIR" --features_path "$DATA_DIR/videos")
rm -rf "$OUTPUT_DIR/untrained" "$OUTPUT_DIR/trained"
# 1. The same model before any training step (the seed fixes its initial weights).
"$PYTHON" "$ROOT/main_task_caption.py" "${common[@]}" --do_eval --output_dir "$OUTPUT_DIR/untrained" "$@" 2>&1 | tail -3
# 2. Trained, then scored on the test split. Its output is not filtered: the progress bar and the
# per-epoch lines show how far the training is (several minutes on 2 cores).
echo "training (configs/demo_caption.yaml; log: $OUTPUT_DIR/trained/log.txt)"
"$PYTHON" "$ROOT/main_task_caption.py" "${common[@]}" --do_train --output_dir "$OUTPUT_DIR/trained" "$@"

"$PYTHON" - "$OUTPUT_DIR" "$DATA_DIR" "$(( $(date +%s) - started ))" <<'PY'
import json
import sys
from pathlib import Path

out, data, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
runs = {name: [json.loads(line) for line in open(out / name / "metrics.jsonl")][-1]["metrics"]
        for name in ("untrained", "trained")}
names = [k for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in runs["trained"]]
print(f"\nUniVTR captioning demo: toy test split, {int(runs['trained']['num_videos'])} videos, "
      f"{int(runs['trained']['num_references'])} reference captions")
print(f"{'model':<10}" + "".join(f"{k:>9}" for k in names))
for name, metrics in runs.items():
    print(f"{name:<10}" + "".join(f"{metrics[k]:>9.2f}" for k in names))
references = {}
for s in json.load(open(data / "MSRVTT_data.json"))["sentences"]:
    references.setdefault(s["video_id"], []).append(s["caption"])
for row in json.load(open(out / "trained" / "captions_test.json"))[:3]:
    print(f"  {row['video_id']}: \"{row['caption']}\"  (a reference: \"{references[row['video_id']][0]}\")")
print(f"captions: {out / 'trained' / 'captions_test.json'}; wall time {seconds // 60} min {seconds % 60} s")
PY

#!/usr/bin/env bash
# Pre-training demo (docs/pretraining.md): a method (HMMC by default, METHOD=simvtp for SimVTP) pre-trains
# a tiny model from random weights on a second toy dataset (seed 1) written as WebDataset shards, is
# evaluated zero-shot on the demo test set (seed 0) after every epoch, then fine-tuned on the demo's
# training set, beside the same fine-tuning from random weights; CPU, about 4 (HMMC) or 3.5 (SimVTP) minutes
# on an idle 2-core machine, several times that when other jobs share its cores (docs/demo.md, Timings).
#
#   bash scripts/demo_pretrain.sh
#   METHOD=simvtp bash scripts/demo_pretrain.sh                  # configs/demo_pretrain_simvtp.yaml
#   FINETUNE_EPOCHS=2 bash scripts/demo_pretrain.sh --epochs 6     # flags go to the pre-training run
#
# Environment (all optional): METHOD (hmmc or simvtp), DATA_DIR (demo dataset, default <repo>/data/toy),
# CORPUS_DIR (pre-training toy dataset, default <repo>/data/toy_pretrain), OUTPUT_DIR (default
# <repo>/outputs/demo_pretrain[_simvtp]), FINETUNE_EPOCHS (default 3), PYTHON, OMP_NUM_THREADS (default 1).
source "$(dirname "${BASH_SOURCE[0]}")/demo_env.sh"
CORPUS_DIR="${CORPUS_DIR:-$ROOT/data/toy_pretrain}"
METHOD="${METHOD:-hmmc}"
# Per method: the pre-training config and the flags its fine-tuning adds to configs/demo.yaml.
case "$METHOD" in
  hmmc) config=demo_pretrain.yaml; name=HMMC; finetune=(--method hmmc --use_temp --use_frame_fea --top_frames 2) ;;
  simvtp) config=demo_pretrain_simvtp.yaml; name=SimVTP
    finetune=(--method simvtp --max_frames 8 --sample_mode stride --eval_sample_mode stride --frame_stride 3
              --normalize imagenet --weight_decay 0.05) ;;
  *) echo "error: METHOD=$METHOD: the pre-training demo runs hmmc or simvtp" >&2; exit 2 ;;
esac
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/outputs/demo_pretrain$([ "$METHOD" = hmmc ] || echo "_$METHOD")}"
started=$(date +%s)

# 1. The demo dataset (seed 0) and the pre-training corpus (seed 1), generated when absent.
"$PYTHON" -m preprocess.make_toy_dataset --output_dir "$DATA_DIR" --seed 0 --num_train 600 --num_test 100 \
  --other_folder_hint "set DATA_DIR=another/folder"
"$PYTHON" -m preprocess.make_toy_dataset --output_dir "$CORPUS_DIR" --seed 1 --num_train 600 --num_test 100 \
  --other_folder_hint "set CORPUS_DIR=another/folder"
# 2. Its 600 training videos (all captions each) as shards of 50 samples: resumable, reused when complete.
"$PYTHON" "$ROOT/preprocess/make_shards.py" --datatype msrvtt --data_path "$CORPUS_DIR" \
  --features_path "$CORPUS_DIR/videos" --out "$CORPUS_DIR/shards" --samples_per_shard 50
rm -rf "$OUTPUT_DIR"
# 3. Pre-training, zero-shot on the demo test set after every epoch.
"$PYTHON" "$ROOT/main_pretrain.py" --config "$ROOT/configs/$config" \
  --train_shards "$CORPUS_DIR/shards/{000000..000011}.tar" --eval_datatype msrvtt --eval_data_path "$DATA_DIR" \
  --eval_features_path "$DATA_DIR/videos" --output_dir "$OUTPUT_DIR/pretrain" "$@"
# 4. Fine-tuning from the pre-trained checkpoint on the demo training set (configs/demo.yaml, the method's head).
"$PYTHON" "$ROOT/main_task_retrieval.py" --config "$ROOT/configs/demo.yaml" "${finetune[@]}" \
  --init_model "$OUTPUT_DIR/pretrain/model_final.pt" \
  --epochs "${FINETUNE_EPOCHS:-3}" --data_path "$DATA_DIR" --features_path "$DATA_DIR/videos" \
  --output_dir "$OUTPUT_DIR/finetune"
# 5. The control: the same fine-tuning from random weights (what the pre-training is worth).
"$PYTHON" "$ROOT/main_task_retrieval.py" --config "$ROOT/configs/demo.yaml" "${finetune[@]}" \
  --epochs "${FINETUNE_EPOCHS:-3}" --data_path "$DATA_DIR" \
  --features_path "$DATA_DIR/videos" --output_dir "$OUTPUT_DIR/scratch"
# 6. The table: zero-shot after pre-training, fine-tuned, and fine-tuned without pre-training.
"$PYTHON" - "$OUTPUT_DIR" "$(( $(date +%s) - started ))" "$name" <<'PY'
import json
import sys
from pathlib import Path

out, seconds, method = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = []
for name, run in ((f"{method} pre-trained, zero-shot", "pretrain"), (f"{method} pre-trained, fine-tuned", "finetune"),
                  (f"{method} from random weights, same fine-tuning", "scratch")):
    record = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()][-1]
    m = record["metrics"]
    rows.append((name, m["t2v/R1"], m.get("temporal/t2v/R1", float("nan")), int(m["num_videos"])))
print("\n| model | demo T2V R@1 | demo temporal R@1 |\n|---|---|---|")
for name, overall, temporal, videos in rows:
    print(f"| {name} | {overall:.1f} | {temporal:.1f} |")
print(f"\n{rows[0][3]} test videos (chance R@1 {100 / rows[0][3]:.1f}%); wall time {seconds // 60} min {seconds % 60} s; "
      f"runs in {out}")
PY

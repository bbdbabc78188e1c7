#!/usr/bin/env bash
# Pre-training demo (docs/pretraining.md): a method (HMMC by default; METHOD=t2vlp or METHOD=simvtp) pre-trains a
# tiny model from random weights on a toy corpus 20 times the size of the fine-tuning set (3000 videos of toy
# seed 1, as WebDataset shards), is evaluated zero-shot on the fine-tuning set's test split (toy seed 0, 100
# videos) after every epoch, then fine-tuned on that set's 150 training videos (1500 pairs), beside the same
# fine-tuning (same flags, epochs and steps) from random weights. The from-scratch arm runs on the second core
# while the first pre-trains. One SEED for every run; the table ends with the spread over seeds 0, 1, 2 that
# benchmarks/bench_pretrain_payoff.py measured (one test set of 100 captions moves R@1 by several points).
#
#   bash scripts/demo_pretrain.sh
#   METHOD=t2vlp bash scripts/demo_pretrain.sh        # stage 1, stage 2 (fusion encoder), retrieval fine-tuning
#   METHOD=simvtp bash scripts/demo_pretrain.sh
#   SEED=1 SCRATCH_LRS="1e-3 2e-3" bash scripts/demo_pretrain.sh --epochs 16   # flags go to the pre-training run
#
# Environment (all optional): METHOD (hmmc, t2vlp, simvtp), SEED (every run, default 0), DATA_DIR (fine-tuning
# and test set, default <repo>/data/toy_small), CORPUS_DIR (default <repo>/data/toy_pretrain_3000),
# FINETUNE_VIDEOS (150), CORPUS_VIDEOS (3000), NUM_TEST (100), TOY_SECONDS (2.4), FINETUNE_EPOCHS (6),
# STAGE2_EPOCHS (T2VLP, 2), SCRATCH_LRS (learning rates of the from-scratch arms, default the fine-tuning's
# 1e-3), OUTPUT_DIR (default <repo>/outputs/demo_pretrain_<method>), PYTHON, OMP_NUM_THREADS (default 1).
DATA_DIR="${DATA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/data/toy_small}"
source "$(dirname "${BASH_SOURCE[0]}")/demo_env.sh"
CORPUS_DIR="${CORPUS_DIR:-$ROOT/data/toy_pretrain_3000}"
SEED="${SEED:-0}"
FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-6}"
METHOD="${METHOD:-hmmc}"
# Per method: the pre-training config and the flags its fine-tuning adds to configs/demo.yaml.
case "$METHOD" in
  hmmc) config=demo_pretrain.yaml; name=HMMC; finetune=(--method hmmc --use_temp --use_frame_fea --top_frames 2) ;;
  t2vlp) config=demo_pretrain_t2vlp.yaml; name=T2VLP
    finetune=(--method t2vlp --t2vlp_stage retrieval --joint_layers 1 --num_centers 4 --fusion_layers 2
              --tube_lr 1e-3) ;;
  simvtp) config=demo_pretrain_simvtp.yaml; name=SimVTP
    finetune=(--method simvtp --sample_mode stride --eval_sample_mode stride --frame_stride 3 --normalize imagenet
              --weight_decay 0.05) ;;
  *) echo "error: METHOD=$METHOD: the pre-training demo runs hmmc, t2vlp or simvtp" >&2; exit 2 ;;
esac
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/outputs/demo_pretrain_$METHOD}"
started=$(date +%s)

# 1. The fine-tuning set (seed 0) and the pre-training corpus (seed 1), generated when absent.
"$PYTHON" -m preprocess.make_toy_dataset --output_dir "$DATA_DIR" --seed 0 --num_train "${FINETUNE_VIDEOS:-150}" \
  --num_test "${NUM_TEST:-100}" --seconds "${TOY_SECONDS:-2.4}" --other_folder_hint "set DATA_DIR=another/folder"
"$PYTHON" -m preprocess.make_toy_dataset --output_dir "$CORPUS_DIR" --seed 1 --num_train "${CORPUS_VIDEOS:-3000}" \
  --num_test 100 --seconds "${TOY_SECONDS:-2.4}" --other_folder_hint "set CORPUS_DIR=another/folder"
# 2. The corpus's training videos (all captions each; one drawn per epoch) as shards of 250: reused when complete.
"$PYTHON" "$ROOT/preprocess/make_shards.py" --datatype msrvtt --data_path "$CORPUS_DIR" \
  --features_path "$CORPUS_DIR/videos" --out "$CORPUS_DIR/shards" --samples_per_shard 250
rm -rf "$OUTPUT_DIR"
mkdir -p "$OUTPUT_DIR"
finetune_run() {  # finetune_run OUTPUT_NAME [flags]: configs/demo.yaml and the method's head on the fine-tuning set
  local name=$1
  shift
  "$PYTHON" "$ROOT/main_task_retrieval.py" --config "$ROOT/configs/demo.yaml" "${finetune[@]}" --seed "$SEED" \
    --epochs "$FINETUNE_EPOCHS" --data_path "$DATA_DIR" --features_path "$DATA_DIR/videos" \
    --output_dir "$OUTPUT_DIR/$name" "$@"
}
# 3. The control on the second core: the same fine-tuning from random weights, one run per SCRATCH_LRS entry.
(for lr in ${SCRATCH_LRS:-1e-3}; do
   finetune_run "scratch_lr$lr" --lr "$lr" > "$OUTPUT_DIR/scratch_lr$lr.console.txt" 2>&1 \
     || { echo "error: the from-scratch run at lr $lr failed: $OUTPUT_DIR/scratch_lr$lr.console.txt" >&2; exit 1; }
 done) &
scratch=$!
trap 'pkill -P $scratch 2>/dev/null; kill $scratch 2>/dev/null' EXIT
echo "from-scratch fine-tuning runs in the background (learning rates ${SCRATCH_LRS:-1e-3}; output in $OUTPUT_DIR/scratch_lr*)"
# 4. Pre-training, zero-shot on the test split after every epoch (T2VLP: stage 1, then stage 2 trains the fusion
# encoder on the frozen stage-1 model).
pretrain=("$PYTHON" "$ROOT/main_pretrain.py" --config "$ROOT/configs/$config" --train_shards "$CORPUS_DIR/shards"
          --seed "$SEED" --eval_datatype msrvtt --eval_data_path "$DATA_DIR" --eval_features_path "$DATA_DIR/videos")
"${pretrain[@]}" --output_dir "$OUTPUT_DIR/pretrain" "$@"
pretrained="$OUTPUT_DIR/pretrain/model_final.pt"
if [ "$METHOD" = t2vlp ]; then
  "${pretrain[@]}" "$@" --t2vlp_stage 2 --freeze_backbone --epochs "${STAGE2_EPOCHS:-2}" --init_model "$pretrained" \
    --output_dir "$OUTPUT_DIR/pretrain_stage2" --no_eval_each_epoch
  pretrained="$OUTPUT_DIR/pretrain_stage2/model_final.pt"
fi
# 5. Fine-tuning from the pre-trained checkpoint, at the fine-tuning's learning rate.
finetune_run finetune --init_model "$pretrained"
wait "$scratch"
trap - EXIT
# 6. The table, result.json (benchmarks/bench_pretrain_payoff.py reads it) and the spread over seeds.
"$PYTHON" - "$OUTPUT_DIR" "$(( $(date +%s) - started ))" "$name" "$METHOD" "$SEED" \
  "$ROOT/benchmarks/results/pretrain_payoff.json" <<'PY'
import json
import sys
from pathlib import Path

out, seconds, name, method, seed, spread_file = Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]


def final(run):
    metrics = json.loads((out / run / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    return metrics["t2v/R1"], metrics.get("temporal/t2v/R1", float("nan")), int(metrics["num_videos"])


arms = {"zero-shot": "pretrain", "fine-tuned": "finetune"}
arms |= {f"scratch, lr {p.name[len('scratch_lr'):]}": p.name for p in sorted(out.glob("scratch_lr*")) if p.is_dir()}
results = {arm: final(run) for arm, run in arms.items()}
print(f"\n| {name}, seed {seed} | T2V R@1 | temporal R@1 |\n|---|---|---|")
for arm, (overall, temporal, _) in results.items():
    label = {"zero-shot": "pre-trained, zero-shot", "fine-tuned": "pre-trained, fine-tuned"}.get(
        arm, f"from random weights ({arm[len('scratch, '):]}), same fine-tuning")
    print(f"| {label} | {overall:.1f} | {temporal:.1f} |")
videos = results["zero-shot"][2]
print(f"\n{videos} test videos (chance R@1 {100 / videos:.1f}%); wall time {seconds // 60} min {seconds % 60} s; "
      f"runs in {out}")
(out / "result.json").write_text(json.dumps({"method": method, "seed": int(seed), "seconds": seconds,
                                             "t2v_R1": {arm: r[0] for arm, r in results.items()}}, indent=1))
spread = json.loads(Path(spread_file).read_text()) if Path(spread_file).exists() else {}
if method in spread:
    s = spread[method]
    cells = ", ".join(f"{arm} {v['mean']:.1f} ± {v['std']:.1f}" for arm, v in s["t2v_R1"].items())
    print(f"Over seeds {' '.join(map(str, s['seeds']))} (benchmarks/bench_pretrain_payoff.py, {s['measured']}): "
          f"T2V R@1 {cells}.")
else:
    print("Spread over seeds: not measured (python benchmarks/bench_pretrain_payoff.py measures it).")
PY

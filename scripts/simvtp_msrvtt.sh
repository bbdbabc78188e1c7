#!/usr/bin/env bash
# SimVTP fine-tuning on MSR-VTT 9k / 1k-A (SimVTP's finetune_msrvtt.sh; configs/simvtp_msrvtt.yaml): the dual encoder (two
# copies of the pre-trained trunk), 100 epochs, global batch 64, base lr 3e-4 x 64 / 256 = 7.5e-5, drop
# path 0.1, 16 frames at stride 4. PRETRAINED: SimVTP's released pre-training .pth, a UniVTR pre-training
# model_final.pt (scripts/simvtp_pretrain.sh), or SimVTP's fine-tuned .pth with ONLY_TEST=1 (SimVTP's
# --only_test: evaluation only).
#   Optional: NPROC, OUTPUT_DIR, WORKERS, CLIP_DIR (also searched for PRETRAINED), EXTRA_ARGS.
source "$(dirname "$0")/common.sh"
require_msrvtt_env
require_env PRETRAINED "SimVTP's pre-training checkpoint, or a model_final.pt of scripts/simvtp_pretrain.sh" \
  BERT_DIR "a local bert-base-uncased folder (vocab.txt, config.json, weights)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${PRETRAINED##*/}" = model_final.pt ] || [ "${PRETRAINED##*/}" = model_best.pt ]; then
  weights=(--init_model "$PRETRAINED" --clip_init random)  # our own run: every tensor is in the file
else
  weights=(--videomae_checkpoint "$PRETRAINED")
fi
mode=(--do_train)
if [ -n "${ONLY_TEST:-}" ]; then
  mode=(--do_eval)
fi
launch "${mode[@]}" --config "$root/configs/simvtp_msrvtt.yaml" --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  "${weights[@]}" --bert_path "$BERT_DIR" --output_dir "${OUTPUT_DIR:-ckpts/simvtp_msrvtt}" \
  --num_thread_reader "${WORKERS:-8}"

#!/usr/bin/env bash
# T2VLP retrieval on MSR-VTT 9k / 1k-A (T2VLP's main_task_retrieval_msrvtt.py; configs/t2vlp_msrvtt.yaml):
# InfoNCE + alignment + VTM, 5 epochs, global batch 32, lr 5e-5, fusion at 5e-6, CLIP at 5e-8; at test the top
# 32 candidates of every query are re-scored by the fusion VTM, beside the raw numbers.
#   DATA_DIR, VIDEO_DIR; optional INIT_MODEL (a stage-2 checkpoint of scripts/t2vlp_stage2.sh), NPROC, OUTPUT_DIR,
#   CLIP_DIR (folder holding ViT-B-16.pt), WORKERS, EXTRA_ARGS
source "$(dirname "$0")/common.sh"
require_msrvtt_env
[ -z "${INIT_MODEL:-}" ] || require_env INIT_MODEL "a stage-2 checkpoint (model_final.pt of scripts/t2vlp_stage2.sh)"
# shellcheck disable=SC2086
launch --do_train --config "$(cd "$(dirname "$0")/.." && pwd)/configs/t2vlp_msrvtt.yaml" --data_path "$DATA_DIR" \
  --features_path "$VIDEO_DIR" --output_dir "${OUTPUT_DIR:-ckpts/t2vlp_msrvtt}" --num_thread_reader "${WORKERS:-4}" \
  ${INIT_MODEL:+--init_model "$INIT_MODEL"}

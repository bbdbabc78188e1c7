#!/usr/bin/env bash
# UMP (our reconstruction, docs/prompt_tuning.md) on MSR-VTT 9k / 1k-A with the README command's settings
# (configs/ump_msrvtt.yaml): batch 32 on one GPU, lr 3e-5 for the prompts, 5 epochs.
source "$(dirname "$0")/common.sh"
require_msrvtt_env
launch --do_train --config "$(dirname "$0")/../configs/ump_msrvtt.yaml" \
  --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  --output_dir "${OUTPUT_DIR:-ckpts/msrvtt_ump}"

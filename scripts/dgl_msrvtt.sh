#!/usr/bin/env bash
# DGL on MSR-VTT 9k / 1k-A with the official settings (configs/dgl_msrvtt.yaml; docs/prompt_tuning.md).
# LATENT=linear gives DGL-Linear. The official run has 512 negatives per loss (128 x 4 GPUs): --batch_size
# is our GLOBAL batch, so any NPROC keeps it.
source "$(dirname "$0")/common.sh"
require_msrvtt_env
launch --do_train --config "$(dirname "$0")/../configs/dgl_msrvtt.yaml" \
  --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  --shared_latent_space "${LATENT:-transformer}" \
  --output_dir "${OUTPUT_DIR:-ckpts/msrvtt_dgl_${LATENT:-transformer}}"

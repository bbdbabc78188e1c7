#!/usr/bin/env bash
# CLIP4Clip on MSR-VTT 9k / 1k-A (180,000 pairs per epoch, global batch 128). SIM_HEADER=seqTransf etc.
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv and MSRVTT_data.json"
require_env VIDEO_DIR "the folder with the MSR-VTT videos (video0.mp4 ...)"
require_env CLIP_DIR "the folder holding ViT-B-32.pt"
clip4clip_recipe msrvtt msrvtt_meanP 32 12 128 --expand_msrvtt_sentences \
  --train_csv "$DATA_DIR/MSRVTT_train.9k.csv" --val_csv "$DATA_DIR/MSRVTT_JSFUSION_test.csv"

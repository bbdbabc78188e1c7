#!/usr/bin/env bash
# CLIP4Clip on MSR-VTT 9k / 1k-A (180,000 pairs per epoch, global batch 128). SIM_HEADER=seqTransf etc.
source "$(dirname "$0")/common.sh"
require_msrvtt_env
clip4clip_recipe msrvtt msrvtt_meanP 32 12 128 --expand_msrvtt_sentences \
  --train_csv "$DATA_DIR/MSRVTT_train.9k.csv" --val_csv "$DATA_DIR/MSRVTT_JSFUSION_test.csv"

#!/usr/bin/env bash
# CLIP4Clip on LSMDC (LSMDC16 training/val files, the 1,000-clip public test).
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv" \
  VIDEO_DIR "the folder with the LSMDC clips (searched recursively)"
clip4clip_recipe lsmdc lsmdc_meanP 32 12 128

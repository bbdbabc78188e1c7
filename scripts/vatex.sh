#!/usr/bin/env bash
# VATEX (HGR split; LANGUAGE=chinese for chCap). CLIP4Clip published no VATEX command: its MSVD recipe.
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with the caption json and train_list.txt / val_list.txt / test_list.txt" \
  VIDEO_DIR "the folder with the VATEX clips"
clip4clip_recipe vatex vatex_meanP 32 12 128 --language "${LANGUAGE:-english}"

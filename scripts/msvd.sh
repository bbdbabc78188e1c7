#!/usr/bin/env bash
# CLIP4Clip on MSVD (multi-caption test; the kept epoch is chosen on MSVD's validation split).
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with raw-captions.pkl, train_list.txt, val_list.txt and test_list.txt" \
  VIDEO_DIR "the folder with the MSVD videos (*.avi)"
clip4clip_recipe msvd msvd_meanP 32 12 128

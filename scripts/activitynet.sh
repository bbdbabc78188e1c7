#!/usr/bin/env bash
# CLIP4Clip on ActivityNet Captions val_1: paragraph-to-video, 64 words / 64 frames, global batch 64.
# ActivityNet has no validation split of its own: the kept epoch is chosen on 500 held-out training videos.
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with train.json and val_1.json (train_ids.json / val_ids.json optional)" \
  VIDEO_DIR "the folder with the ActivityNet videos (file names without the v_ prefix)"
clip4clip_recipe activitynet activitynet_meanP 64 64 64 --val_from_train "${VAL_FROM_TRAIN:-500}"

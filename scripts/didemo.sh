#!/usr/bin/env bash
# CLIP4Clip on DiDeMo: paragraph-to-video, 64 words / 64 frames, global batch 64.
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with {train,val,test}_data.json" \
  VIDEO_DIR "the folder with the DiDeMo videos"
clip4clip_recipe didemo didemo_meanP 64 64 64

#!/usr/bin/env bash
# MSRVTT-QA with main_task_qa.py (T2VLP's main_task_qa_msrvtt.py recipe; scripts/common.sh qa_recipe): selection
# on val accuracy, test accuracy (overall and per answer type) reported, predictions in OUTPUT_DIR.
#   DATA_DIR (train.jsonl, val.jsonl, test.jsonl, train_ans2label.json), VIDEO_DIR (the MSR-VTT videos);
#   optional INIT_MODEL (a T2VLP stage-2 checkpoint of scripts/t2vlp_stage2.sh), QA_HEAD (classifier | first_token),
#   METHOD, NPROC, OUTPUT_DIR, CLIP_DIR (folder holding ViT-B-16.pt), WORKERS, EXTRA_ARGS
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with MSRVTT-QA's train.jsonl, val.jsonl, test.jsonl and train_ans2label.json" \
  VIDEO_DIR "the folder with the MSR-VTT videos (video0.mp4 ...)"
[ -z "${INIT_MODEL:-}" ] || require_env INIT_MODEL "a checkpoint to start from (e.g. model_final.pt of scripts/t2vlp_stage2.sh)"
qa_recipe msrvtt_qa qa_msrvtt

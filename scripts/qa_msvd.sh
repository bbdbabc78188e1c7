#!/usr/bin/env bash
# MSVD-QA with main_task_qa.py: T2VLP's MSRVTT-QA recipe (scripts/common.sh qa_recipe; T2VLP gives no other for
# MSVD-QA), selection on val accuracy, test accuracy (overall and per answer type) reported.
#   DATA_DIR (train.jsonl, val.jsonl, test.jsonl, train_ans2label.json), VIDEO_DIR (the MSVD videos, <id>.avi,
#   searched in sub-folders too); optional INIT_MODEL, QA_HEAD (classifier | first_token), METHOD, NPROC,
#   OUTPUT_DIR, CLIP_DIR, WORKERS, EXTRA_ARGS
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with MSVD-QA's train.jsonl, val.jsonl, test.jsonl and train_ans2label.json" \
  VIDEO_DIR "the folder with the MSVD videos (<id>.avi)"
[ -z "${INIT_MODEL:-}" ] || require_env INIT_MODEL "a checkpoint to start from (e.g. model_final.pt of scripts/t2vlp_stage2.sh)"
qa_recipe msvd_qa qa_msvd

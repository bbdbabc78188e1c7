#!/usr/bin/env bash
# T2VLP stage 1 (T2VLP's start_clip.sh; configs/t2vlp_stage1.yaml): CLIP ViT-B/16 with joint last blocks,
# tube tokens and local alignment, pre-trained on WebVid captions (frozen_train_labels.json): 5 epochs, global
# batch 32, lr 1e-4, CLIP at 1e-7, tube module at 1e-5; zero-shot MSR-VTT 1k-A after every epoch.
# scripts/t2vlp_stage2.sh runs this script for stage 2 (configs/t2vlp_stage2.yaml, INIT_MODEL required).
#   Corpus, one of:  SHARDS="/data/webvid_shards/{000000..000999}.tar"   (preprocess/make_shards.py --datatype frozen)
#                    DATA_DIR (folder with frozen_train_labels.json), VIDEO_DIR (the WebVid videos: T2VLP's
#                    TFRecord frames are not read)
#   Evaluation:      EVAL_DATA_DIR (MSR-VTT annotation folder), EVAL_VIDEO_DIR (its videos)
#   Optional:        NPROC, OUTPUT_DIR, CLIP_DIR (folder holding ViT-B-16.pt), WORKERS, EXTRA_ARGS
source "$(dirname "$0")/common.sh"
stage="${T2VLP_STAGE:-1}"
needs=(EVAL_DATA_DIR "the MSR-VTT annotation folder used for zero-shot evaluation" EVAL_VIDEO_DIR "the MSR-VTT videos")
if [ "$stage" = 2 ]; then
  needs+=(INIT_MODEL "the stage-1 checkpoint (model_final.pt of scripts/t2vlp_stage1.sh)")
fi
pretrain_corpus frozen "the folder with frozen_train_labels.json" "the WebVid videos"
require_env "${needs[@]}"
init=()
if [ "$stage" = 2 ]; then
  init=(--init_model "$INIT_MODEL")
fi
ENTRY=main_pretrain.py launch --do_pretrain --config "$(cd "$(dirname "$0")/.." && pwd)/configs/t2vlp_stage$stage.yaml" \
  "${corpus[@]}" "${init[@]}" --eval_data_path "$EVAL_DATA_DIR" --eval_features_path "$EVAL_VIDEO_DIR" \
  --output_dir "${OUTPUT_DIR:-ckpts/t2vlp_stage$stage}" --num_thread_reader "${WORKERS:-4}"

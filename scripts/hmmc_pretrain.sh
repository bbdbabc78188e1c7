#!/usr/bin/env bash
# HMMC pre-training (HMMC's README: 11 epochs, global batch 128 on 8 GPUs, queue 1024, m 0.99, 12 frames,
# lr 1e-4 for new modules and the text tower, CLIP's visual tower at 1e-4 x 1e-3), zero-shot MSR-VTT
# 1k-A after every epoch.
#   Corpus, one of:  SHARDS="/data/webvid_shards/{000000..000999}.tar"   (preprocess/make_shards.py)
#                    DATATYPE=webvid|csv|jsonl|chvtt DATA_DIR=... VIDEO_DIR=...
#   Evaluation:      EVAL_DATA_DIR (MSR-VTT annotation folder), EVAL_VIDEO_DIR (its videos)
#   Optional:        NPROC, OUTPUT_DIR, CLIP_DIR, WORKERS, LANGUAGE (chinese: also TEXT_ENCODER, a local copy of
#                    hfl/chinese-roberta-wwm-ext), EXTRA_ARGS. Requeued jobs continue with EXTRA_ARGS="--resume ...".
source "$(dirname "$0")/common.sh"
needs=(EVAL_DATA_DIR "the MSR-VTT annotation folder used for zero-shot evaluation" EVAL_VIDEO_DIR "the MSR-VTT videos")
pretrain_corpus webvid "the pre-training annotation folder" "its videos"
require_env "${needs[@]}"
language=(--language "${LANGUAGE:-english}")
if [ "${LANGUAGE:-english}" = chinese ]; then
  require_env TEXT_ENCODER "a local copy of hfl/chinese-roberta-wwm-ext (config, weights, vocab.txt)"
  language+=(--text_encoder "$TEXT_ENCODER")
fi
ENTRY=main_pretrain.py launch --do_pretrain --method hmmc "${corpus[@]}" "${language[@]}" \
  --eval_datatype msrvtt --eval_data_path "$EVAL_DATA_DIR" --eval_features_path "$EVAL_VIDEO_DIR" \
  --output_dir "${OUTPUT_DIR:-ckpts/hmmc_pretrain}" --epochs 11 --batch_size 128 --batch_size_val 128 \
  --contrast_num_negative 1024 --contrast_momentum 0.99 --top_frames 3 --max_frames 12 --sample_mode rand \
  --use_temp --use_frame_fea --lr 1e-4 --text_lr 1e-4 --coef_lr 1e-3 --weight_decay 0.05 --warmup_proportion 0.2 \
  --optim bertadam --pretrained_clip_name ViT-B/32 --freeze_layer_num -1 --n_display 100 \
  --num_thread_reader "${WORKERS:-8}"

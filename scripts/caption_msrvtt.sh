#!/usr/bin/env bash
# T2VLP captioning on MSR-VTT (the MSVD recipe of scripts/caption_msvd.sh on MSR-VTT's files):
# L_cap + L_sim + L_align, greedy decoding, 10 epochs, global batch 32, lr 5e-5, CLIP at 5e-8,
# warm-up 0.2, 12 frames, 32 words, ViT-B/16, every training caption per epoch.
#   Splits: default 9k train / 1k-A test (scored on all 20 captions of each test video from MSRVTT_data.json;
#   no validation split: the final epoch is reported); TRAIN=7k for MSRVTT_train.7k.csv; PROTOCOL=full for
#   the official 6,513 / 497 / 2,990 split (epoch kept by val CIDEr).
#   DATA_DIR, VIDEO_DIR; optional INIT_MODEL (T2VLP stage-2 checkpoint), BEAM, NPROC, OUTPUT_DIR, CLIP_DIR,
#   WORKERS, EXTRA_ARGS
source "$(dirname "$0")/common.sh"
require_msrvtt_env
[ -z "${INIT_MODEL:-}" ] || require_env INIT_MODEL "a T2VLP stage-2 checkpoint (scripts/t2vlp_stage2.sh)"
ENTRY=main_task_caption.py
# shellcheck disable=SC2086
launch --do_train --datatype msrvtt --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  --output_dir "${OUTPUT_DIR:-ckpts/caption_msrvtt}" --msrvtt_protocol "${PROTOCOL:-1k-A}" \
  --train_csv "MSRVTT_train.${TRAIN:-9k}.csv" --expand_msrvtt_sentences \
  --method t2vlp --t2vlp_stage 2 --pretrained_clip_name ViT-B/16 \
  --epochs 10 --batch_size 32 --batch_size_val 32 --lr 5e-5 --coef_lr 1e-3 --warmup_proportion 0.2 \
  --max_words 32 --max_frames 12 --feature_framerate 1 --slice_framepos 2 --freeze_layer_num 0 --linear_patch 2d \
  --caption_retrieval_loss_weight 1 --beam_size "${BEAM:-1}" --n_display 50 --num_thread_reader "${WORKERS:-4}" \
  ${INIT_MODEL:+--init_model "$INIT_MODEL"}

#!/usr/bin/env bash
# T2VLP captioning on MSVD (T2VLP's README command for msvd_captioning.py): L_cap + L_sim + L_align,
# greedy decoding, 10 epochs, global batch 32, lr 5e-5 (fusion decoder and vocabulary head too), CLIP at 5e-8,
# warm-up 0.2, 12 frames at 1 fps, 32 words, ViT-B/16. The kept epoch is the best CIDEr on MSVD's val split;
# test BLEU-4/METEOR/ROUGE-L/CIDEr are reported for it, predictions in OUTPUT_DIR/captions_test.json.
#   DATA_DIR (raw-captions.pkl, train/val/test_list.txt), VIDEO_DIR; optional INIT_MODEL (T2VLP stage-2
#   checkpoint: its fusion encoder and vocabulary head become the decoder), BEAM (default 1), NPROC,
#   OUTPUT_DIR, CLIP_DIR (folder holding ViT-B-16.pt), WORKERS, EXTRA_ARGS
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with raw-captions.pkl, train_list.txt, val_list.txt and test_list.txt" \
  VIDEO_DIR "the folder with the MSVD videos (*.avi)"
[ -z "${INIT_MODEL:-}" ] || require_env INIT_MODEL "a T2VLP stage-2 checkpoint (scripts/t2vlp_stage2.sh)"
ENTRY=main_task_caption.py
# shellcheck disable=SC2086
launch --do_train --datatype msvd --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  --output_dir "${OUTPUT_DIR:-ckpts/caption_msvd}" --method t2vlp --t2vlp_stage 2 --pretrained_clip_name ViT-B/16 \
  --epochs 10 --batch_size 32 --batch_size_val 32 --lr 5e-5 --coef_lr 1e-3 --warmup_proportion 0.2 \
  --max_words 32 --max_frames 12 --feature_framerate 1 --slice_framepos 2 --freeze_layer_num 0 --linear_patch 2d \
  --caption_retrieval_loss_weight 1 --beam_size "${BEAM:-1}" --n_display 50 --num_thread_reader "${WORKERS:-4}" \
  ${INIT_MODEL:+--init_model "$INIT_MODEL"}

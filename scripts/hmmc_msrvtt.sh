#!/usr/bin/env bash
# HMMC fine-tuning on MSR-VTT 9k / 1k-A (HMMC's README: 5 epochs, global batch 256 on 8 GPUs, top-2 frames,
# lr 1e-4 for new modules, CLIP visual 1e-4 x 1e-3, text tower 1e-7), from INIT_MODEL (a main_pretrain.py
# checkpoint; unset: CLIP). Test score = video cosine + mean of the top-2 frame cosines.
source "$(dirname "$0")/common.sh"
require_msrvtt_env
init=()
if [ -n "${INIT_MODEL:-}" ]; then
  require_env INIT_MODEL "a pre-training checkpoint (model_final.pt of scripts/hmmc_pretrain.sh)"
  init=(--init_model "$INIT_MODEL")
fi
launch --do_train --method hmmc --datatype msrvtt --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  --output_dir "${OUTPUT_DIR:-ckpts/hmmc_msrvtt}" "${init[@]}" --expand_msrvtt_sentences \
  --epochs 5 --batch_size 256 --batch_size_val 256 --top_frames 2 --max_frames 12 --sample_mode rand \
  --eval_sample_mode uniform --use_temp --use_frame_fea --lr 1e-4 --text_lr 1e-7 --coef_lr 1e-3 \
  --optim bertadam --pretrained_clip_name ViT-B/32 --freeze_layer_num -1 --n_display 100 \
  --num_thread_reader "${WORKERS:-8}"

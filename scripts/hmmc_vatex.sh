#!/usr/bin/env bash
# HMMC fine-tuning on VATEX (HGR split), English or LANGUAGE=chinese (then TEXT_ENCODER: a local copy of
# hfl/chinese-roberta-wwm-ext); HMMC's README settings for MSR-VTT, selection on VATEX's validation split.
source "$(dirname "$0")/common.sh"
require_env DATA_DIR "the folder with the caption json and train_list.txt / val_list.txt / test_list.txt" \
  VIDEO_DIR "the folder with the VATEX clips"
extra=()
if [ "${LANGUAGE:-english}" = chinese ]; then
  require_env TEXT_ENCODER "a local copy of hfl/chinese-roberta-wwm-ext (config, weights, vocab.txt)"
  extra+=(--text_encoder "$TEXT_ENCODER")
fi
if [ -n "${INIT_MODEL:-}" ]; then
  require_env INIT_MODEL "a pre-training checkpoint (model_final.pt of scripts/hmmc_pretrain.sh)"
  extra+=(--init_model "$INIT_MODEL")
fi
launch --do_train --method hmmc --datatype vatex --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
  --language "${LANGUAGE:-english}" --output_dir "${OUTPUT_DIR:-ckpts/hmmc_vatex}" "${extra[@]}" \
  --epochs 5 --batch_size 256 --batch_size_val 256 --top_frames 2 --max_frames 12 --sample_mode rand \
  --eval_sample_mode uniform --use_temp --use_frame_fea --lr 1e-4 --text_lr 1e-7 --coef_lr 1e-3 \
  --optim bertadam --pretrained_clip_name ViT-B/32 --freeze_layer_num -1 --n_display 100 \
  --num_thread_reader "${WORKERS:-8}"

#!/usr/bin/env bash
# SimVTP pre-training (SimVTP's pretrain_webvid.sh; configs/simvtp_pretrain.yaml): VideoMAE ViT-B/16 joint trunk from
# VideoMAE's K400 1600-epoch checkpoint, BERT-base-uncased embeddings, 200 epochs, global batch 1024,
# base lr 1.5e-4 x 1024 / 256 = 6e-4, tube masking 0.9, text masking 0.75, 16 frames at stride 4,
# zero-shot MSR-VTT 1k-A after every epoch.
#
#   Corpus, one of:  SHARDS="/data/webvid_shards/{000000..002499}.tar"   (preprocess/make_shards.py)
#                    DATATYPE=webvid|csv|jsonl DATA_DIR=... VIDEO_DIR=...
#   Weights:         VIDEOMAE_CKPT (VideoMAE's pre-training .pth, or a Hugging Face VideoMAE folder),
#                    BERT_DIR (a local bert-base-uncased folder: vocab.txt, config.json, weights)
#   Evaluation:      EVAL_DATA_DIR (MSR-VTT annotation folder), EVAL_VIDEO_DIR (its videos)
#   Optional:        NPROC (GPUs per node, default 1), BATCH (global, default 1024), ACCUM (gradient
#                    accumulation: BATCH / (GPUs x ACCUM) pairs per GPU and micro-step; SimVTP used 16 per
#                    V100), OUTPUT_DIR, WORKERS, CLIP_DIR (also searched for VIDEOMAE_CKPT), EXTRA_ARGS.
#                    Requeued jobs continue with EXTRA_ARGS="--resume OUTPUT_DIR/checkpoint_last.pt".
#
# Single node, 8 GPUs:
#   NPROC=8 ACCUM=8 SHARDS=... VIDEOMAE_CKPT=... BERT_DIR=... EVAL_DATA_DIR=... EVAL_VIDEO_DIR=... \
#     bash scripts/simvtp_pretrain.sh
# Multi-node (SimVTP's 8 nodes x 8 GPUs = 1024 at 16 per GPU), the same command on every node:
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0's address> [MASTER_PORT=29500] NPROC=8 ... \
#     bash scripts/simvtp_pretrain.sh
source "$(dirname "$0")/common.sh"
needs=(EVAL_DATA_DIR "the MSR-VTT annotation folder used for zero-shot evaluation" EVAL_VIDEO_DIR "the MSR-VTT videos"
       VIDEOMAE_CKPT "VideoMAE's ViT-B K400 pre-training checkpoint (.pth or HF folder)"
       BERT_DIR "a local bert-base-uncased folder (vocab.txt, config.json, weights)")
pretrain_corpus webvid "the pre-training annotation folder" "its videos"
require_env "${needs[@]}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
flags=(--do_pretrain --config "$root/configs/simvtp_pretrain.yaml" "${corpus[@]}"
  --videomae_checkpoint "$VIDEOMAE_CKPT" --bert_path "$BERT_DIR"
  --eval_datatype msrvtt --eval_data_path "$EVAL_DATA_DIR" --eval_features_path "$EVAL_VIDEO_DIR"
  --output_dir "${OUTPUT_DIR:-ckpts/simvtp_pretrain}" --batch_size "${BATCH:-1024}"
  --gradient_accumulation_steps "${ACCUM:-1}" --num_thread_reader "${WORKERS:-8}")
if [ "${NNODES:-1}" -gt 1 ]; then
  if [ -z "${NODE_RANK:-}" ] || [ -z "${MASTER_ADDR:-}" ]; then
    echo "error: NNODES=$NNODES needs NODE_RANK (0..$((NNODES - 1)) on each node) and MASTER_ADDR (node 0's address)" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="${MASTER_PORT:-29500}" --nproc_per_node="${NPROC:-1}" "$root/main_pretrain.py" "${flags[@]}" \
    ${CLIP_DIR:+--pretrained_dir "$CLIP_DIR"} ${EXTRA_ARGS:-}
fi
ENTRY=main_pretrain.py launch "${flags[@]}"

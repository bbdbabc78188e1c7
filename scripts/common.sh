# Shared by scripts/*.sh: check the environment, then launch main_task_retrieval.py with torchrun.
# Variables: DATA_DIR (annotation files), VIDEO_DIR (videos), optional CLIP_DIR (folder holding
# ViT-B-32.pt etc.; unset, the loader searches $CLIP_HOME, ~/.cache/clip and modules/), OUTPUT_DIR,
# NPROC (GPUs on this node, default 1), EXTRA_ARGS (appended flags), ENTRY (the entry script launched,
# default main_task_retrieval.py).
set -euo pipefail

# require_env NAME "what it is" [NAME "what it is" ...]: every unset or non-existent location (and a
# CLIP_DIR that is set but does not exist) is named at once, in one line.
require_env() {
  local unset_list="" absent_list="" name what message
  while [ "$#" -ge 2 ]; do
    name="$1" what="$2"
    shift 2
    if [ -z "${!name:-}" ]; then
      unset_list="${unset_list:+$unset_list, }$name ($what)"
    elif [ ! -e "${!name}" ]; then
      absent_list="${absent_list:+$absent_list, }$name=${!name} ($what)"
    fi
  done
  if [ -n "${CLIP_DIR:-}" ] && [ ! -e "$CLIP_DIR" ]; then
    what="optional folder holding ViT-B-32.pt; unset, the loader searches \$CLIP_HOME, ~/.cache/clip and modules/"
    absent_list="${absent_list:+$absent_list, }CLIP_DIR=$CLIP_DIR ($what)"
  fi
  if [ -z "$unset_list$absent_list" ]; then
    return 0
  fi
  message="error:"
  if [ -n "$unset_list" ]; then
    message="$message set $unset_list (e.g. export NAME=/path/to/it);"
  fi
  if [ -n "$absent_list" ]; then
    message="$message these do not exist: $absent_list;"
  fi
  echo "$message then run $(basename "$0") again" >&2
  exit 2
}

# The two locations every MSR-VTT recipe needs.
require_msrvtt_env() {
  require_env DATA_DIR "the folder with MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv and MSRVTT_data.json" \
    VIDEO_DIR "the folder with the MSR-VTT videos (video0.mp4 ...)"
}

# pretrain_corpus DATATYPE "what DATA_DIR holds" "what VIDEO_DIR holds": the pre-training corpus flags in
# corpus=(...), from SHARDS (WebDataset shards) or else DATATYPE (default: the first argument), DATA_DIR and
# VIDEO_DIR, whose requirements are appended to needs=(...) so require_env reports every missing one at once.
pretrain_corpus() {
  if [ -n "${SHARDS:-}" ]; then
    corpus=(--datatype webdataset --train_shards "$SHARDS")
  else
    needs+=(DATA_DIR "$2 (or set SHARDS)" VIDEO_DIR "$3")
    corpus=(--datatype "${DATATYPE:-$1}" --data_path "${DATA_DIR:-}" --features_path "${VIDEO_DIR:-}")
  fi
}

launch() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # shellcheck disable=SC2086
  # --resume auto: a requeued or restarted job continues from <output_dir>/checkpoint_last.pt;
  # --verify_videos: unreadable videos are listed and excluded before training, not met mid-epoch.
  exec torchrun --standalone --nproc_per_node="${NPROC:-1}" "$root/${ENTRY:-main_task_retrieval.py}" "$@" \
    --resume auto --verify_videos ${CLIP_DIR:+--pretrained_dir "$CLIP_DIR"} ${EXTRA_ARGS:-}
}

# CLIP4Clip's published recipe (README of ArrowLuo/CLIP4Clip): 5 epochs, lr 1e-4 with CLIP at 1e-3 of
# it, warm-up 10%, 1 frame per second sampled down to --max_frames with linspace, frozen embeddings.
# Usage: clip4clip_recipe DATATYPE OUTPUT_NAME MAX_WORDS MAX_FRAMES GLOBAL_BATCH [more flags]
clip4clip_recipe() {
  local datatype="$1" name="$2" words="$3" frames="$4" batch="$5"
  shift 5
  launch --do_train --datatype "$datatype" \
    --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" --output_dir "${OUTPUT_DIR:-ckpts/$name}" \
    --epochs 5 --batch_size "$batch" --batch_size_val 16 --lr 1e-4 --coef_lr 1e-3 --warmup_proportion 0.1 \
    --max_words "$words" --max_frames "$frames" --feature_framerate 1 --slice_framepos 2 \
    --freeze_layer_num 0 --linear_patch 2d --sim_header "${SIM_HEADER:-meanP}" --loose_type \
    --pretrained_clip_name "${CLIP_NAME:-ViT-B/32}" --n_display 50 --num_thread_reader "${WORKERS:-8}" "$@"
}

# Question answering with main_task_qa.py, T2VLP's MSRVTT-QA recipe: 5 epochs, global batch 32,
# lr 2e-4 (new modules and the fusion encoder), CLIP at 2e-4 x 1e-3, warm-up 10%, 12 frames, 32 words, ViT-B/16,
# the T2VLP head at stage 2 (its fusion encoder and vocabulary head; a stage-2 checkpoint in INIT_MODEL).
# QA_HEAD=first_token is T2VLP's parity head, trained as T2VLP does with L_sim (--qa_retrieval_weight 1);
# the default classifier trains on the answer CE alone. METHOD, CLIP_NAME, INIT_MODEL, WORKERS optional.
# Usage: qa_recipe DATATYPE OUTPUT_NAME [more flags]
qa_recipe() {
  local datatype="$1" name="$2" head="${QA_HEAD:-classifier}"
  shift 2
  local parity=()
  if [ "$head" = first_token ]; then parity=(--qa_retrieval_weight 1); fi
  ENTRY=main_task_qa.py launch --do_train --datatype "$datatype" --data_path "$DATA_DIR" --features_path "$VIDEO_DIR" \
    --output_dir "${OUTPUT_DIR:-ckpts/$name}" --method "${METHOD:-t2vlp}" --t2vlp_stage 2 \
    --pretrained_clip_name "${CLIP_NAME:-ViT-B/16}" --epochs 5 --batch_size 32 --batch_size_val 32 --lr 2e-4 \
    --coef_lr 1e-3 --warmup_proportion 0.1 --max_words 32 --max_frames 12 --feature_framerate 1 --slice_framepos 2 \
    --freeze_layer_num 0 --qa_head "$head" ${parity[@]+"${parity[@]}"} --n_display 50 \
    --num_thread_reader "${WORKERS:-4}" ${INIT_MODEL:+--init_model "$INIT_MODEL"} "$@"
}

# Sourced by train.sbatch and train_multinode.sbatch: check the settings, launch the run, pass SLURM's
# early warning on to it, and requeue the job when the run wrote its checkpoint on a signal.
#
# The run (engine/preemption.py) stops on SIGTERM/SIGUSR1 after the current step or evaluation batch,
# writes checkpoint_last.pt and $OUTPUT_DIR/preempted.json, and exits 75. torchrun itself exits 1 after
# forwarding a signal, whatever its ranks return, so the marker file, not torchrun's exit code, says
# "checkpointed: requeue"; this job then exits 75.
set -uo pipefail

# require_settings: CONFIG and OUTPUT_DIR, every missing one named in one line.
require_settings() {
  local missing=""
  [ -n "${CONFIG:-}" ] || missing="CONFIG (a configs/NAME.yaml of the run)"
  [ -z "${CONFIG:-}" ] || [ -f "$CONFIG" ] || missing="CONFIG=$CONFIG (no such file; a configs/NAME.yaml of the run)"
  [ -n "${OUTPUT_DIR:-}" ] || missing="${missing:+$missing, }OUTPUT_DIR (the run's folder: checkpoint_last.pt, log.txt)"
  if [ -n "$missing" ]; then
    echo "error: set $missing, e.g. CONFIG=configs/msrvtt.yaml OUTPUT_DIR=ckpts/run sbatch $(basename "$0"); then submit again" >&2
    exit 2
  fi
}

# run_requeueable FORWARD COMMAND...: run COMMAND in the background; on SIGUSR1 or SIGTERM to this shell
# call "FORWARD PID" (which signals the run); when the run is over, exit 75 and requeue the job if it
# checkpointed on a signal, else exit with its code.
run_requeueable() {
  local forward=$1 launcher rc caught=0
  shift
  local marker="$OUTPUT_DIR/preempted.json"
  mkdir -p "$OUTPUT_DIR"
  rm -f "$marker"  # a marker left by an earlier attempt must not requeue this one
  "$@" &
  launcher=$!
  trap 'caught=1; echo "univtr: signal received; the run finishes its step, saves and exits 75" >&2; "$forward" "$launcher"' USR1 TERM
  while :; do
    wait "$launcher"
    rc=$?
    # A trapped signal interrupts wait (status > 128): wait again for the run's own exit code.
    if [ "$rc" -gt 128 ] && [ "$caught" = 1 ]; then
      caught=0
      continue
    fi
    break
  done
  trap - USR1 TERM
  if [ "$rc" -eq 75 ] || [ -f "$marker" ]; then
    echo "univtr: the run saved $OUTPUT_DIR/checkpoint_last.pt on a signal; requeueing job ${SLURM_JOB_ID:-?} (it continues with --resume auto)" >&2
    scontrol requeue "${SLURM_JOB_ID:-}" \
      || echo "univtr: scontrol requeue failed (SLURM may be requeueing it already); otherwise submit this script again" >&2
    exit 75
  fi
  exit "$rc"
}

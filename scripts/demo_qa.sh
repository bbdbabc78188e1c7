#!/usr/bin/env bash
# The question-answering demo: generate the toy dataset when absent (its qa/ folder: questions about the
# colour, shape and direction of each clip), evaluate an untrained tiny model, train the same model from the
# same initialisation on CPU (configs/demo_qa.yaml), and print both test accuracies beside chance.
#
#   bash scripts/demo_qa.sh                         # classifier head, configs/demo_qa.yaml
#   bash scripts/demo_qa.sh --epochs 4              # any flag of main_task_qa.py wins (training run)
#
# Environment (all optional): DATA_DIR (default <repo>/data/toy), OUTPUT_DIR (default <repo>/outputs/demo_qa),
# NUM_TRAIN, NUM_TEST, TOY_SEED, TOY_SECONDS, PYTHON, OMP_NUM_THREADS as in scripts/demo.sh.
source "$(dirname "${BASH_SOURCE[0]}")/demo_env.sh"
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/outputs/demo_qa}"
started=$(date +%s)

make_toy_data

data=(--config "$ROOT/configs/demo_qa.yaml" --data_path "$DATA_DIR/qa" --features_path "$DATA_DIR/videos")
rm -rf "$OUTPUT_DIR/untrained" "$OUTPUT_DIR/trained"  # this run's numbers only
mkdir -p "$OUTPUT_DIR"
# The same seed builds the same initial weights: the untrained row is the trained model's starting point.
"$PYTHON" "$ROOT/main_task_qa.py" --do_eval "${data[@]}" --output_dir "$OUTPUT_DIR/untrained"
"$PYTHON" "$ROOT/main_task_qa.py" --do_train "${data[@]}" --output_dir "$OUTPUT_DIR/trained" "$@"

"$PYTHON" - "$OUTPUT_DIR" "$DATA_DIR/qa" "$(( $(date +%s) - started ))" <<'PYEOF'
import json
import sys
from collections import Counter
from pathlib import Path

out, qa, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def test_metrics(run):
    lines = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["split"] == "test"][-1]


untrained, trained = test_metrics("untrained"), test_metrics("trained")
questions = [json.loads(line) for line in (qa / "test.jsonl").read_text().splitlines()]
train = [json.loads(line) for line in (qa / "train.jsonl").read_text().splitlines()]
answers_of = {}  # chance: a uniform guess among the training answers of the question's type
for q in train:
    answers_of.setdefault(q["answer_type"], set()).add(q["answer"])
types = Counter(q["answer_type"] for q in questions)
chance = {t: 100.0 / len(answers_of[t]) for t in types}
chance["all"] = sum(chance[t] * n for t, n in types.items()) / sum(types.values())
print()
print(f"UniVTR QA demo: {len(questions)} test questions about {len({q['video_id'] for q in questions})} toy videos; "
      f"trained weights: {trained.get('reported_weights', 'final')}")
print(f"{'accuracy (%)':<16}{'untrained':>10}{'trained':>10}{'chance':>10}")
for name, key in [("all", "accuracy")] + [(t, f"accuracy/{t}") for t in sorted(types)]:
    print(f"{name:<16}{untrained['metrics'][key]:10.2f}{trained['metrics'][key]:10.2f}{chance[name]:10.2f}")
print(f"predictions: {out / 'trained' / 'qa_predictions_test.jsonl'}; wall time {seconds // 60} min {seconds % 60} s")
PYEOF

#!/usr/bin/env bash
# Search demo (docs/tools.md): index the toy dataset's test videos with the demo's trained model, search
# them by text, and write a result page and a retrieval grid (paths printed).
#
#   bash scripts/demo_search.sh                       # uses outputs/demo/model_final.pt (bash scripts/demo.sh)
#   MODEL=path/model_final.pt bash scripts/demo_search.sh
#
# Environment (all optional):
#   MODEL        a self-contained checkpoint          (default: outputs/demo/model_final.pt; trained here with
#                                                       scripts/demo.sh --epochs $EPOCHS when absent)
#   EPOCHS       epochs of that training               (default 2: a tiny model, about a minute)
#   DATA_DIR     toy dataset folder                    (default: <repo>/data/toy)
#   OUT          where the index and the pages go      (default: <repo>/outputs/demo_search)
#   QUERIES      "|"-separated queries                 (default: three of the test captions)
source "$(dirname "${BASH_SOURCE[0]}")/demo_env.sh"
MODEL="${MODEL:-$ROOT/outputs/demo/model_final.pt}"
OUT="${OUT:-$ROOT/outputs/demo_search}"

if [ ! -f "$MODEL" ]; then
  echo "no $MODEL: training the demo model first (scripts/demo.sh --epochs ${EPOCHS:-2})"
  OUTPUT_DIR="$(dirname "$MODEL")" bash "$ROOT/scripts/demo.sh" --epochs "${EPOCHS:-2}"
fi
if [ ! -f "$DATA_DIR/MSRVTT_JSFUSION_test.csv" ]; then
  echo "error: no toy dataset in DATA_DIR=$DATA_DIR (bash scripts/demo.sh makes it)" >&2
  exit 2
fi

# The test videos (MSRVTT_JSFUSION_test.csv), linked into one folder so only they are indexed.
mkdir -p "$OUT/videos"
"$PYTHON" - "$DATA_DIR" "$OUT/videos" <<'PY'
import csv, os, sys
from pathlib import Path
data, out = Path(sys.argv[1]), Path(sys.argv[2])
with open(data / "MSRVTT_JSFUSION_test.csv") as f:
    for row in csv.DictReader(f):
        link, target = out / f"{row['video_id']}.mp4", (data / "videos" / f"{row['video_id']}.mp4").resolve()
        if not link.exists():
            os.symlink(target, link)
PY

"$PYTHON" -m tools.index --checkpoint "$MODEL" --videos "$OUT/videos" --out "$OUT/index" --rebuild

if [ -z "${QUERIES:-}" ]; then
  QUERIES="$("$PYTHON" -c "
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print('|'.join(r['sentence'] for r in rows[::max(1, len(rows) // 3)][:3]))" "$DATA_DIR/MSRVTT_JSFUSION_test.csv")"
fi
IFS='|' read -r -a queries <<< "$QUERIES"
"$PYTHON" -m tools.search "$OUT/index" "${queries[@]}" --topk 5 --html "$OUT/search.html"

# The picture of the run: test captions with their top-5 videos, the ground truth framed.
"$PYTHON" -m tools.visualize retrievals --run "$(dirname "$MODEL")" --checkpoint "$MODEL" --n 6 \
  --data_path "$DATA_DIR" --features_path "$DATA_DIR/videos" --out "$OUT/retrievals.png"

echo "search page: $OUT/search.html"
echo "retrieval grid: $OUT/retrievals.png"
echo "serve it: $PYTHON -m tools.serve $OUT/index --port 8000   (then open http://127.0.0.1:8000/)"
if [ -n "${DISPLAY:-}" ] && command -v xdg-open >/dev/null 2>&1; then xdg-open "$OUT/search.html" >/dev/null 2>&1 || true; fi

"""scripts/demo_search.sh: indexes the toy test videos with a trained model and writes a result page and a
retrieval grid, printing their paths."""
import os
import subprocess
from pathlib import Path

from tests.tools_fixtures import make_toy, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_demo_search_indexes_the_test_videos_and_writes_the_pages(tmp_path):
    toy = make_toy(tmp_path / "toy")
    model = save_checkpoint(toy, tmp_path / "run" / "model_final.pt")
    env = {**os.environ, "MODEL": str(model), "DATA_DIR": str(toy), "OUT": str(tmp_path / "out"),
           "QUERIES": "a red cross|a yellow circle"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo_search.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"search page: {tmp_path / 'out' / 'search.html'}" in done.stdout
    page = (tmp_path / "out" / "search.html").read_text()
    assert page.count('class="hit"') == 10 and "a red cross" in page and "a yellow circle" in page
    test_ids = {line.split(",")[2] for line in (toy / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:]}
    indexed = (tmp_path / "out" / "index" / "videos.jsonl").read_text()
    assert len(indexed.splitlines()) == len(test_ids) == 6
    assert all(f"/{video_id}.mp4" in indexed for video_id in test_ids)
    assert (tmp_path / "out" / "retrievals.png").stat().st_size > 10_000

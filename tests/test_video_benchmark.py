"""The loading benchmark runs end to end and prints its table (tiny settings)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/bench_video_loading.py", "--num_videos", "1", "--seconds", "2",
                           "--modes", "clip4clip,uniform", "--no_bbb", "--cache_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 2s ")]
    # baseline + (every installed file backend + lmdb) x 2 modes
    assert rows[0].split("|")[2].strip().startswith("CLIP4Clip baseline") and rows[0].endswith("| 1.0x |")
    backends = {row.split("|")[2].strip() for row in rows[1:]}
    assert {"decord", "cv2", "pyav", "lmdb"} <= backends and len(rows) == 1 + 2 * len(backends)

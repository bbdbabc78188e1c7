"""benchmarks/bench_e2e.py runs end to end with tiny settings and prints one row per data path."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["data", "loader pairs/s", "loader per worker", "loader first batch (s)", "compute pairs/s", "e2e pairs/s",
           "e2e / compute", "first step at (s)", "first evaluation at (s)", "first evaluation took (s)", "bottleneck"]


def test_bench_e2e_prints_loader_compute_and_e2e_for_every_data_path(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/bench_e2e.py", "--clips", "3", "--val_clips", "1",
                           "--seconds", "2", "--captions", "4", "--batch", "2", "--steps", "2", "--prep_workers", "1",
                           "--cache_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| data |"))
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in lines if line.startswith("| ") and not line.startswith("| data"))}
    assert list(rows) == ["raw", "compressed", "lmdb"]
    for cells in rows.values():
        numbers = [float(c) for c in cells[1:10]]
        assert all(n > 0 for n in numbers), cells  # every figure measured, the first evaluation included
        loader, compute, e2e, ratio = numbers[0], numbers[3], numbers[4], numbers[5]
        assert abs(ratio - e2e / compute) < 0.01 + 0.01 * ratio
        assert cells[10] in ("compute", "loader") or cells[10].startswith("shared CPU cores")  # a CPU run
        assert cells[10] != "loader" or (loader < compute and e2e >= 0.9 * loader - 0.1)
        assert cells[10] != "compute" or (compute <= loader and e2e >= 0.9 * compute - 0.1)
    assert "2 s 320x240 30 fps clips" in proc.stdout and "frames handed over as uint8" in proc.stdout

"""Every recipe script names a missing location in one line, and the command it builds parses as flags
of main_task_retrieval.py (torchrun is replaced by a stand-in that only parses them)."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"msrvtt.sh": "msrvtt", "msvd.sh": "msvd", "lsmdc.sh": "lsmdc", "didemo.sh": "didemo",
           "activitynet.sh": "activitynet", "vatex.sh": "vatex", "dgl_msrvtt.sh": "msrvtt", "ump_msrvtt.sh": "msrvtt"}

FAKE_TORCHRUN = f"""#!/bin/sh
# Drop torchrun's own options and the script path, then only parse the flags.
while [ "${{1#--}}" != "$1" ]; do shift; done
shift
exec "{sys.executable}" -c 'import sys; sys.path.insert(0, "{ROOT}"); from main_task_retrieval import get_args; \\
a = get_args(sys.argv[1:]); print("PARSED", a.datatype, a.method or a.sim_header, a.batch_size, a.max_frames)' "$@"
"""


def run(script, env, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "VIDEO_DIR", "CLIP_DIR")}
    return subprocess.run(["bash", str(ROOT / "scripts" / script)], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", sorted(RECIPES))
def test_missing_location_is_one_line(script, tmp_path):
    result = run(script, {}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "set DATA_DIR" in result.stderr


@pytest.mark.parametrize("script", sorted(RECIPES))
def test_recipe_flags_parse(script, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torchrun = bin_dir / "torchrun"
    torchrun.write_text(FAKE_TORCHRUN)
    torchrun.chmod(torchrun.stat().st_mode | stat.S_IEXEC)
    env = {"DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path), "CLIP_DIR": str(tmp_path),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run(script, env, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    parsed = result.stdout.split()
    assert parsed[0] == "PARSED" and parsed[1] == RECIPES[script]

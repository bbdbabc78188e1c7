"""Every recipe script names all missing locations in one line, CLIP_DIR is optional, and the command
it builds parses as flags of main_task_retrieval.py (torchrun is replaced by a stand-in that only
parses them)."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"msrvtt.sh": "msrvtt", "msvd.sh": "msvd", "lsmdc.sh": "lsmdc", "didemo.sh": "didemo",
           "activitynet.sh": "activitynet", "vatex.sh": "vatex", "dgl_msrvtt.sh": "msrvtt", "ump_msrvtt.sh": "msrvtt",
           "hmmc_msrvtt.sh": "msrvtt", "hmmc_vatex.sh": "vatex", "t2vlp_msrvtt.sh": "msrvtt"}

FAKE_TORCHRUN = f"""#!/bin/sh
# Drop torchrun's own options, then only parse the flags with the entry script's own get_args.
while [ "${{1#--}}" != "$1" ]; do shift; done
exec "{sys.executable}" -c 'import sys, os, importlib; sys.path.insert(0, "{ROOT}"); \\
entry = importlib.import_module(os.path.basename(sys.argv[1])[:-3]); a = entry.get_args(sys.argv[2:]); \\
print("PARSED", a.datatype, a.method or a.sim_header, a.batch_size, a.max_frames, a.pretrained_dir, \\
os.path.basename(sys.argv[1]))' "$@"
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


def test_every_missing_location_in_the_same_line(tmp_path):
    result = run("msrvtt.sh", {}, tmp_path)
    assert result.stderr.count("\n") == 1
    assert "set DATA_DIR (" in result.stderr and ", VIDEO_DIR (" in result.stderr and "CLIP_DIR" not in result.stderr
    result = run("msvd.sh", {"DATA_DIR": str(tmp_path / "nope"), "CLIP_DIR": str(tmp_path / "no_weights")}, tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "set VIDEO_DIR (" in result.stderr
    assert f"these do not exist: DATA_DIR={tmp_path / 'nope'} (" in result.stderr
    assert f"CLIP_DIR={tmp_path / 'no_weights'} (optional" in result.stderr


def test_activitynet_id_lists_are_optional(tmp_path):
    # The parser needs train.json and val_1.json; train_ids.json / val_ids.json only restrict them.
    result = run("activitynet.sh", {}, tmp_path)
    expected = "DATA_DIR (the folder with train.json and val_1.json (train_ids.json / val_ids.json optional))"
    assert expected in result.stderr


def fake_torchrun(tmp_path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torchrun = bin_dir / "torchrun"
    torchrun.write_text(FAKE_TORCHRUN)
    torchrun.chmod(torchrun.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}:{os.environ['PATH']}"


# Every recipe without CLIP_DIR; with it, one through clip4clip_recipe and one calling launch directly.
@pytest.mark.parametrize("script,clip_dir", [(s, False) for s in sorted(RECIPES)]
                         + [("msrvtt.sh", True), ("dgl_msrvtt.sh", True)])
def test_recipe_flags_parse(script, clip_dir, tmp_path):
    env = {"DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path), "PATH": fake_torchrun(tmp_path)}
    if clip_dir:
        env["CLIP_DIR"] = str(tmp_path)
    result = run(script, env, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    parsed = result.stdout.split()
    assert parsed[0] == "PARSED" and parsed[1] == RECIPES[script]
    # Without CLIP_DIR no --pretrained_dir: the loader searches $CLIP_HOME, ~/.cache/clip and modules/.
    assert parsed[-2] == (str(tmp_path) if clip_dir else "None")
    assert parsed[-1] == "main_task_retrieval.py"


@pytest.mark.parametrize("corpus", ["shards", "csv"])
def test_hmmc_pretrain_script_launches_main_pretrain(corpus, tmp_path):
    missing = run("hmmc_pretrain.sh", {}, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "set EVAL_DATA_DIR (" in missing.stderr and "EVAL_VIDEO_DIR (" in missing.stderr
    env = {"EVAL_DATA_DIR": str(tmp_path), "EVAL_VIDEO_DIR": str(tmp_path), "PATH": fake_torchrun(tmp_path)}
    if corpus == "shards":
        env["SHARDS"] = f"{tmp_path}/{{000000..000009}}.tar"
    else:
        env |= {"DATATYPE": "csv", "DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path)}
    result = run("hmmc_pretrain.sh", env, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    parsed = result.stdout.split()
    assert parsed[:5] == ["PARSED", "webdataset" if corpus == "shards" else "csv", "hmmc", "128", "12"]
    assert parsed[-1] == "main_pretrain.py"


@pytest.mark.parametrize("stage,corpus", [(1, "shards"), (1, "frozen"), (2, "frozen")])
def test_t2vlp_stage_scripts_launch_main_pretrain(stage, corpus, tmp_path):
    script = f"t2vlp_stage{stage}.sh"
    missing = run(script, {}, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "set EVAL_DATA_DIR (" in missing.stderr and ("INIT_MODEL (" in missing.stderr) == (stage == 2)
    assert script in missing.stderr and "DATA_DIR (the folder with frozen_train_labels.json" in missing.stderr
    env = {"EVAL_DATA_DIR": str(tmp_path), "EVAL_VIDEO_DIR": str(tmp_path), "PATH": fake_torchrun(tmp_path),
           "INIT_MODEL": str(tmp_path)}
    if corpus == "shards":
        env["SHARDS"] = f"{tmp_path}/{{000000..000009}}.tar"
    else:
        env |= {"DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path)}
    result = run(script, env, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    parsed = result.stdout.split()
    assert parsed[:5] == ["PARSED", "webdataset" if corpus == "shards" else "frozen", "t2vlp", "32", "12"]
    assert parsed[-1] == "main_pretrain.py"


def test_simvtp_scripts_launch_both_entry_points_single_and_multi_node(tmp_path):
    for script, needed in (("simvtp_pretrain.sh", ("EVAL_DATA_DIR (", "VIDEOMAE_CKPT (", "BERT_DIR (")),
                           ("simvtp_msrvtt.sh", ("DATA_DIR (", "VIDEO_DIR ("))):
        missing = run(script, {}, tmp_path)
        assert missing.returncode == 2 and missing.stderr.count("\n") == 1
        assert all(name in missing.stderr for name in needed), missing.stderr
    places = {name: str(tmp_path) for name in ("EVAL_DATA_DIR", "EVAL_VIDEO_DIR", "VIDEOMAE_CKPT", "BERT_DIR",
                                                "DATA_DIR", "VIDEO_DIR", "PRETRAINED")}
    env = {**places, "SHARDS": f"{tmp_path}/{{000000..000009}}.tar", "PATH": fake_torchrun(tmp_path)}
    for extra in ({}, {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}):
        result = run("simvtp_pretrain.sh", env | extra, tmp_path)
        assert result.returncode == 0, result.stderr[-1500:]
        assert result.stdout.split()[:5] == ["PARSED", "webdataset", "simvtp", "1024", "16"]
        assert result.stdout.split()[-1] == "main_pretrain.py"
    half = run("simvtp_pretrain.sh", env | {"NNODES": "2"}, tmp_path)
    assert half.returncode == 2 and "needs NODE_RANK" in half.stderr and half.stderr.count("\n") == 1
    result = run("simvtp_msrvtt.sh", env, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout.split()[:5] == ["PARSED", "msrvtt", "simvtp", "64", "16"]
    assert result.stdout.split()[-1] == "main_task_retrieval.py"


def test_recipes_resume_automatically_and_verify_videos_first(tmp_path):
    # A requeued job continues from its checkpoint; unreadable videos are excluded before training.
    bin_dir = tmp_path / "echo_bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "torchrun").chmod(0o755)
    env = {"DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run("msrvtt.sh", env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--resume auto --verify_videos" in result.stdout and "--output_dir ckpts/" in result.stdout


@pytest.mark.parametrize("config, method", [("demo_pretrain.yaml", "hmmc"), ("demo_pretrain_t2vlp.yaml", "t2vlp"),
                                            ("demo_pretrain_simvtp.yaml", "simvtp")])
def test_pretraining_demo_configs_parse(config, method):
    import main_pretrain

    args = main_pretrain.get_args(["--config", str(ROOT / "configs" / config)])
    assert (args.do_pretrain, args.method, args.datatype, args.clip_init) == (True, method, "webdataset", "random")


def test_pretraining_demo_names_an_unknown_method_in_one_line(tmp_path):
    result = run("demo_pretrain.sh", {"METHOD": "clip4clip"}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: METHOD=clip4clip: the pre-training demo runs hmmc, t2vlp or simvtp"]

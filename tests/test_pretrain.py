"""main_pretrain.py on the one engine: HMMC pre-training resumes bit for bit (weights, momentum copies,
queues), pre-train -> fine-tune -> evaluate round trip, shard-streamed pre-training, the seed's commands."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_pretrain
import main_task_retrieval

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A pre-training corpus (toy seed 1) and the evaluation benchmark (toy seed 0)."""
    from preprocess.make_toy_dataset import make_toy_dataset

    root = tmp_path_factory.mktemp("pretrain")
    make = dict(num_train=12, num_test=6, size=32, fps=5, seconds=1.6, workers=1, progress=False)
    return make_toy_dataset(root / "corpus", seed=1, **make), make_toy_dataset(root / "bench", seed=0, **make)


TINY = ["--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1", "--batch_size", "4",
        "--batch_size_val", "8", "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0",
        "--lr", "1e-3", "--seed", "3"]
HMMC = ["--method", "hmmc", "--use_temp", "--use_frame_fea", "--top_frames", "2", "--contrast_num_negative", "8",
        "--hmmc_projector_hidden", "32"]


def pretrain_args(corpora, out, *extra):
    corpus, bench = corpora
    return ["--do_pretrain", "--datatype", "msrvtt", "--data_path", str(corpus), "--features_path", str(corpus / "videos"),
            "--eval_datatype", "msrvtt", "--eval_data_path", str(bench), "--eval_features_path", str(bench / "videos"),
            "--output_dir", str(out), "--epochs", "2", *TINY, *HMMC, *extra]


def run_pretrain_subprocess(argv, fault_at=None):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if fault_at:
        env["UNIVTR_FAULT_AT_STEP"] = str(fault_at)
    return subprocess.run([sys.executable, str(ROOT / "main_pretrain.py"), *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_hmmc_pretraining_resumes_bit_identically_weights_and_queues(corpora, tmp_path):
    straight = run_pretrain_subprocess(pretrain_args(corpora, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    # 12 videos / batch 4 = 3 steps per epoch; die at step 5, one step after the checkpoint of step 4.
    killed = run_pretrain_subprocess(pretrain_args(corpora, tmp_path / "killed", "--save_every_steps", "2"), fault_at=5)
    assert killed.returncode == 17, killed.stderr[-2000:]
    at_step_4 = torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=True)
    assert at_step_4["step"] == 4
    resumed = run_pretrain_subprocess(pretrain_args(corpora, tmp_path / "killed", "--resume",
                                                    str(tmp_path / "killed" / "checkpoint_last.pt")))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (torch.load(tmp_path / run / "model_final.pt", weights_only=True)["model"] for run in ("straight", "killed"))
    assert a.keys() == b.keys()
    assert any(k.startswith("momentum.") for k in a) and any(k.startswith("queue.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # The two steps replayed after the resume moved the queues and the momentum copies (the comparison
    # above is not between untouched states).
    moved = [k for k in a if k.startswith(("queue.", "momentum.")) and not torch.equal(a[k], at_step_4["model"][k])]
    assert any(k.startswith("queue.") for k in moved) and any(k.startswith("momentum.") for k in moved)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in records] == [("test", 1), ("test", 2)]  # zero-shot after each epoch
    assert records[0]["selection_rule"].startswith("pretraining")


def test_pretrain_finetune_evaluate_round_trip(corpora, tmp_path):
    corpus, bench = corpora
    assert main_pretrain.main(pretrain_args(corpora, tmp_path / "pre", "--epochs", "1")) == 0
    pretrained = tmp_path / "pre" / "model_final.pt"
    # The epoch line carries the mean of every term the head's step returns: HMMC's total is its weighted sum.
    line = next(x for x in (tmp_path / "pre" / "log.txt").read_text().splitlines() if "epoch 1/1 done" in x)
    total = float(line.split("mean loss ")[1].split()[0])
    terms = {name: float(value) for name, value in (t.split() for t in line.split("; terms: ")[1].split(", "))}
    assert sorted(terms) == ["fam", "ftm", "mlm", "vtm"]
    weighted = 0.05 * terms["fam"] + 0.45 * terms["vtm"] + 0.45 * terms["ftm"] + 0.05 * terms["mlm"]
    assert abs(total - weighted) <= 1.5e-4  # each printed value is rounded to 4 decimals (5e-5)
    finetune = ["--datatype", "msrvtt", "--data_path", str(bench), "--features_path", str(bench / "videos"), *TINY,
                *HMMC, "--epochs", "1"]
    assert main_task_retrieval.main(["--do_train", "--output_dir", str(tmp_path / "ft"), "--init_model",
                                     str(pretrained), *finetune]) == 0
    dropped = "tensors that only pre-training uses (masker, mlm_head, mlm_mask_embedding, momentum, queue, v_predictor"
    assert dropped in (tmp_path / "ft" / "log.txt").read_text()
    tuned = torch.load(tmp_path / "ft" / "model_final.pt", weights_only=True)["model"]
    assert not any(k.startswith(("momentum.", "queue.", "mlm_head.")) for k in tuned)
    # The fine-tuning model starts from every pre-trained query-side tensor (CLIP, temporal transformer).
    from modules import build_model

    start = build_model(main_task_retrieval.get_args(["--do_train", "--init_model", str(pretrained), *finetune]))
    source = torch.load(pretrained, weights_only=True)["model"]
    assert all(torch.equal(value, source[name]) for name, value in start.state_dict().items())
    assert any(name.startswith("temporal.") for name in start.state_dict())
    # And the fine-tuned result evaluates to the same numbers through --do_eval.
    assert main_task_retrieval.main(["--do_eval", "--output_dir", str(tmp_path / "eval"), "--init_model",
                                     str(tmp_path / "ft" / "model_final.pt"), *finetune]) == 0
    final = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()][-1]
    again = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()][-1]
    assert again["metrics"] == final["metrics"] and again["selection_rule"] == "evaluation only"


def test_pretraining_streams_webdataset_shards(corpora, tmp_path):
    corpus, bench = corpora
    written = subprocess.run([sys.executable, str(ROOT / "preprocess" / "make_shards.py"), "--datatype", "msrvtt",
                              "--data_path", str(corpus), "--features_path", str(corpus / "videos"), "--out",
                              str(tmp_path / "shards"), "--samples_per_shard", "3"],
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                             timeout=300)
    assert written.returncode == 0, written.stderr[-2000:]
    argv = pretrain_args(corpora, tmp_path / "out", "--save_every_steps", "1")
    argv = argv[:1] + ["--datatype", "webdataset", "--train_shards", str(tmp_path / "shards" / "{000000..000003}.tar")] \
        + argv[argv.index("--eval_datatype"):]
    assert main_pretrain.main(argv) == 0
    state = torch.load(tmp_path / "out" / "checkpoint_last.pt", weights_only=True)
    assert state["step"] == 6  # 12 samples in 4 shards, batch 4: 3 steps per epoch, 2 epochs
    assert state["extra"]["data"]["shards"]["sizes"] == [3, 3, 3, 3]
    assert (tmp_path / "out" / "model_final.pt").is_file()


# HMMC's three README commands, with data paths given (and torch.distributed.launch's --local-rank).
SEED_PRETRAIN = """--local-rank=0 --do_pretrain --num_thread_reader=8 --epochs=11 --batch_size=128 --n_display=596
--contrast_num_negative 1024 --contrast_momentum 0.99
--output_dir ckpts/pretrain/ablation7w_11epoch/FAM0.05_VTM0.45_FTM0.45_MLM0.05_m0.99_q1024_f30_e-7_e-4_11epoch_8GPU
--top_frames 3 --max_frames 12 --frame_sample random --use_temp --use_frame_fea
--lr 1e-4 --text_lr 1e-4 --coef_lr 1e-3 --batch_size_val 128 --language chinese --dataset chvtt"""
SEED_FINETUNE = """--local-rank=0 --do_train --num_thread_reader=8 --epochs=5 --batch_size=256 --n_display=100
--output_dir ckpts/msrvtt/vit32_VTM0.85_FTM0.15_cross3_frame30_256_8GPU_pretrained --top_frames 2
--max_frames 12 --frame_sample random --use_temp --use_frame_fea --lr 1e-4 --text_lr 1e-7 --coef_lr 1e-3
--batch_size_val 256 --task retrieval --dataset msrvtt --language english
--init_model ckpts/pretrain/english/FAM0_VTM0.45_FTM0.45_MLM0_m0.99_q1024_f30_whole/pytorch_model.bin.2"""
SEED_EVAL = """--local_rank 0 --do_eval --num_thread_reader=8 --epochs=1 --batch_size=64 --n_display=1
--output_dir ckpts/val --max_frames 12 --frame_sample random --use_temp --use_frame_fea --lr 1e-4 --text_lr 3e-5
--coef_lr 8e-1 --batch_size_val 256 --task retrieval --dataset vatex --language english
--init_model ckpts/vatex/VTM0.85_FTM0.15_cross3_frame30_8GPU_pretrain/pytorch_model.bin.4"""


@pytest.mark.parametrize("entry,command,datatype", [
    (main_pretrain, SEED_PRETRAIN + " --data_path data/chvtt --text_encoder chinese-roberta-wwm-ext", "chvtt"),
    (main_task_retrieval, SEED_FINETUNE + " --data_path data/msrvtt", "msrvtt"),
    (main_task_retrieval, SEED_EVAL + " --data_path data/vatex", "vatex")])
def test_seed_commands_parse(entry, command, datatype):
    args = entry.get_args(shlex.split(command))
    assert args.method == "hmmc" and args.datatype == datatype and args.use_temp and args.use_frame_fea
    assert args.sample_mode == "rand" and args.max_frames == 12
    if entry is main_pretrain:
        assert args.do_pretrain and args.contrast_num_negative == 1024 and args.contrast_momentum == 0.99
        assert args.language == "chinese" and args.text_lr == 1e-4 and args.top_frames == 3
    else:
        assert args.init_model.startswith("ckpts/") and args.text_lr in (1e-7, 3e-5)


def test_seed_task_other_than_retrieval_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_task_retrieval.get_args(["--task", "caption"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1

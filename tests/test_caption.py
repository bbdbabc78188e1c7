"""Captioning (main_task_caption.py): decoding with and without the key/value cache, beam 1 = greedy, the
teacher-forced loss by hand, BLEU/ROUGE-L/CIDEr by hand, the no-Java path, the seed's command, 2 gloo
ranks = 1 process, and a train -> captions_test.json -> --do_eval round trip on the toy dataset."""
import json
import math
import os
import shlex
from collections import Counter

import pytest
import torch

import main_task_caption
import test_t2vlp as t2
from engine.caption import CaptionTask, score_split
from engine.distributed import DistEnv
from engine.step import StepContext
from gloo import assert_same_step, local_rows, run_on_ranks, step_record
from modules.caption_metrics import NO_JAVA, _without_tokenizer_chatter, java_available, score_captions
from modules.captioning import CaptionModel
from modules.components.decoder import CachedStepper, FullStepper
from modules.task_model import build_task_model
from test_engine import toy  # noqa: F401  (fixture: the toy dataset, 12 train / 6 test videos)
from test_scripts import fake_torchrun
from test_scripts import run as run_script

TINY = ["--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1", "--max_frames",
        str(t2.FRAMES), "--max_words", "12", "--decoder_layers", "2", "--caption_dropout", "0", "--fusion_dropout", "0",
        "--seed", "0"]
HEADS = {"meanP": [], "t2vlp_stage2": ["--method", "t2vlp", "--t2vlp_stage", "2"]}


def caption_model(head="meanP", *flags, seed=0):
    torch.manual_seed(seed)
    return build_task_model(main_task_caption.get_args([*TINY, *HEADS[head], *flags]), CaptionModel)


# -- decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", sorted(HEADS))
def test_cached_decoding_equals_re_encoding_the_prefix(head):
    model = caption_model(head).eval()
    batch = t2.make_batch(n=3)
    if head == "t2vlp_stage2":  # the head's own fusion encoder and vocabulary head are the decoder
        assert "decoder" not in model._modules and "vocab_head" not in model._modules
        assert model.caption_decoder() is model.head.fusion
    # Step by step, the cached hidden states equal the re-encoded ones.
    with torch.no_grad():
        visual, valid = model.head.visual_tokens(batch["video"], batch["video_mask"])
        prefix = model.prefix(visual)
        cached, full = (make(model.caption_decoder(), prefix, valid) for make in (CachedStepper, FullStepper))
        embed = model.step_input(prefix)
        for ids in ([model.sot] * 3, [320, 1845, 7], [3140, 3140, 5]):
            token = embed(torch.tensor(ids)[:, None])
            assert torch.allclose(cached.step(token), full.step(token), atol=1e-5)
    for beams in (1, 3):
        with_cache = model.generate(batch["video"], batch["video_mask"], beams, max_len=8, use_cache=True)
        without = model.generate(batch["video"], batch["video_mask"], beams, max_len=8, use_cache=False)
        assert with_cache == without and len(with_cache) == 3


def test_a_t2vlp_decoder_reads_the_text_towers_token_features(monkeypatch):
    model = caption_model("t2vlp_stage2").eval()
    batch = t2.make_batch(n=3)
    ids, mask = batch["text_ids"], batch["text_mask"]
    inputs = []
    model.caption_decoder().register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        visual, valid = model.head.visual_tokens(batch["video"], batch["video_mask"])
        model.caption_logits(visual, valid, ids, mask)
        words = model.clip.encode_text(ids, mask, return_tokens=True)[1]
    assert torch.equal(inputs[0][:, visual.shape[1]:], words)  # training: w, not the token embeddings
    # Decoding feeds, step by step, the features the tower gives the caption so far at its last position.
    fed = []
    step_input = model.step_input

    def recording(like, use_cache=True):
        embed = step_input(like, use_cache)

        def call(new_ids):
            fed.append((new_ids, embed(new_ids)))
            return fed[-1][1]
        call.reorder = embed.reorder
        return call

    monkeypatch.setattr(model, "step_input", recording)
    for use_cache in (True, False):
        fed.clear()
        model.generate(batch["video"], batch["video_mask"], 1, max_len=5, use_cache=use_cache)
        with torch.no_grad():
            expected = model.clip.encode_text(torch.cat([i for i, _ in fed], 1), None, return_tokens=True)[1]
        got = torch.cat([f for _, f in fed], 1)
        # fp32, cached vs whole-sequence attention: the same sums in another order, well under 1e-5 of the scale
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        assert len(fed) >= 2


def test_beam_one_is_greedy_and_beam_search_finds_what_greedy_misses():
    from modules.components.decoder import beam_search, greedy_search

    model = caption_model().eval()
    batch = t2.make_batch(n=4)
    visual, valid = model.head.visual_tokens(batch["video"], batch["video_mask"])

    def run(search, **extra):
        stepper = CachedStepper(model.caption_decoder(), model.prefix(visual), valid)
        return search(stepper, lambda ids: model.embed(ids, visual),
                      lambda h: model.vocab_logits(h[:, -1]).float().log_softmax(-1), 4, model.sot, model.eot, 6,
                      torch.device("cpu"), **extra)

    with torch.no_grad():
        greedy = run(greedy_search)
        assert run(beam_search, beams=1) == greedy
        assert model.generate(batch["video"], batch["video_mask"], 1, max_len=6) == greedy

    # A 3-word vocabulary where greedy is short-sighted: step 1 p(a) = .6, p(b) = .4; after a the best
    # continuation has p = .4, after b p = .9: beam 2 finds "b x" (.36 > .24), greedy keeps "a ..".
    class Table:
        def __init__(self):
            self.history = torch.zeros(1, 0, dtype=torch.long)

        def step(self, token):
            self.history = torch.cat([self.history, token[:, :, 0].long()], dim=1)
            return self.history

        def reorder(self, index):
            self.history = self.history.index_select(0, index)

    sot, eot, a, b, x = 0, 4, 1, 2, 3
    probs = {(sot,): {a: .6, b: .4}, (sot, a): {x: .4, eot: .35, a: .25}, (sot, b): {x: .9, eot: .1},
             (sot, a, x): {eot: 1.0}, (sot, b, x): {eot: 1.0}, (sot, a, a): {eot: 1.0}, (sot, a, eot): {eot: 1.0},
             (sot, b, eot): {eot: 1.0}}

    def log_probs(history):
        rows = [[math.log(probs.get(tuple(h), {}).get(w, 1e-12)) for w in range(5)] for h in history.tolist()]
        return torch.tensor(rows)

    embed = lambda ids: ids[:, :, None].float()  # noqa: E731
    assert greedy_search(Table(), embed, log_probs, 1, sot, eot, 3, "cpu") == [[a, x]]
    assert beam_search(Table(), embed, log_probs, 1, sot, eot, 3, "cpu", beams=2, length_penalty=0.0) == [[b, x]]


# -- the teacher-forced loss -----------------------------------------------------------------------------


def test_teacher_forced_loss_is_the_mean_ce_of_every_token_after_sot():
    model = caption_model().eval()
    batch = t2.make_batch(n=3)
    ids, mask = batch["text_ids"], batch["text_mask"]
    with torch.no_grad():
        visual, valid = model.head.visual_tokens(batch["video"], batch["video_mask"])
        logits = model.caption_logits(visual, valid, ids, mask)
        loss = model.caption_loss(logits, ids, mask, StepContext(DistEnv()))
        # Changing a row's last real token (EOT) changes no logit before it: the text is causal.
        changed = ids.clone()
        last = int(mask[0].sum()) - 1
        changed[0, last] = 320
        assert torch.equal(model.caption_logits(visual, valid, changed, mask)[0, :last], logits[0, :last])
    terms = []
    for row in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[row, t + 1]:  # position t predicts token t + 1: SOT is never a target, EOT is
                scores = logits[row, t].double()
                log_z = math.log(sum(math.exp(s) for s in (scores - scores.max()).tolist())) + float(scores.max())
                terms.append(log_z - float(scores[ids[row, t + 1]]))
    assert len(terms) == int(mask.sum()) - ids.shape[0]
    assert abs(float(loss) - sum(terms) / len(terms)) < 1e-5


def test_training_step_sums_caption_and_the_heads_retrieval_loss():
    model = caption_model("t2vlp_stage2")
    losses = model(t2.make_batch(), StepContext(DistEnv()))
    assert {"caption", "retrieval", "retrieval_infonce", "retrieval_align"} <= set(losses)
    assert torch.allclose(losses["loss"], losses["caption"] + losses["retrieval"])
    only = caption_model("meanP", "--caption_retrieval_loss_weight", "0")(t2.make_batch(), StepContext(DistEnv()))
    assert set(only) == {"caption", "loss"}


# -- metrics ---------------------------------------------------------------------------------------------

PREDICTIONS = {"v1": "a red circle moves left", "v2": "a blue square moves down"}
REFERENCES = {"v1": ["a red circle moves left", "a red square moves up"],
              "v2": ["a blue square moves up quickly", "the blue square goes up"]}


def ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def cider_by_formula(predictions, references):
    """CIDEr as the COCO evaluation code computes it (the number papers report; CIDEr-D's form): per n, the
    tf-idf vectors (tf = raw count, idf = log(#videos) - log(max(1, #videos whose references hold the
    n-gram))), similarity sum_g min(h_g, r_g) r_g / (|h| |r|) times exp(-delta^2 / (2 * 6^2)) with delta the
    difference of the two sentences' bigram counts (the code's "length"); averaged over n = 1..4 and over
    the references, x 10; the corpus score is the mean over videos."""
    keys = sorted(predictions)
    df = Counter(g for k in keys for g in {g for r in references[k] for n in range(1, 5) for g in ngrams(r.split(), n)})

    def vector(text, n):
        return {g: c * (math.log(len(keys)) - math.log(max(1, df[g]))) for g, c in ngrams(text.split(), n).items()}

    def similarity(hyp, ref, n):
        u, v = vector(hyp, n), vector(ref, n)
        nu, nv = math.sqrt(sum(x * x for x in u.values())), math.sqrt(sum(x * x for x in v.values()))
        dot = sum(min(x, v.get(g, 0.0)) * v.get(g, 0.0) for g, x in u.items())
        delta = len(hyp.split()) - len(ref.split())  # bigram counts differ as the word counts do
        return (dot / (nu * nv) if nu and nv else dot) * math.exp(-delta ** 2 / (2 * 6.0 ** 2))

    per_video = [10 * sum(similarity(predictions[k], r, n) for n in range(1, 5) for r in references[k])
                 / (4 * len(references[k])) for k in keys]
    return sum(per_video) / len(per_video)


def no_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java on PATH
    assert not java_available()


def test_bleu_rouge_cider_equal_hand_computation_and_no_java_reports_one_line(monkeypatch, tmp_path):
    no_java(monkeypatch, tmp_path)
    scores = score_captions(PREDICTIONS, REFERENCES)
    assert scores.note == NO_JAVA and "METEOR" not in scores.metrics
    # BLEU-4 (corpus level): v1 matches its first reference: n-grams 5/5, 4/4, 3/3, 2/2. v2 "a blue square
    # moves down": "down" is in no reference: 4/5, 3/4, 2/3, 1/2. Reference length closest to each
    # candidate: 5 and 5 (= candidate lengths): brevity penalty 1.
    precisions = [(5 + 4) / (5 + 5), (4 + 3) / (4 + 4), (3 + 2) / (3 + 3), (2 + 1) / (2 + 2)]
    assert scores.metrics["BLEU-4"] == pytest.approx(100 * math.prod(precisions) ** 0.25, abs=1e-6)
    assert scores.metrics["BLEU-1"] == pytest.approx(100 * precisions[0], abs=1e-6)
    # ROUGE-L (beta 1.2): v1 LCS 5 with its first reference: F = 1. v2: LCS 4 with "a blue square moves up
    # quickly" (P 4/5, R 4/6), 2 with "the blue square goes up" (P 2/5, R 2/5); best P .8, best R 2/3.
    p, r, beta2 = 0.8, 4 / 6, 1.2 ** 2
    assert scores.metrics["ROUGE-L"] == pytest.approx(100 * (1 + (1 + beta2) * p * r / (r + beta2 * p)) / 2, abs=1e-6)
    assert scores.metrics["CIDEr"] == pytest.approx(100 * cider_by_formula(PREDICTIONS, REFERENCES), abs=1e-6)
    # The engine's table: the metrics without Java and one line saying what is missing.
    dataset = type("Split", (), {"num_videos": 2, "split": "test", "references": list(REFERENCES.values()),
                                 "records": [type("R", (), {"video_id": k})() for k in REFERENCES]})()
    args = main_task_caption.get_args(TINY)
    from modules.clip.tokenizer import get_tokenizer

    decoded = {i: get_tokenizer().encode(PREDICTIONS[k]) for i, k in enumerate(REFERENCES)}
    result = score_split(dataset, decoded, args, tmp_path)
    assert [line for line in result.table.splitlines() if "java" in line] == [f"WARNING: {NO_JAVA}"]
    assert result.metrics["CIDEr"] == scores.metrics["CIDEr"]
    assert result.table.splitlines()[-2].split() == ["BLEU-4", "ROUGE-L", "CIDEr"]
    assert [r["caption"] for r in json.loads((tmp_path / "captions_test.json").read_text())] == list(PREDICTIONS.values())


# -- the seed's command, data ----------------------------------------------------------------------------

SEED_MSVD_CAPTIONING = """--do_train --num_thread_reader=4 --cross_config_path ../CLIP-modules --epochs=10
--batch_size=32 --n_display=50 --data_path data/msvd --features_path data/msvd/MSVD_Videos --warmup_proportion 0.2
--output_dir ckpts/t2vlp_msvd_caption --lr 5e-5 --max_words 32 --max_frames 12 --batch_size_val 32 --datatype msvd
--expand_msrvtt_sentences --feature_framerate 1 --coef_lr 1e-3 --freeze_layer_num 0 --slice_framepos 2 --loose_type
--linear_patch 2d --sim_header meanP --init_model ckpts/t2vlp_stage2/model_final.pt"""


def test_tokenizer_speed_line_is_dropped_and_anything_else_on_stderr_passed_on(capfd):
    # The Java tokenizer writes to the process's stderr (file descriptor 2), not to sys.stderr.
    with _without_tokenizer_chatter():
        os.write(2, b"PTBTokenizer tokenized 123 tokens at 4567.8 tokens per second.\n")
        os.write(2, b"Exception in thread main: out of memory\n")
    err = capfd.readouterr().err
    assert "PTBTokenizer tokenized" not in err
    assert "Exception in thread main: out of memory" in err


def test_seed_captioning_command_parses():
    args = main_task_caption.get_args(["--local_rank", "0", *shlex.split(SEED_MSVD_CAPTIONING)])
    assert (args.task, args.method, args.t2vlp_stage, args.freeze_backbone) == ("caption", "t2vlp", "2", False)
    assert (args.lr, args.fusion_lr, args.coef_lr, args.warmup_proportion, args.epochs) == (5e-5, 5e-5, 1e-3, 0.2, 10)
    assert (args.datatype, args.data_path, args.features_path) == ("msvd", "data/msvd", "data/msvd/MSVD_Videos")
    assert (args.pretrained_dir, args.pretrained_clip_name, args.beam_size) == ("../CLIP-modules", "ViT-B/16", 1)
    assert (args.max_words, args.max_frames, args.batch_size, args.do_train) == (32, 12, 32, True)


@pytest.mark.parametrize("script, datatype", [("caption_msrvtt.sh", "msrvtt"), ("caption_msvd.sh", "msvd")])
def test_recipe_scripts_launch_main_task_caption(script, datatype, tmp_path):
    missing = run_script(script, {}, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "set DATA_DIR (" in missing.stderr
    result = run_script(script, {"DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path), "PATH": fake_torchrun(tmp_path)},
                        tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout.split() == ["PARSED", datatype, "t2vlp", "32", "12", "None", "main_task_caption.py"]


def test_jsonl_video_captions_layout(tmp_path):
    from dataloaders import load_records

    (tmp_path / "test.jsonl").write_text(json.dumps({"video": "a.mp4", "captions": ["one", "two"]}) + "\n")
    args = main_task_caption.get_args(["--datatype", "jsonl", "--data_path", str(tmp_path)])
    records = load_records(args, "test")
    assert [(r.video_path, r.captions) for r in records] == [(str(tmp_path / "a.mp4"), ["one", "two"])]


# -- 2 gloo ranks == 1 process ---------------------------------------------------------------------------


def _step(model, batch, env):
    return step_record(model, model(batch, StepContext(env)))


def _work(env, out_dir):
    local = local_rows(t2.make_batch(), env)
    for head in sorted(HEADS):
        model = torch.nn.parallel.DistributedDataParallel(caption_model(head), find_unused_parameters=True)
        torch.save(_step(model, local, env), f"{out_dir}/{head}_rank{env.rank}.pt")


def test_two_gloo_ranks_equal_one_process(tmp_path):
    run_on_ranks(_work, tmp_path)
    for head in sorted(HEADS):
        single = _step(caption_model(head), t2.make_batch(), DistEnv())
        assert any(n.startswith(("decoder.", "head.fusion.")) for n in single["grads"])
        for rank in range(2):
            assert_same_step(torch.load(tmp_path / f"{head}_rank{rank}.pt", weights_only=True), single, 1e-5, head)


# -- train, captions_test.json, --do_eval of the checkpoint ----------------------------------------------


def test_train_then_evaluate_the_checkpoint_on_the_toy_dataset(toy, tmp_path):  # noqa: F811
    data = ["--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--batch_size_val", "8", "--num_thread_reader", "0"]
    train = [*data, "--do_train", "--output_dir", str(tmp_path / "train"), *TINY, "--batch_size", "4",
             "--image_resolution", "32", "--lr", "1e-3", "--coef_lr", "1", "--epochs", "1", "--n_display", "1"]
    assert main_task_caption.main(train) == 0
    captions = json.loads((tmp_path / "train" / "captions_test.json").read_text())
    assert len(captions) == 6 and all(set(c) == {"video_id", "caption"} for c in captions)
    metrics = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()][-1]
    assert metrics["metrics"]["num_references"] == 60  # 1k-A lists 1 caption per test video; all 10 are references
    assert ("METEOR" in metrics["metrics"]) == java_available() and "CIDEr" in metrics["metrics"]
    checkpoint = tmp_path / "train" / "model_final.pt"
    assert main_task_caption.main([*data, "--do_eval", "--init_model", str(checkpoint), "--output_dir",
                                   str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "captions_test.json").read_text()) == captions
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()][-1]
    assert evaluated["metrics"] == metrics["metrics"]
    # The evaluation model is the saved one exactly (the decoder's depth came from the checkpoint).
    args = main_task_caption.get_args([*data, "--do_eval", "--init_model", str(checkpoint)])
    from engine.checkpoint import adopt_for_evaluation

    adopt_for_evaluation(args, [*data, "--do_eval", "--init_model", str(checkpoint)])
    args.decoder_layers = 6  # a default that differs from the checkpoint's 2
    model = CaptionTask().build_model(args)
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())

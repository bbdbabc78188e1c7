"""T2VLP (``--method t2vlp``): conformance tests of tube tokens, alignment and fusion, padding, the three stages' steps,
loading between stages, re-ranked evaluation, 2 gloo ranks (unequal batches) against one process, the
frozen_train_labels.json dataset, T2VLP's README commands and a stage 1 -> stage 2 -> re-ranked
retrieval round trip on generated videos."""
import argparse
import json
import logging
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import main_pretrain
import main_task_retrieval
from engine.checkpoint import model_flag_names
from engine.distributed import DistEnv
from engine.evaluate import EncodedSplit, evaluate_encoded
from engine.rerank import OFFSET, rerank_candidates, topk_per_row
from engine.step import StepContext
from gloo import assert_same_step, run_on_ranks, step_record
from modules.clip import LayerNorm, Transformer, VisionConfig, build_clip, tokenize
from modules.components.fusion import HardNegativeSampler, MatchHead, prefix_lm_mask
from modules.components.tube import TubeTokens, alignment_weights, local_alignment
from modules.factory import add_model_args, build_model, load_init_model
from modules.heads import get_head

FRAMES = 4
NO_DROPOUT = ["--fusion_dropout", "0"]


def t2vlp_args(*flags):
    args = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--method", "t2vlp", "--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1",
         *flags])
    args.max_frames, args.max_words, args.seed = FRAMES, 12, 0
    return args


def t2vlp_model(*flags, seed=0):
    torch.manual_seed(seed)
    return build_model(t2vlp_args(*flags))


def make_batch(n=4, frames=FRAMES, seed=1):
    g = torch.Generator().manual_seed(seed)
    words = "red green blue pink gray gold teal navy".split()
    ids, mask = tokenize([f"a {words[i]} ball rolls past clip {i} slowly" for i in range(n)], 12)
    video_mask = torch.ones(n, frames, dtype=torch.long)
    video_mask[1, frames - 1] = 0
    return {"text_ids": ids, "text_mask": mask, "video": torch.randn(n, frames, 3, 32, 32, generator=g),
            "video_mask": video_mask}


def step(model, batch, env=DistEnv()):
    return model(batch, StepContext(env=env))


def deep_clip(layers=4):
    torch.manual_seed(0)
    return build_clip({"embed_dim": 32, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": layers,
                                                   "heads": 2},
                       "text": {"context_length": 77, "vocab_size": 49408, "width": 32, "layers": 2, "heads": 2}})


# -- 8. joint blocks -----------------------------------------------------------------------------------


def test_joint_blocks_mix_frames_only_in_the_last_blocks_and_hide_padding():
    clip = deep_clip(layers=4).eval()
    video = torch.randn(2, 3, 3, 32, 32)
    changed = video.clone()
    changed[:, 2] += 1.0  # perturb frame j = 2
    with torch.no_grad():
        out, taps = clip.encode_frames(video, taps=(2,), joint_last_n=2)
        out_changed, taps_changed = clip.encode_frames(changed, taps=(2,), joint_last_n=2)
        alone, _ = clip.encode_frames(video)
        alone_changed, _ = clip.encode_frames(changed)
    # Frame i = 0 enters block 2 (the first joint block) unchanged, and leaves changed: only blocks 2-3 mix.
    torch.testing.assert_close(taps_changed[2][:, 0], taps[2][:, 0], rtol=0, atol=0)
    assert (out_changed[:, 0] - out[:, 0]).abs().max() > 1e-4
    torch.testing.assert_close(alone_changed[:, :2], alone[:, :2], rtol=0, atol=0)  # joint_last_n = 0
    # Padded frames are hidden from the joint attention: garbage in frame 2 of a 2-frame clip changes nothing,
    # and the padded clip equals the same clip without the padded slot.
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        padded, _ = clip.encode_frames(video, joint_last_n=2, frame_mask=mask)
        padded_changed, _ = clip.encode_frames(changed, joint_last_n=2, frame_mask=mask)
        short, _ = clip.encode_frames(video[:1, :2], joint_last_n=2)
        unmasked, _ = clip.encode_frames(video, joint_last_n=2, frame_mask=torch.ones(2, 3))
    torch.testing.assert_close(padded_changed[0, :2], padded[0, :2], rtol=0, atol=0)
    torch.testing.assert_close(padded[0, :2], short[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(unmasked, out)  # an all-valid mask takes the unmasked path: bit-identical
    with pytest.raises(ValueError, match="joint_last_n must be in 1..4"):
        clip.encode_frames(video, joint_last_n=5)


# -- 9. tube pooling -----------------------------------------------------------------------------------


def test_tube_pooling_weights_peak_shape_and_frame_order():
    clip = deep_clip()
    tube = TubeTokens(clip.visual, 32, num_centers=3, num_blocks=2)
    for ours, theirs in zip(tube.local.resblocks, clip.visual.transformer.resblocks[2:]):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 17, 32, generator=g)
    tokens[:, :, 1:] = nn.functional.normalize(tokens[:, :, 1:], dim=-1)  # unit patches: z_p . z_p is the peak
    mask = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        tube.centers[1] = 60.0 * tokens[0, 3, 1 + 7]  # centre 1 = a large multiple of patch 7 of frame 3
        weights = torch.einsum("btpw,kw->btkp", tokens[:, :, 1:], tube.centers).softmax(-1)
        head, pooled = tube.pool(tokens, mask)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5, 3))  # over the 16 patches
        torch.testing.assert_close(pooled[0, 1, 3], tokens[0, 3, 8], atol=1e-4, rtol=0)
        torch.testing.assert_close(head, tokens[:, :, 0].mean(1))
        out = tube(tokens, mask)
        permuted = tube(tokens[:, torch.tensor([4, 2, 0, 1, 3])], mask)
    assert out.shape == (2, 3, 32)
    torch.testing.assert_close(permuted, out, atol=1e-5, rtol=1e-5)  # no frame positions
    # ViT-B/16 shapes: 12 frames x 197 tokens x 768 -> (B, 8, 512) (a stand-in tower with B/16's last 2 blocks).
    visual = SimpleNamespace(cfg=VisionConfig(224, 16, 768, 2, 12), transformer=Transformer(768, 2, 12),
                             ln_post=LayerNorm(768), proj=torch.randn(768, 512))
    with torch.no_grad():
        tubes = TubeTokens(visual, 512, 8, 2)(torch.randn(2, 12, 197, 768), torch.ones(2, 12))
    assert tubes.shape == (2, 8, 512)


# -- 10. alignment -------------------------------------------------------------------------------------


def test_alignment_ignores_padding_and_is_zero_when_the_attended_text_is_the_tube():
    g = torch.Generator().manual_seed(0)
    queries, words = torch.randn(3, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    word_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    beta = alignment_weights(queries, words, word_mask)
    assert torch.equal(beta[0, :, 3:], torch.zeros(3, 2))  # padded tokens get exactly 0
    torch.testing.assert_close(beta.sum(-1), torch.ones(2, 3))
    expected = (queries @ words[0, :3].t()).softmax(-1)  # by hand over the 3 valid tokens
    torch.testing.assert_close(beta[0, :, :3], expected)
    attended = torch.einsum("bkl,bld->bkd", beta, words)
    assert local_alignment(queries, words, word_mask, attended).item() == 0.0
    tubes = attended + 0.5
    torch.testing.assert_close(local_alignment(queries, words, word_mask, tubes), torch.tensor(0.25))


# -- 11. hard negatives --------------------------------------------------------------------------------


def test_hard_negatives_never_diagonal_and_follow_off_diagonal_softmax():
    scores = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.5, 2.0, 1.5, -1.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 4.0]])
    sampler = HardNegativeSampler(seed=0)
    draws = 2000
    videos = torch.zeros(4, 4)
    texts = torch.zeros(4, 4)
    generator = torch.Generator().manual_seed(1)
    for _ in range(draws):
        v, t = sampler(scores, generator=generator)
        videos[torch.arange(4), v] += 1
        texts[torch.arange(4), t] += 1
    assert videos.diagonal().sum() == 0 and texts.diagonal().sum() == 0
    for counts, matrix in ((videos, scores), (texts, scores.t())):
        off = matrix.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf")).softmax(-1)
        assert (counts / draws - off).abs().max() < 0.04  # 4 standard errors at 2000 draws
    # The draw counter seeds the next generator: two samplers with the same seed draw alike.
    a, b = HardNegativeSampler(seed=5), HardNegativeSampler(seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a(scores), b(scores))) and int(a.draws) == 1
    with pytest.raises(ValueError, match="at least 2 pairs"):
        a(torch.zeros(1, 1))


# -- 12. fusion masks ----------------------------------------------------------------------------------


def test_prefix_lm_mask():
    visual_valid, text_valid = torch.tensor([[1, 1, 0, 1]]), torch.tensor([[1, 1, 1, 0]])
    mask = prefix_lm_mask(visual_valid, text_valid)[0]
    assert mask.dtype == torch.float32 and mask.shape == (8, 8)
    assert torch.isinf(mask[:4, 4:]).all()  # visual rows never see text
    text_rows = mask[4:, 4:]
    assert torch.equal(torch.isfinite(text_rows[:, :3]), torch.ones(4, 3, dtype=torch.bool).tril())
    assert torch.isinf(mask[:, 2]).all() and torch.isinf(mask[:, 7]).all()  # padded frame / padded token
    assert torch.isfinite(mask[4:, [0, 1, 3]]).all()  # text rows see every valid visual key


def test_mlm_rows_are_zero_and_their_ids_are_zero_before_the_text_tower(monkeypatch):
    model = t2vlp_model("--t2vlp_stage", "2", "--mlm_probability", "0.3", *NO_DROPOUT)
    seen = {"ids": [], "fused": []}
    encode_text, fuse = model.clip.encode_text, model._fuse

    def record_text(ids, *a, **k):
        seen["ids"].append(ids.clone())
        return encode_text(ids, *a, **k)

    def record_fuse(visual, visual_valid, words, text_mask, mask=None):
        seen["fused"].append((words.detach().clone(), mask))
        return fuse(visual, visual_valid, words, text_mask, mask)

    monkeypatch.setattr(model.clip, "encode_text", record_text)
    monkeypatch.setattr(model, "_fuse", record_fuse)
    batch = make_batch()
    losses = step(model, batch)
    assert set(losses) == {"loss", "align", "vtm", "mlm", "plm"}
    original, corrupted = seen["ids"]
    selected = corrupted != original
    assert torch.equal(original, batch["text_ids"]) and selected.any(1).all()  # at least one word per caption
    assert torch.equal(corrupted[selected], torch.zeros(int(selected.sum()), dtype=torch.long))
    lengths = batch["text_mask"].sum(1)
    assert not selected[:, 0].any() and not selected[torch.arange(4), lengths - 1].any()  # never SOT / EOT
    mlm_words = seen["fused"][1][0]  # [VTM, MLM, PLM]
    assert torch.equal(mlm_words[selected], torch.zeros(int(selected.sum()), mlm_words.shape[-1]))
    assert seen["fused"][2][1].shape[-1] == seen["fused"][2][1].shape[-2]  # PLM: the full (S, S) mask


# -- 13. re-ranking ------------------------------------------------------------------------------------


class StubHead:
    """Known scores and matching probabilities, to check the re-ranking arithmetic."""

    def __init__(self, sim, p_match, scale=5.0):
        self.sim, self.p, self.scale, self.training = sim, p_match, scale, False

    def can_rerank(self):
        return True

    def similarity(self, text, video):
        return self.sim[text][:, video]

    def match_probability(self, text, video, t, v):
        return self.p[text[t], video[v]]

    def score_scale(self):
        return self.scale

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def test_rerank_candidates_outrank_the_rest_ordered_by_softmax_times_p_match():
    g = torch.Generator().manual_seed(0)
    n, k = 50, 32
    sim, p = torch.rand(n, n, generator=g) * 2 - 1, torch.rand(n, n, generator=g)
    head = StubHead(sim, p)
    encoded = EncodedSplit(torch.arange(n), torch.arange(n), torch.arange(n), n)
    args = SimpleNamespace(rerank_topk=k, rerank_batch=7, eval_tile_elements=64)
    result = rerank_candidates(head, encoded, args)
    t2v, v2t = result.transforms()
    rows = torch.arange(n)
    scores = t2v(sim, rows, rows)
    for q in range(n):
        top = sim[q].topk(k).indices
        assert set(result.t2v_candidates[q].tolist()) == set(top.tolist())
        others = torch.ones(n, dtype=torch.bool)
        others[top] = False
        assert scores[q, top].min() > scores[q, others].max()  # every candidate above every other video
        expected = (5.0 * sim[q, top]).softmax(0) * OFFSET * p[q, top] + OFFSET
        torch.testing.assert_close(scores[q, top], expected)
        torch.testing.assert_close(scores[q, others], sim[q, others])  # non-candidates keep their raw score
    columns = v2t(sim, rows, rows)  # V2T: the candidates of a video are captions, re-scored down its column
    top = sim[:, 3].topk(k).indices
    torch.testing.assert_close(columns[top, 3], (5.0 * sim[top, 3]).softmax(0) * OFFSET * p[top, 3] + OFFSET)
    assert result.passes == 2 * n * k  # every query's candidates scored as its own group, in both directions
    # Tiled evaluation with the same transforms over a 64-element tile grid gives the matrix's ranks.
    values, indices = topk_per_row(lambda r, c: sim[r][:, c], n, n, 3, tile_elements=64)
    assert torch.equal(indices, sim.topk(3).indices)


class RecordingStub(StubHead):
    """A StubHead that keeps the (text, video) index tensors of every match_probability call."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def match_probability(self, text, video, t, v):
        self.calls.append((t.clone(), v.clone()))
        return super().match_probability(text, video, t, v)


def test_rerank_scores_each_querys_candidates_as_one_group_t2v_and_v2t_apart():
    g = torch.Generator().manual_seed(1)
    n, k = 6, 3
    head = RecordingStub(torch.rand(n, n, generator=g), torch.rand(n, n, generator=g))
    args = SimpleNamespace(rerank_topk=k, rerank_batch=7, eval_tile_elements=64)
    result = rerank_candidates(head, EncodedSplit(torch.arange(n), torch.arange(n), torch.arange(n), n), args)
    seen = {"t2v": [], "v2t": []}
    for t, v in head.calls:
        assert t.shape == v.shape and t.dim() == 2 and t.shape[1] == k and t.shape[0] <= 7 // k  # whole groups
        if bool((t == t[:, :1]).all()):  # one caption per row, its K candidate videos
            assert all(torch.equal(v[r], result.t2v_candidates[t[r, 0]]) for r in range(t.shape[0]))
            seen["t2v"] += t[:, 0].tolist()
        else:  # one video per row, its K candidate captions: never in the same call as a T2V group
            assert bool((v == v[:, :1]).all())
            assert all(torch.equal(t[r], result.v2t_candidates[v[r, 0]]) for r in range(t.shape[0]))
            seen["v2t"] += v[:, 0].tolist()
    assert sorted(seen["t2v"]) == sorted(seen["v2t"]) == list(range(n))


def t2vlp_match_logits_by_hand(visual, text, unmatch, match):
    """T2VLP's VTM logits [v̂ M⁻ t̃, v̂ M⁺ t̃] in fp64, element by element: v̂ = v / |v| per row, and
    t̃[i, d] = t[i, d] / sqrt(Σ_k t[k, d]²), each text dimension divided by its norm over the K rows."""
    visual, text = visual.double(), text.double()
    rows, dims = text.shape
    column_norm = [sum(float(text[r, d]) ** 2 for r in range(rows)) ** 0.5 for d in range(dims)]
    out = torch.empty(rows, 2, dtype=torch.float64)
    for i in range(rows):
        v_hat = visual[i] / float(visual[i].norm())
        t_tilde = torch.tensor([float(text[i, d]) / column_norm[d] for d in range(dims)], dtype=torch.float64)
        for j, m in enumerate((unmatch, match)):
            out[i, j] = sum(float(v_hat[a]) * float(m[a, b]) * float(t_tilde[b]) for a in range(dims) for b in range(dims))
    return out


def _fp32_tolerance(head):
    """The head computes in fp32. A logit is Σ_ab v̂_a M_ab t̃_b with |v̂_a|, |t̃_b| <= 1: two length-D sums
    (error <= D·2⁻²⁴ of the summed magnitudes each) plus the normalisations' few roundings (relative
    2⁻²⁴ each), so its error is below (2·D + 4)·2⁻²⁴·Σ_ab |M_ab| on any BLAS and thread count."""
    dims = head.match.shape[0]
    return (2 * dims + 4) * 2 ** -24 * float(max(head.match.detach().abs().sum(), head.unmatch.detach().abs().sum()))


def test_match_head_normalises_text_across_the_candidates_as_t2vlp_does():
    torch.manual_seed(0)
    head = MatchHead(8, dropout=0.2).eval()
    visual, text = torch.randn(5, 8), torch.randn(5, 8) * torch.linspace(0.5, 3, 8)
    expected = t2vlp_match_logits_by_hand(visual, text, head.unmatch.detach(), head.match.detach())
    tol = _fp32_tolerance(head)
    torch.testing.assert_close(head(visual, text).double(), expected, atol=tol, rtol=0)
    # Groups along dim -2: (2, 5, 8) scores two groups of five, each normalised on its own.
    both = head(torch.stack([visual, visual.flip(0)]), torch.stack([text, 2 * text[:, :].roll(1, 0)])).double()
    torch.testing.assert_close(both[0], expected, atol=tol, rtol=0)
    torch.testing.assert_close(both[1], t2vlp_match_logits_by_hand(visual.flip(0), 2 * text.roll(1, 0),
                                                                   head.unmatch.detach(), head.match.detach()),
                               atol=tol, rtol=0)
    # A larger group's Σt² given from outside (training: the global batch) replaces the rows' own.
    sumsq = text.square().sum(0, keepdim=True)
    torch.testing.assert_close(head(visual[:2], text[:2], sumsq).double(), expected[:2], atol=tol, rtol=0)
    # "vector": each text output divided by its own norm, by hand.
    head.norm = "vector"
    per_vector = [[float(visual[i] / visual[i].norm() @ m.detach() @ (text[i] / text[i].norm())) for m in
                   (head.unmatch, head.match)] for i in range(5)]
    torch.testing.assert_close(head(visual, text).double(), torch.tensor(per_vector, dtype=torch.float64), atol=tol,
                               rtol=0)


@pytest.mark.parametrize("norm", ["vector", "candidates"])
def test_match_head_drops_out_after_normalising(norm):
    torch.manual_seed(0)
    head = MatchHead(8, dropout=0.5).train()
    head.norm = norm
    visual, text = torch.randn(5, 8), torch.randn(5, 8)
    torch.manual_seed(3)
    logits = head(visual, text)
    torch.manual_seed(3)  # the same draws: dropout's mask depends only on the shape, v's first, then t's
    keep_visual, keep_text = (nn.Dropout(0.5)(torch.ones(5, 8)) for _ in range(2))  # 0 or 1/(1-p) = 2
    v_hat = visual / visual.norm(dim=-1, keepdim=True) * keep_visual
    t_tilde = text / text.norm(dim=-1 if norm == "vector" else 0, keepdim=True) * keep_text
    expected = torch.stack([((v_hat @ m.detach()) * t_tilde).sum(-1) for m in (head.unmatch, head.match)], -1)
    assert (keep_visual == 0).any() and (keep_text == 0).any()
    torch.testing.assert_close(logits, expected, atol=_fp32_tolerance(head), rtol=0)


def test_vtm_training_normalises_text_over_the_global_batchs_3b_sequences():
    model = t2vlp_model("--t2vlp_stage", "retrieval", *NO_DROPOUT)
    seen = []
    model.match.register_forward_hook(lambda module, inputs, output: seen.append((inputs, output)))
    step(model, make_batch())
    (visual, text, sumsq), logits = seen[0]
    assert visual.shape == text.shape and text.shape[0] == 12  # 4 positives, 4 + 4 hard negatives
    torch.testing.assert_close(sumsq, text.float().square().sum(0, keepdim=True))
    expected = t2vlp_match_logits_by_hand(visual.detach(), text.detach(), model.match.unmatch.detach(),
                                          model.match.match.detach())
    torch.testing.assert_close(logits.detach().double(), expected, atol=_fp32_tolerance(model.match), rtol=0)


def test_a_pairs_p_match_depends_on_its_fellow_candidates_only_under_candidates_norm():
    assert "t2vlp_match_norm" in model_flag_names()  # recorded in checkpoints, restored with them
    batch = make_batch()
    pair_p = {}
    for norm in ("candidates", "vector"):
        model = t2vlp_model("--t2vlp_stage", "retrieval", "--t2vlp_match_norm", norm).eval()
        assert model.match.norm == norm
        with torch.no_grad():
            text = model.encode_text(batch["text_ids"], batch["text_mask"])
            video = model.encode_video(batch["video"], batch["video_mask"])
            # caption 0 with video 0, once beside video 1 and once beside video 2
            pair_p[norm] = [float(model.match_probability(text, video, torch.zeros(2, dtype=torch.long),
                                                          torch.tensor([0, other]))[0]) for other in (1, 2)]
            alone = float(model.match_probability(text, video, torch.tensor([0]), torch.tensor([0]))[0])
        if norm == "vector":
            assert pair_p[norm][0] == pytest.approx(pair_p[norm][1], abs=1e-6) == pytest.approx(alone, abs=1e-6)
    assert t2vlp_model("--t2vlp_stage", "retrieval").match.norm == "candidates"  # the default: T2VLP's
    assert abs(pair_p["candidates"][0] - pair_p["candidates"][1]) > 1e-3


def test_a_converted_t2vlp_file_is_rescored_with_t2vlps_normalisation(tmp_path):
    from test_converters import T2VLP_MODELS, parse, save_as_seed, tiny

    path = save_as_seed(tiny(T2VLP_MODELS["downstream-retrieval"]), "t2vlp", tmp_path / "pytorch_model.bin.4")
    args = parse("--init_model", str(path))
    assert build_model(args).match.norm == "candidates" == args.t2vlp_match_norm


def test_evaluation_reports_raw_and_reranked_side_by_side():
    model = t2vlp_model("--t2vlp_stage", "retrieval", "--rerank_topk", "2").eval()
    batch = make_batch()
    with torch.no_grad():
        encoded = EncodedSplit(model.encode_text(batch["text_ids"], batch["text_mask"]),
                               model.encode_video(batch["video"], batch["video_mask"]), torch.arange(4), 4)
    args = SimpleNamespace(rerank_topk=2, rerank_batch=3, eval_tile_elements=1 << 20, legacy_metrics=False, dsl=False,
                           qb_norm=False, eval_query_subset=None)
    result = evaluate_encoded(model, encoded, args)
    assert {"t2v/R1", "v2t/R1", "rerank/t2v/R1", "rerank/v2t/R1"} <= set(result.metrics)
    assert 4 <= result.metrics["rerank/fusion_passes"] <= 16 and result.metrics["rerank/topk"] == 2
    assert "rerank/t2v" in result.table and "fusion passes" in result.table
    # A caption whose right video is a candidate is ranked by softmax * p_match: check one by hand.
    rr = rerank_candidates(model, encoded, args)
    sim = model.similarity(encoded.text, encoded.video)
    with torch.no_grad():
        p = model.match_probability(encoded.text, encoded.video, torch.zeros(2, dtype=torch.long),
                                    rr.t2v_candidates[0])
    expected = (model.score_scale() * sim[0, rr.t2v_candidates[0]]).double().softmax(0).float() * OFFSET * p + OFFSET
    torch.testing.assert_close(rr.t2v_scores[0], expected)
    with torch.no_grad():  # V2T: video 1's candidate captions are their own group
        p = model.match_probability(encoded.text, encoded.video, rr.v2t_candidates[1], torch.ones(2, dtype=torch.long))
    expected = (model.score_scale() * sim[rr.v2t_candidates[1], 1]).double().softmax(0).float() * OFFSET * p + OFFSET
    torch.testing.assert_close(rr.v2t_scores[1], expected)


# -- padding, stages, loading --------------------------------------------------------------------------


def test_a_padded_clip_gives_the_features_of_the_unpadded_clip():
    model = t2vlp_model("--t2vlp_stage", "retrieval").eval()
    batch = make_batch()
    video, mask = batch["video"][:1].clone(), torch.tensor([[1, 1, 0, 0]])
    garbage = video.clone()
    garbage[0, 2:] = torch.randn(2, 3, 32, 32) * 5
    with torch.no_grad():
        padded = model.encode_video(video, mask)
        noisy = model.encode_video(garbage, mask)
        short = model.encode_video(video[:, :2], torch.ones(1, 2, dtype=torch.long))
        text = model.encode_text(batch["text_ids"][:1], batch["text_mask"][:1])
        p = [model.match_probability(text, features, torch.tensor([0]), torch.tensor([0])) for features in (padded, noisy)]
    for ours, reference in ((padded[0], short[0]), (padded[1][:, :2], short[1]), (padded[2], short[2])):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)  # v, valid frames, tube tokens
    for ours, other in ((padded[0], noisy[0]), (padded[1][:, :2], noisy[1][:, :2]), (padded[2], noisy[2])):
        torch.testing.assert_close(ours, other, atol=1e-6, rtol=1e-6)  # garbage in the padded slots
    torch.testing.assert_close(p[0], p[1], atol=1e-6, rtol=1e-6)  # the fusion never reads padded slots


@pytest.mark.parametrize("stage, terms", [("1", {"infonce", "align"}), ("2", {"align", "vtm", "mlm", "plm"}),
                                          ("retrieval", {"infonce", "align", "vtm"})])
def test_each_stage_sums_its_terms_and_trains_every_trainable_parameter(stage, terms):
    model = t2vlp_model("--t2vlp_stage", stage, *NO_DROPOUT)
    losses = step(model, make_batch())
    assert set(losses) == {"loss", *terms} and all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["loss"], sum(losses[t] for t in terms))
    losses["loss"].backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.clip.logit_scale.requires_grad == (stage != "2")  # stage 2 only samples with it
    assert hasattr(model, "vocab_head") == (stage == "2") and model.can_rerank() == (stage != "1")


def test_freeze_backbone_trains_the_fusion_modules_only():
    model = t2vlp_model("--t2vlp_stage", "2", "--freeze_backbone", *NO_DROPOUT)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fusion", "match", "vocab_head"}
    reference = t2vlp_model("--t2vlp_stage", "2", *NO_DROPOUT)  # same init, same seed
    frozen_losses, losses = step(model, make_batch()), step(reference, make_batch())
    for name in ("vtm", "mlm", "plm", "align"):
        torch.testing.assert_close(frozen_losses[name], losses[name])  # the same function, fewer gradients
    assert not frozen_losses["align"].requires_grad
    with pytest.raises(ValueError, match="--freeze_backbone applies to --t2vlp_stage 2"):
        t2vlp_model("--freeze_backbone")
    with pytest.raises(ValueError, match="--joint_layers must be in 1..2"):
        t2vlp_model("--joint_layers", "3")
    with pytest.raises(ValueError, match="at least 2"):
        model.check_batch(1)


def test_parameter_groups_and_counts_at_vit_b16():
    model = t2vlp_model("--t2vlp_stage", "retrieval", "--fusion_lr", "5e-6", "--tube_lr", "1e-5")
    groups = model.param_groups(lr=5e-5, coef_lr=1e-3, weight_decay=0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["clip.visual.proj"]["lr"] == pytest.approx(5e-8)
    assert by_name["tube.centers"]["lr"] == 1e-5 and by_name["tube.local.resblocks.0.attn.in_proj_weight"]["lr"] == 1e-5
    assert by_name["fusion.transformer.resblocks.0.mlp.c_fc.weight"]["lr"] == 5e-6
    assert by_name["match.match"]["lr"] == 5e-6 and by_name["fusion.transformer.resblocks.0.ln_1.weight"]["weight_decay"] == 0
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    # ViT-B/16: tube = 8x768 centres + 768->512 projection + 2 vision blocks (7,087,872 each) + ln_post + 768x512;
    # fusion = 6 text blocks (3,152,384 each) + 77x512 positions; VTM = 2 x 512x512; vocab = 512x512 + 49,408.
    with torch.device("meta"):
        big = get_head("t2vlp")(build_clip("ViT-B/16", device="meta"), t2vlp_args("--t2vlp_stage", "2"))
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in big.named_children()}
    assert counts["tube"] == 8 * 768 + 768 * 512 + 512 + 2 * 7_087_872 + 2 * 768 + 768 * 512
    assert counts["fusion"] == 6 * 3_152_384 + 77 * 512
    assert counts["match"] == 2 * 512 * 512 and counts["vocab_head"] == 512 * 512 + 49_408


def test_loading_between_stages(tmp_path, caplog):
    stage1 = t2vlp_model(seed=1)
    with torch.no_grad():
        for p in stage1.clip.text.parameters():
            p.add_(0.1)  # trained text blocks, different from any fresh model's
    torch.save({"model": stage1.state_dict()}, tmp_path / "stage1.pt")
    stage2 = t2vlp_model("--t2vlp_stage", "2")
    with caplog.at_level(logging.INFO):
        load_init_model(stage2, str(tmp_path / "stage1.pt"))
    assert "fusion.* not in the checkpoint: its blocks from the loaded CLIP's first text blocks" in caplog.text
    assert "vocab_head.* not in the checkpoint: fresh" in caplog.text
    for ours, theirs in zip(stage2.fusion.transformer.resblocks, stage1.clip.text.transformer.resblocks):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert torch.equal(stage2.tube.centers, stage1.tube.centers)
    torch.save({"model": stage2.state_dict()}, tmp_path / "stage2.pt")
    retrieval = t2vlp_model("--t2vlp_stage", "retrieval")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_init_model(retrieval, str(tmp_path / "stage2.pt"))
    assert "dropped" in caplog.text and "vocab_head" in caplog.text
    assert all(torch.equal(v, stage2.state_dict()[k]) for k, v in retrieval.state_dict().items())
    # A plain CLIP checkpoint: the tube's local blocks start from its last vision blocks.
    clip_only = {f"clip.{k}": v for k, v in stage1.clip.state_dict().items()}
    torch.save(clip_only, tmp_path / "clip.pt")
    fresh = t2vlp_model(seed=2)
    load_init_model(fresh, str(tmp_path / "clip.pt"))
    for ours, theirs in zip(fresh.tube.local.resblocks, stage1.clip.visual.transformer.resblocks):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


# -- 2 gloo ranks with unequal batches == 1 process ----------------------------------------------------

DDP_STAGES = [("1",), ("2",)]  # retrieval runs the same terms (VTM on detached inputs)


def _step_result(model, batch, env):
    head = getattr(model, "module", model)
    drawn = []
    hook = head.negatives.register_forward_hook(lambda m, i, o: drawn.append(o)) if hasattr(head, "negatives") else None
    record = step_record(model, step(model, batch, env))
    if hook is not None:
        hook.remove()
    return {**record, "negatives": drawn}


def _work(env, out_dir):
    rows = slice(0, 3) if env.rank == 0 else slice(3, 4)  # unequal per-rank batches: 3 + 1
    local = {k: v[rows] for k, v in make_batch().items()}
    for (stage,) in DDP_STAGES:
        model = nn.parallel.DistributedDataParallel(t2vlp_model("--t2vlp_stage", stage, *NO_DROPOUT))
        torch.save(_step_result(model, local, env), f"{out_dir}/stage{stage}_rank{env.rank}.pt")


def test_two_gloo_ranks_with_unequal_batches_equal_one_process(tmp_path):
    run_on_ranks(_work, tmp_path)
    for (stage,) in DDP_STAGES:
        single = _step_result(t2vlp_model("--t2vlp_stage", stage, *NO_DROPOUT), make_batch(), DistEnv())
        assert len(single["grads"]) > 30
        for rank in range(2):
            result = torch.load(tmp_path / f"stage{stage}_rank{rank}.pt", weights_only=True)
            assert_same_step(result, single, 1e-5, stage)
            assert len(result["negatives"]) == len(single["negatives"])
            for ours, theirs in zip(result["negatives"], single["negatives"]):
                assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # the same hard negatives


# -- the frozen_train_labels.json dataset --------------------------------------------------------------


def test_frozen_dataset_groups_captions_and_refuses_tfrecords(tmp_path):
    from dataloaders import DataError, load_records
    from main_pretrain import get_args

    rows = [{"video_id": "a1", "caption": "a dog runs"}, {"video_id": "b2", "caption": "a cat"},
            {"video_id": "a1", "caption": "the dog again"}]
    (tmp_path / "frozen_train_labels.json").write_text(json.dumps(rows))
    args = get_args(["--datatype", "frozen", "--data_path", str(tmp_path / "frozen_train_labels.json")])
    records = load_records(args, "train")
    assert [(r.video_id, r.captions) for r in records] == [("a1", ["a dog runs", "the dog again"]), ("b2", ["a cat"])]
    assert records[0].video_path == str(tmp_path / "a1.mp4")
    with pytest.raises(DataError, match="frozen has no test split"):
        load_records(args, "test")
    tfrecords = tmp_path / "WebVid_TFRecord"
    tfrecords.mkdir()
    (tfrecords / "path-00000.tfrecord").write_bytes(b"")
    args.features_path = str(tfrecords)
    with pytest.raises(DataError, match="TFRecord frames, which are not read.*make_shards.py"):
        load_records(args, "train")
    (tmp_path / "frozen_train_labels.json").write_text(json.dumps([{"video": "x"}]))
    args.features_path = None
    with pytest.raises(DataError, match="item 0: expected an object with video_id and caption"):
        load_records(args, "train")


# -- T2VLP's README commands (its light launcher replaced by torchrun) -------------------------

SEED_STAGE1 = """--do_train --num_thread_reader=2 --visual_pretrain_path ./CLIP-modules/ViT-B-16.pt
--cross_config_path ./CLIP-modules --epochs=5 --batch_size=32 --n_display=50
--train_csv data/t2vlp/frozen_train_labels.json --val_csv data/t2vlp/MSRVTT_JSFUSION_test.csv
--data_path data/t2vlp/frozen_train_labels.json --features_path data/t2vlp/MSRVTT_Videos --warmup_proportion 0.1
--output_dir ckpts/t2vlp_stage1 --lr 1e-4 --max_words 32 --max_frames 12 --batch_size_val 32 --datatype msrvtt
--expand_msrvtt_sentences --feature_framerate 1 --coef_lr 1e-3 --freeze_layer_num 0 --slice_framepos 2
--loose_type --linear_patch 2d --sim_header meanP"""
SEED_STAGE2 = """--do_train --num_thread_reader=4 --cross_config_path ./CLIP-modules --epochs=10 --batch_size=32
--n_display=50 --train_csv data/t2vlp/frozen_train_labels.json --val_csv data/t2vlp/MSRVTT_JSFUSION_test.csv
--data_path data/t2vlp/frozen_train_labels.json --features_path data/t2vlp/MSRVTT_Videos --warmup_proportion 0.2
--output_dir ckpts/t2vlp_stage2 --lr 1e-5 --max_words 32 --max_frames 12 --batch_size_val 32 --datatype msrvtt
--expand_msrvtt_sentences --feature_framerate 2 --coef_lr 1e-3 --freeze_layer_num 0 --slice_framepos 2
--loose_type --linear_patch 2d --sim_header meanP --init_model ckpts/t2vlp_stage1/model_final.pt"""
SEED_MSRVTT = """--do_train --num_thread_reader=4 --epochs=5 --batch_size=32 --n_display=50
--cross_config_path ../CLIP-modules --train_csv data/msrvtt/MSRVTT_train.9k.csv
--val_csv data/msrvtt/MSRVTT_JSFUSION_test.csv --data_path data/msrvtt/MSRVTT_data.json
--features_path data/msrvtt/MSRVTT_Videos --warmup_proportion 0.1 --output_dir ckpts/t2vlp_msrvtt --lr 5e-5
--max_words 32 --max_frames 12 --batch_size_val 32 --datatype msrvtt --expand_msrvtt_sentences
--feature_framerate 2 --coef_lr 1e-3 --freeze_layer_num 0 --slice_framepos 2 --loose_type --linear_patch 2d
--sim_header meanP --init_model ckpts/t2vlp_stage2/model_final.pt"""


@pytest.mark.parametrize("entry, command, stage", [(main_pretrain, SEED_STAGE1, "1"), (main_pretrain, SEED_STAGE2, "2"),
                                                   (main_task_retrieval, SEED_MSRVTT, "retrieval")])
def test_seed_commands_parse(entry, command, stage):
    args = entry.get_args(["--local_rank", "0", *shlex.split(command)])  # torch.distributed.launch adds it
    assert (args.method, args.t2vlp_stage, args.max_frames, args.max_words, args.batch_size) == ("t2vlp", stage, 12, 32, 32)
    assert args.freeze_layer_num == 0 and args.coef_lr == 1e-3 and args.rerank_topk == 32
    if stage == "retrieval":
        assert (args.datatype, args.data_path, args.lr, args.fusion_lr) == ("msrvtt", "data/msrvtt/MSRVTT_data.json",
                                                                             5e-5, 5e-6)
        assert args.pretrained_dir == "../CLIP-modules" and args.pretrained_clip_name == "ViT-B/16"
        assert args.features_path == "data/msrvtt/MSRVTT_Videos" and args.do_train
        return
    assert args.do_pretrain and not args.do_train
    assert (args.datatype, args.data_path, args.features_path) == ("frozen", "data/t2vlp/frozen_train_labels.json", None)
    assert (args.eval_datatype, args.eval_data_path, args.eval_features_path) == ("msrvtt", "data/t2vlp",
                                                                                  "data/t2vlp/MSRVTT_Videos")
    assert args.pretrained_dir == "./CLIP-modules" and args.train_csv is None and args.val_csv is None
    if stage == "1":
        assert args.pretrained_clip_name == "./CLIP-modules/ViT-B-16.pt" and (args.lr, args.epochs) == (1e-4, 5)
        assert not args.freeze_backbone and args.tube_lr == 1e-5
    else:
        assert args.pretrained_clip_name == "ViT-B/16" and args.freeze_backbone and args.fusion_lr == 1e-5
        assert args.init_model == "ckpts/t2vlp_stage1/model_final.pt" and args.epochs == 10


def test_recipes_parse():
    from engine.options import add_pretrain_args, build_parser, parse_args

    configs = Path(__file__).resolve().parents[1] / "configs"
    one = parse_args(["--config", str(configs / "t2vlp_stage1.yaml")], parser=add_pretrain_args(build_parser()))
    assert (one.method, one.t2vlp_stage, one.pretrained_clip_name, one.batch_size, one.tube_lr) == \
        ("t2vlp", "1", "ViT-B/16", 32, 1e-5)
    two = parse_args(["--config", str(configs / "t2vlp_stage2.yaml")], parser=add_pretrain_args(build_parser()))
    assert (two.t2vlp_stage, two.freeze_backbone, two.lr, two.fusion_lr, two.epochs) == ("2", True, 1e-5, 1e-5, 10)
    tune = parse_args(["--config", str(configs / "t2vlp_msrvtt.yaml")], parser=build_parser())
    assert (tune.t2vlp_stage, tune.lr, tune.fusion_lr, tune.rerank_topk) == ("retrieval", 5e-5, 5e-6, 32)


# -- round trip on generated videos --------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A pre-training corpus (toy seed 1, its captions as frozen_train_labels.json) and the benchmark (seed 0)."""
    from preprocess.make_toy_dataset import make_toy_dataset

    root = tmp_path_factory.mktemp("t2vlp")
    make = dict(num_train=12, num_test=6, size=32, fps=5, seconds=1.6, workers=1, progress=False)
    corpus, bench = make_toy_dataset(root / "corpus", seed=1, **make), make_toy_dataset(root / "bench", seed=0, **make)
    sentences = json.loads((corpus / "MSRVTT_data.json").read_text())["sentences"]
    first = {s["video_id"]: s["caption"] for s in reversed(sentences)}  # one caption per video: 18 pairs
    rows = [{"video_id": video, "caption": caption} for video, caption in sorted(first.items())]
    (corpus / "frozen_train_labels.json").write_text(json.dumps(rows))
    return corpus, bench


TINY = ["--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1", "--batch_size", "4",
        "--batch_size_val", "8", "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0",
        "--lr", "1e-3", "--seed", "3", "--method", "t2vlp", "--rerank_topk", "3", "--rerank_batch", "5"]


def records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_stage1_stage2_reranked_retrieval_round_trip(corpora, tmp_path):
    corpus, bench = corpora
    pretrain = ["--do_pretrain", "--datatype", "frozen", "--data_path", str(corpus / "frozen_train_labels.json"),
                "--features_path", str(corpus / "videos"), "--eval_datatype", "msrvtt", "--eval_data_path", str(bench),
                "--eval_features_path", str(bench / "videos"), "--epochs", "1", *TINY]
    assert main_pretrain.main([*pretrain, "--output_dir", str(tmp_path / "one")]) == 0
    first = records(tmp_path / "one")[-1]["metrics"]
    assert "t2v/R1" in first and not any(k.startswith("rerank/") for k in first)  # stage 1 has no cross-encoder
    assert main_pretrain.main([*pretrain, "--output_dir", str(tmp_path / "two"), "--t2vlp_stage", "2",
                               "--freeze_backbone", "--init_model", str(tmp_path / "one" / "model_final.pt")]) == 0
    log_two = (tmp_path / "two" / "log.txt").read_text()
    assert "fusion.* not in the checkpoint: its blocks from the loaded CLIP" in log_two and "fusion passes" in log_two
    one, two = (torch.load(tmp_path / run / "model_final.pt", weights_only=True)["model"] for run in ("one", "two"))
    assert all(torch.equal(two[k], v) for k, v in one.items())  # the frozen backbone and tube did not move
    second = records(tmp_path / "two")[-1]["metrics"]
    assert second["rerank/topk"] == 3 and 6 * 3 <= second["rerank/fusion_passes"] <= 2 * 6 * 3
    finetune = ["--datatype", "msrvtt", "--data_path", str(bench), "--features_path", str(bench / "videos"), *TINY,
                "--t2vlp_stage", "retrieval", "--epochs", "1", "--eval_query_subset", "temporal=temporal_pairs.json"]
    assert main_task_retrieval.main(["--do_train", "--output_dir", str(tmp_path / "ft"), "--init_model",
                                     str(tmp_path / "two" / "model_final.pt"), *finetune]) == 0
    assert "tensors that only pre-training uses (masker, vocab_head)" in (tmp_path / "ft" / "log.txt").read_text()
    tuned = records(tmp_path / "ft")[-1]["metrics"]
    assert {"t2v/R1", "rerank/t2v/R1", "temporal/t2v/R1", "rerank/temporal/t2v/R1", "rerank/v2t/R1"} <= set(tuned)
    assert main_task_retrieval.main(["--do_eval", "--output_dir", str(tmp_path / "eval"), "--init_model",
                                     str(tmp_path / "ft" / "model_final.pt"), *finetune]) == 0
    assert records(tmp_path / "eval")[-1]["metrics"] == tuned


def test_a_checkpoint_saved_before_the_match_norm_flag_is_rescored_as_it_was_trained():
    """This project's T2VLP checkpoints from before --t2vlp_match_norm normalised each output alone
    ('vector'); their record lacks the flag, so they must not get today's default ('candidates')."""
    from engine.checkpoint import adopt_model_record, model_args_from_record
    from engine.options import build_parser

    recorded = vars(build_parser().parse_args(["--method", "t2vlp"]))
    old = {"args": {k: v for k, v in recorded.items() if k != "t2vlp_match_norm"}, "clip_config": {}}
    new = {"args": {**recorded, "t2vlp_match_norm": "candidates"}, "clip_config": {}}
    for record, expected in ((old, "vector"), (new, "candidates")):
        args = build_parser().parse_args(["--do_eval", "--init_model", "x.pt"])
        notes = adopt_model_record(args, record, set())
        assert args.t2vlp_match_norm == expected
        assert any("predates the flag" in note for note in notes) == (expected == "vector")
        assert model_args_from_record(record, "x.pt").t2vlp_match_norm == expected

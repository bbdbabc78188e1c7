"""HMMC (``--method hmmc``): conformance tests of HMMC's losses and scores, padding, one pre-training step, the
Hugging Face text tower, checkpoints between the stages, and 2 gloo ranks against one process."""
import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.distributed import DistEnv
from engine.step import StepContext
from gloo import FP32_REORDER_TOLERANCE, assert_close_to_scale, assert_same_step, local_rows, run_on_ranks, step_record
from modules.clip import tokenize
from modules.components import BertMasker, FeatureQueue, MomentumTwin, queue_infonce
from modules.factory import add_model_args, build_model
from modules.heads.base import symmetric_infonce
from modules.heads.hmmc import adjacent_frame_pairs, frame_adjacency_loss, top_frames_mean

FRAMES = 3
PRETRAIN = ["--hmmc_stage", "pretrain", "--contrast_num_negative", "8", "--hmmc_projector_hidden", "32"]


def hmmc_args(*flags):
    args = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--method", "hmmc", "--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1",
         "--use_temp", "--use_frame_fea", *flags])
    args.max_frames, args.seed = FRAMES, 0
    return args


def hmmc_model(*flags, seed=0):
    torch.manual_seed(seed)
    return build_model(hmmc_args(*flags))


def make_batch(n=4, frames=FRAMES, seed=1, pad=True, tokenizer=tokenize):
    g = torch.Generator().manual_seed(seed)
    words = "red green blue pink gray gold teal navy".split()
    ids, mask = tokenizer([f"a {words[i]} ball rolls past clip {i} slowly" for i in range(n)], 12)
    video_mask = torch.ones(n, frames, dtype=torch.long)
    if pad:
        video_mask[1, frames - 1] = 0
    return {"text_ids": ids, "text_mask": mask, "video": torch.randn(n, frames, 3, 32, 32, generator=g),
            "video_mask": video_mask}


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# -- 1. queue ------------------------------------------------------------------------------------------


def test_queue_init_enqueue_pointer_wrap_and_batch_check():
    torch.manual_seed(0)
    size, dim, frames, batch = 8, 5, 3, 2
    queue = FeatureQueue(size, {"video": (dim, 1), "frames": (dim, frames)})
    assert queue.video.shape == (dim, size) and queue.frames.shape == (dim, size * frames)
    for q in (queue.video, queue.frames):
        torch.testing.assert_close(q.norm(dim=0), torch.ones(q.shape[1]))
    for step in range(size // batch):
        start = int(queue.ptr)
        assert start == (step * batch) % size
        video, frame_keys = torch.randn(batch, dim) * 3, torch.randn(batch, frames, dim)
        queue.enqueue({"video": video, "frames": frame_keys})
        torch.testing.assert_close(queue.video[:, start:start + batch], F.normalize(video, dim=-1).t())
        flat = F.normalize(frame_keys, dim=-1).reshape(batch * frames, dim)  # video-major, frame-minor
        torch.testing.assert_close(queue.frames[:, start * frames:(start + batch) * frames], flat.t())
        assert int(queue.ptr) == (start + batch) % size
    assert int(queue.ptr) == 0  # wrapped after K / B_g enqueues
    with pytest.raises(ValueError, match="multiple of the global batch 3"):
        queue.check_batch(3)
    with pytest.raises(ValueError, match="multiple of the global batch 3"):
        queue.enqueue({"video": torch.randn(3, dim), "frames": torch.randn(3, frames, dim)})


def test_queue_keeps_old_columns_for_padded_frames():
    queue = FeatureQueue(4, {"frames": (2, 2)})
    before = queue.frames.clone()
    valid = torch.tensor([[1, 0], [1, 1]])
    queue.enqueue({"frames": torch.randn(2, 2, 2)}, valid={"frames": valid})
    assert torch.equal(queue.frames[:, 1], before[:, 1]) and not torch.equal(queue.frames[:, 0], before[:, 0])


# -- 2. momentum ---------------------------------------------------------------------------------------


def test_momentum_twin_init_update_bn_untouched_no_grad():
    torch.manual_seed(0)
    query = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    twin = MomentumTwin({"net": query}, 0.99)
    key = twin["net"]
    assert all(torch.equal(k, q) for k, q in zip(key.state_dict().values(), query.state_dict().values()))
    assert not any(p.requires_grad for p in twin.parameters())
    key(torch.randn(16, 4))  # the key's own BN statistics
    key_stats = {n: b.clone() for n, b in key.named_buffers()}
    query(torch.randn(16, 4)).sum().backward()  # the query's BN statistics move, and it gets gradients
    with torch.no_grad():
        for p in query.parameters():
            p.add_(torch.randn_like(p))
    before = [k.clone() for k in key.parameters()]
    assert twin.update({"net": query}, step=0)
    for k, k0, q in zip(key.parameters(), before, query.parameters()):
        torch.testing.assert_close(k, 0.99 * k0 + 0.01 * q.detach(), rtol=1e-6, atol=1e-7)
    assert all(torch.equal(b, key_stats[n]) for n, b in key.named_buffers())  # BN buffers untouched
    assert all(p.grad is None for p in twin.parameters())
    after = [k.clone() for k in key.parameters()]
    assert not twin.update({"net": query}, step=0)  # a second micro-step of the same optimiser step
    assert all(torch.equal(a, k) for a, k in zip(after, key.parameters()))


# -- 3. queue InfoNCE ----------------------------------------------------------------------------------


def test_queue_infonce_matches_hand_computation_and_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    queue = F.normalize(torch.randn(4, 4, generator=g), dim=0)  # D x K, K = 4 negatives
    tau = 0.07
    expected = []
    for b in range(3):
        qb, kb = q[b] / q[b].norm(), k[b] / k[b].norm()
        logits = [float(qb @ kb) / tau] + [float(qb @ queue[:, j]) / tau for j in range(4)]
        top = max(logits)
        expected.append(-(logits[0] - top - math.log(sum(math.exp(x - top) for x in logits))))
    per_row = queue_infonce(q, k, queue, tau, reduction="none")
    torch.testing.assert_close(per_row, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(queue_infonce(q, k, queue, tau), torch.tensor(expected).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(queue_infonce(5.0 * q, 0.3 * k, queue, tau), queue_infonce(q, k, queue, tau))
    # Keys and queue carry no gradient.
    q.requires_grad_(True), k.requires_grad_(True), queue.requires_grad_(True)
    queue_infonce(q, k, queue, tau).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


# -- 4. FAM --------------------------------------------------------------------------------------------


def test_fam_uses_2_t_minus_1_adjacent_terms_averaged_over_t_minus_1():
    torch.manual_seed(0)
    batch, frames, dim, tau = 2, 5, 6, 0.07
    mask = torch.ones(batch, frames, dtype=torch.long)
    video, query_frame, key_frame = adjacent_frame_pairs(mask)
    assert len(video) == batch * 2 * (frames - 1)
    assert ((query_frame - key_frame).abs() == 1).all()
    pairs = set(zip(video.tolist(), query_frame.tolist(), key_frame.tolist()))
    assert pairs == {(b, i, j) for b in range(batch) for i in range(frames) for j in (i - 1, i + 1) if 0 <= j < frames}
    predictions, keys = torch.randn(batch, frames, dim), torch.randn(batch, frames, dim)
    queue = F.normalize(torch.randn(dim, 7), dim=0)
    expected = sum(queue_infonce(predictions[:, i], keys[:, i + 1], queue, tau)
                   + queue_infonce(predictions[:, i + 1], keys[:, i], queue, tau)
                   for i in range(frames - 1)) / (frames - 1)
    torch.testing.assert_close(frame_adjacency_loss(predictions, keys, queue, tau, mask), expected)
    mask[1, 3:] = 0  # padding: pairs with a padded frame disappear
    assert len(adjacent_frame_pairs(mask)[0]) == 2 * (frames - 1) + 2 * 2


# -- 5. video feature ----------------------------------------------------------------------------------


def test_video_feature_is_the_mean_of_unit_temporal_outputs():
    model = hmmc_model().eval()
    batch = make_batch(pad=False)
    with torch.no_grad():
        video, frames, _ = model.encode_video(batch["video"], batch["video_mask"])
        raw = model.clip.encode_image(batch["video"].flatten(0, 1)).view(4, FRAMES, -1)
        torch.testing.assert_close(frames, raw, rtol=1e-5, atol=1e-5)
        positions = model.temporal.frame_position_embeddings.weight[:FRAMES]
        out = model.temporal.transformer(raw + positions) + raw  # o = TT(f + P) + f
        torch.testing.assert_close(video, F.normalize(out, dim=-1).mean(1), rtol=1e-5, atol=1e-5)
        assert (video.norm(dim=-1) <= 1 + 1e-6).all() and (video.norm(dim=-1) < 0.999).any()
        single, _, _ = model.encode_video(batch["video"][:, :1], batch["video_mask"][:, :1])
        torch.testing.assert_close(single.norm(dim=-1), torch.ones(4))
    args = hmmc_args()  # without --use_temp: the mean of the normalised raw frames
    args.use_temp = False
    no_temp = build_model(args).eval()
    with torch.no_grad():
        video, frames, _ = no_temp.encode_video(batch["video"], batch["video_mask"])
        torch.testing.assert_close(video, F.normalize(frames, dim=-1).mean(1))


def test_padded_frames_never_change_the_features():
    model = hmmc_model().eval()
    batch = make_batch(n=3, frames=4, pad=False)
    noisy, mask = batch["video"].clone(), batch["video_mask"].clone()
    mask[0, 2:] = 0
    noisy[0, 2:] = 100 * torch.randn_like(noisy[0, 2:])  # garbage where the mask says "padding"
    with torch.no_grad():
        text = model.encode_text(batch["text_ids"], batch["text_mask"])
        padded = model.encode_video(noisy, mask)
        short = model.encode_video(batch["video"][:1, :2], mask[:1, :2])  # the same clip, unpadded
        torch.testing.assert_close(padded[0][:1], short[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(padded[1][:1, :2], short[1], rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(padded[1][0, 2:]) == 0
        torch.testing.assert_close(model.similarity(text, padded)[:, :1], model.similarity(text, short),
                                   rtol=1e-5, atol=1e-6)
        losses = model.compute_loss(text, padded)
    assert all(torch.isfinite(v) for v in losses.values())


# -- 6. hierarchical (top-k frame) score ---------------------------------------------------------------


def test_top_k_frame_score():
    scores = torch.tensor([[[0.5, 0.9, 0.1, 0.9], [0.3, 0.2, 0.8, 0.4]]])  # (1 text, 2 videos, 4 frames)
    every = torch.ones(2, 4, dtype=torch.long)
    torch.testing.assert_close(top_frames_mean(scores, every, 1), scores.max(-1).values)
    torch.testing.assert_close(top_frames_mean(scores, every, 4), scores.mean(-1))
    torch.testing.assert_close(top_frames_mean(scores, every, 2), torch.tensor([[0.9, 0.6]]))  # tie: 0.9 twice
    torch.testing.assert_close(top_frames_mean(scores, every, 3), torch.tensor([[(0.9 + 0.9 + 0.5) / 3, 0.5]]))
    padded = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0]])
    # Padded frames are never picked; k beyond the valid frames averages all valid ones.
    torch.testing.assert_close(top_frames_mean(scores, padded, 2), torch.tensor([[0.7, 0.25]]))
    torch.testing.assert_close(top_frames_mean(scores, padded, 9), torch.tensor([[1.5 / 3, 0.25]]))


def test_similarity_is_video_cosine_plus_top_k_frame_cosines():
    for k in (1, 2, FRAMES):
        model = hmmc_model("--top_frames", str(k)).eval()
        batch = make_batch()
        with torch.no_grad():
            text = model.encode_text(batch["text_ids"], batch["text_mask"])
            video, frames, mask = model.encode_video(batch["video"], batch["video_mask"])
            sim = model.similarity(text, (video, frames, mask))
        t, v, f = F.normalize(text, dim=-1), F.normalize(video, dim=-1), F.normalize(frames, dim=-1)
        for i in range(4):
            for j in range(4):
                valid = [float(t[i] @ f[j, n]) for n in range(FRAMES) if mask[j, n]]
                top = sorted(valid, reverse=True)[:k]
                expected = float(t[i] @ v[j]) + sum(top) / len(top)
                assert abs(float(sim[i, j]) - expected) < 1e-5


# -- 7. MLM masker -------------------------------------------------------------------------------------


def test_masker_never_selects_pad_or_specials_and_follows_80_10_10():
    sot, eot, vocab, mask_id = 49406, 49407, 49408, 49400
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(1000, 110, dtype=torch.long)  # 100 words per row: 1e5 eligible positions
    ids[:, 0] = sot
    ids[:, 1:101] = torch.randint(1, 49000, (1000, 100), generator=g)
    ids[:, 101] = eot  # then padding (id 0)
    masker = BertMasker(vocab, pad_id=0, special_ids=(sot, eot), mask_id=mask_id, seed=3)
    out = masker(ids)
    special = (ids == 0) | (ids == sot) | (ids == eot)
    assert not out.selected[special].any() and torch.equal(out.ids[special], ids[special])
    rate = out.selected.sum().item() / 1e5
    assert abs(rate - 0.15) < 0.006
    n = out.selected.sum().item()
    assert abs(out.masked.sum().item() / n - 0.8) < 0.015
    assert abs(out.replaced.sum().item() / n - 0.1) < 0.01
    kept = out.selected & ~out.masked & ~out.replaced
    assert abs(kept.sum().item() / n - 0.1) < 0.01 and torch.equal(out.ids[kept], ids[kept])
    assert (out.ids[out.masked] == mask_id).all()
    random_ids = out.ids[out.replaced]
    assert not torch.isin(random_ids, torch.tensor([0, sot, eot, mask_id])).any() and (random_ids < vocab).all()
    assert torch.equal(out.labels[out.selected], ids[out.selected]) and (out.labels[~out.selected] == -100).all()
    # The attention mask also excludes positions, the draws advance, and an explicit generator repeats.
    attention = (ids != 0).long()
    attention[:, 50:] = 0
    assert not masker(ids, attention).selected[:, 50:].any()
    assert int(masker.draws) == 2
    again = [masker(ids, generator=torch.Generator().manual_seed(7)).selected for _ in range(2)]
    assert torch.equal(*again)


# -- pre-training step ---------------------------------------------------------------------------------


def pretrain_step(model, batch, env=DistEnv(), step=0):
    return model(batch, StepContext(env=env, step=step))


def test_pretraining_step_gives_finite_losses_and_gradients_to_every_trainable_parameter():
    model = hmmc_model(*PRETRAIN, "--mlm_probability", "0.5")
    assert not model.clip.logit_scale.requires_grad  # unused by every pre-training loss
    batch = make_batch()
    losses = pretrain_step(model, batch)
    assert set(losses) == {"loss", "fam", "vtm", "ftm", "mlm"} and all(torch.isfinite(v) for v in losses.values())
    weights = {"fam": 0.05, "vtm": 0.45, "ftm": 0.45, "mlm": 0.05}
    torch.testing.assert_close(losses["loss"], sum(w * losses[k] for k, w in weights.items()))
    losses["loss"].backward()
    for name, param in trainable(model):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert any(n.startswith("mlm_head.") for n, _ in trainable(model))
    assert all(p.grad is None and not p.requires_grad for p in model.momentum.parameters())
    assert not any(b.requires_grad for b in model.queue.buffers())
    keys = {k.split(".")[0] for k in model.state_dict()}
    assert {"momentum", "queue", "v_projector", "v_predictor", "mlm_head", "mlm_mask_embedding", "masker"} <= keys


def test_queues_hold_the_normalised_momentum_keys_after_one_step():
    model = hmmc_model(*PRETRAIN)
    batch = make_batch()
    pretrain_step(model, batch)
    assert int(model.queue.ptr) == 4
    twin = model.momentum
    with torch.no_grad():
        text = twin["text"](batch["text_ids"])
        frames = twin["visual"](batch["video"].flatten(0, 1)).view(4, FRAMES, -1)
        valid = batch["video_mask"].bool()
        video = F.normalize(twin["temporal"](frames * valid[..., None], batch["video_mask"]), dim=-1)
        video = (video * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        twin["v_projector"].train()
        projected = twin["v_projector"](frames[valid])
    queue = model.queue
    torch.testing.assert_close(queue.text[:, :4], F.normalize(text, dim=-1).t(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(queue.video[:, :4], F.normalize(video, dim=-1).t(), rtol=1e-4, atol=1e-5)
    columns = torch.arange(4 * FRAMES)[valid.flatten()]
    for name, expected in (("frame_raw", frames[valid]), ("frame_proj", projected)):
        torch.testing.assert_close(getattr(queue, name)[:, columns], F.normalize(expected, dim=-1).t(),
                                   rtol=1e-4, atol=1e-5)


def test_momentum_update_once_per_optimizer_step_and_check_batch():
    model = hmmc_model(*PRETRAIN)
    batch = make_batch()
    with torch.no_grad():
        model.clip.visual.proj.add_(1.0)  # the query moves away from the key
    key = model.momentum["visual"].proj
    pretrain_step(model, batch, step=0)
    first = key.clone()
    pretrain_step(model, batch, step=0)  # a second micro-step of step 0: no second update
    assert torch.equal(key, first)
    pretrain_step(model, batch, step=1)
    assert not torch.equal(key, first)
    model.check_batch(4)
    args = hmmc_args()
    args.do_pretrain = True  # main_pretrain.py's flag implies the pre-training stage
    assert build_model(args).stage == "pretrain" and hmmc_model().stage == "finetune"
    with pytest.raises(ValueError, match="--contrast_num_negative"):
        model.check_batch(3)
    hmmc_model().check_batch(3)  # fine-tuning has no queue
    assert hmmc_model().tokenizer() is None  # CLIP's BPE


def test_disabled_terms_build_nothing():
    model = hmmc_model(*PRETRAIN, "--weight_fam", "0", "--weight_mlm", "0")
    assert not hasattr(model, "v_projector") and not hasattr(model, "mlm_head")
    assert set(model.queue.layout) == {"video", "text", "frame_raw"}
    losses = pretrain_step(model, make_batch())
    assert float(losses["fam"]) == 0 and float(losses["mlm"]) == 0
    losses["loss"].backward()
    assert all(p.grad is not None for _, p in trainable(model))


# -- fine-tuning ---------------------------------------------------------------------------------------


def test_finetuning_builds_no_pretraining_state_and_every_parameter_learns():
    model = hmmc_model()
    keys = {k.split(".")[0] for k in model.state_dict()}
    assert keys == {"clip", "temporal"}
    losses = pretrain_step(model, make_batch())
    assert set(losses) == {"loss", "vtm", "ftm"}
    losses["loss"].backward()  # the batch has a padded frame
    for name, param in trainable(model):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_parameter_counts_at_vit_b32():
    from modules.clip import build_clip
    from modules.factory import count_parameters
    from modules.heads import get_head

    def new_trainable(*flags):
        args = add_model_args(argparse.ArgumentParser()).parse_args(["--use_temp", "--use_frame_fea", *flags])
        with torch.device("meta"):
            head = get_head("hmmc")(build_clip("ViT-B/32", device="meta"), args)
        return count_parameters(head, trainable_only=True) - count_parameters(head.clip, trainable_only=True), head

    temporal = 4 * 3_152_384 + 48 * 512  # 4 blocks of width 512 (8 heads) + 48 frame positions
    assert new_trainable()[0] == temporal
    count, head = new_trainable("--hmmc_stage", "pretrain")
    mlp = 512 * 4096 + 4096 + 2 * 4096 + 4096 * 512 + 512  # Linear, BatchNorm, Linear
    mlm = 512 * 512 + 512 + 2 * 512 + 512 * 49408 + 49408 + 512  # transform, decoder, [MASK] embedding
    assert count == temporal + 2 * mlp + mlm
    assert head.queue.frame_raw.shape == (512, 1024 * 12) and head.queue.text.shape == (512, 1024)


def test_finetuning_loss_is_weighted_video_and_per_frame_symmetric_infonce():
    model = hmmc_model()
    batch = make_batch(pad=False)
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    video, frames, mask = model.encode_video(batch["video"], batch["video_mask"])
    losses = model.compute_loss(text, (video, frames, mask))
    s = model.clip.logit_scale.exp()
    t = F.normalize(text, dim=-1)
    vtm = symmetric_infonce(s * t @ F.normalize(video, dim=-1).t())
    ftm = sum(symmetric_infonce(s * t @ F.normalize(frames[:, i], dim=-1).t()) for i in range(FRAMES)) / FRAMES
    torch.testing.assert_close(losses["vtm"], vtm)
    torch.testing.assert_close(losses["ftm"], ftm)
    torch.testing.assert_close(losses["loss"], 0.85 * vtm + 0.15 * ftm)


def test_fixed_logit_scale_and_text_lr():
    model = hmmc_model("--hmmc_fixed_logit_scale", "--text_lr", "1e-7")
    assert float(model.logit_scale()) == 100.0 and not model.clip.logit_scale.requires_grad
    groups = model.param_groups(lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["clip.text.proj"]["lr"] == 1e-7 and by_name["clip.text.proj"]["group"] == "text"
    assert by_name["clip.text.ln_final.weight"]["group"] == "text_no_decay"
    assert by_name["clip.visual.proj"]["lr"] == pytest.approx(1e-7) and by_name["temporal.transformer.resblocks.0"
                                                                                ".mlp.c_fc.weight"]["lr"] == 1e-4
    assert sum(len(g["params"]) for g in groups) == len(trainable(model))


def test_finetuning_loads_a_pretraining_checkpoint_and_pretraining_resyncs_a_missing_twin(tmp_path):
    from modules.factory import load_init_model

    pretrained = hmmc_model(*PRETRAIN, seed=1)
    pretrain_step(pretrained, make_batch())
    path = tmp_path / "pretrain.pt"
    torch.save(pretrained.state_dict(), path)
    finetune = hmmc_model(seed=2)
    load_init_model(finetune, str(path))  # unexpected keys would raise
    kept = finetune.state_dict()
    assert set(kept) == {k for k in pretrained.state_dict() if not k.startswith(pretrained.pretrain_only_prefixes)}
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in kept.items())
    # A checkpoint without momentum copies (here: the fine-tuning model) restarts the keys equal to the queries.
    again = hmmc_model(*PRETRAIN, seed=3)
    missing, _ = again.load_state_dict(kept, strict=False)
    assert not any(k.startswith("momentum.copies.") for k in missing)
    assert torch.equal(again.momentum["visual"].proj, again.clip.visual.proj)
    assert torch.equal(again.momentum["temporal"].frame_position_embeddings.weight,
                       again.temporal.frame_position_embeddings.weight)


# -- the Hugging Face text tower -----------------------------------------------------------------------


@pytest.fixture
def tiny_bert(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "a red green blue pink gray gold teal navy ball rolls past clip slowly 0 1 2 3 4 5 6 7".split()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    BertModel(config).save_pretrained(tmp_path)
    return str(tmp_path)


def test_hugging_face_text_tower(tiny_bert):
    model = hmmc_model(*PRETRAIN, "--mlm_probability", "0.5", "--text_encoder", tiny_bert)
    tokenize_hf = model.tokenizer()
    batch = make_batch(tokenizer=tokenize_hf)
    assert batch["text_ids"][0, 0] == 2 and batch["text_mask"].shape == (4, 12)  # [CLS] first
    assert model.masker.mask_id == 4 and {0, 2, 3} <= set(model.masker.never)  # [PAD], [CLS], [SEP]
    assert model.mlm_head[-1].out_features == model.text_tower.vocab_size == 27
    assert model.encode_text(batch["text_ids"], batch["text_mask"]).shape == (4, model.clip.embed_dim)
    assert not any(p.requires_grad for p in model.clip.text.parameters())  # replaced, so frozen
    losses = pretrain_step(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for name, param in trainable(model):
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert "text" in model.momentum and type(model.momentum["text"]).__name__ == "HFTextTower"
    with pytest.raises(ValueError, match="--text_encoder"):
        args = hmmc_args()
        args.language = "chinese"
        build_model(args)


def test_text_lr_covers_the_hugging_face_towers_projection(tiny_bert):
    """HMMC's text_encoder holds RoBERTa and its Linear 768->512: both train at text_lr (1e-7 in fine-tuning)."""
    model = hmmc_model("--text_encoder", tiny_bert, "--text_lr", "1e-7")
    by_name = {n: g for g in model.param_groups(lr=1e-4, coef_lr=1e-3, weight_decay=0.2) for n in g["names"]}
    text = {n for n, _ in trainable(model) if n.startswith("text_tower.")}
    assert {"text_tower.proj.weight", "text_tower.proj.bias"} <= text
    assert {(by_name[n]["lr"], by_name[n]["group"].removesuffix("_no_decay")) for n in text} == {(1e-7, "text")}
    assert by_name["temporal.frame_position_embeddings.weight"]["lr"] == 1e-4


# -- configs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, stage", [("hmmc_pretrain", "pretrain"), ("hmmc_msrvtt", "finetune")])
def test_recipes_parse(name, stage):
    from engine.options import build_parser, parse_args

    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    args = parse_args(["--config", str(config)], parser=build_parser())
    assert (args.method, args.hmmc_stage, args.use_temp, args.use_frame_fea) == ("hmmc", stage, True, True)
    assert args.max_frames == 12 and args.freeze_layer_num == -1
    if stage == "pretrain":
        assert (args.batch_size, args.contrast_num_negative, args.contrast_momentum) == (128, 1024, 0.99)
        assert args.top_frames == 3
        assert args.contrast_num_negative % args.batch_size == 0 and (args.lr, args.text_lr) == (1e-4, 1e-4)
    else:
        assert (args.batch_size, args.top_frames, args.text_lr, args.weight_vtm_finetune) == (256, 2, 1e-7, 0.85)


# -- 2 gloo ranks == 1 process -------------------------------------------------------------------------


def _step_result(model, batch, env):
    record = step_record(model, pretrain_step(model, batch, env))
    head = getattr(model, "module", model)
    return {**record, "state": {k: v.clone() for k, v in head.state_dict().items() if k.startswith(("queue.", "momentum."))}}


def _work(env, out_dir):
    model = nn.parallel.DistributedDataParallel(hmmc_model(*PRETRAIN))
    torch.save(_step_result(model, local_rows(make_batch(), env), env), f"{out_dir}/rank{env.rank}.pt")


def test_two_gloo_ranks_pretraining_step_equals_one_process(tmp_path):
    single = _step_result(hmmc_model(*PRETRAIN), make_batch(), DistEnv())
    assert single["losses"]["mlm"] > 0 and len(single["grads"]) > 40
    run_on_ranks(_work, tmp_path)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert_same_step(result, single)
        for name, value in single["state"].items():
            assert_close_to_scale(result["state"][name].float(), value.float(), FP32_REORDER_TOLERANCE, name)


# -- padded frames: hidden by default; --padded_frames stretch is HMMC's frame pick ----------------------


def test_stretch_fill_repeats_frames_as_hmmc_and_its_mean_and_top_k_count_the_repeats(make_video):
    """A 5-frame video in 12 slots. HMMC's loader picks linspace(0, N, 12, endpoint=False) of its N stored
    frames, so with N = 5 every slot holds a real frame: 0,0,0,1,1,2,2,2,3,3,4,4 under an all-ones mask. By
    hand (no temporal module): v = Σ_k c_k norm(f_k) / 12 with c = (3,2,3,2,2), and the top-2 frame term
    counts a repeated best frame twice; the default is the plain mean and top-2 over the 5 frames."""
    from dataloaders.video import VideoClipLoader

    path = make_video("short.mp4", num_frames=5, fps=5, size=(40, 40))
    clips = {fill: VideoClipLoader(max_frames=12, image_size=32, mode="uniform", padded_frames=fill)(path)
             for fill in ("masked", "stretch")}
    (video, mask), (filled, filled_mask) = clips["masked"], clips["stretch"]
    picks = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    assert mask.tolist() == [1] * 5 + [0] * 7 and filled_mask.tolist() == [1] * 12
    torch.testing.assert_close(filled, video[picks], rtol=0, atol=0)

    model = hmmc_model("--top_frames", "2").eval()
    model.temporal = None  # v = mean of the unit frame features
    ids, text_mask = tokenize(["a red ball rolls past"], 12)
    with torch.no_grad():
        text = F.normalize(model.encode_text(ids, text_mask), dim=-1)
        frames = F.normalize(model.clip.encode_image(video[:5]), dim=-1)
        scores = {fill: model.similarity(text, model.encode_video(clip[None], clip_mask[None]))
                  for fill, (clip, clip_mask) in clips.items()}
    frame_scores = (frames @ text[0]).tolist()
    counts = torch.tensor([3.0, 2, 3, 2, 2])
    by_hand = {"masked": (frames.mean(0), sorted(frame_scores)[-2:]),
               "stretch": ((counts[:, None] * frames).sum(0) / 12, sorted(frame_scores[k] for k in picks)[-2:])}
    for fill, (v, top) in by_hand.items():  # fp32 sums of at most 12 unit-scale terms: 1e-5 is ample
        expected = float(text[0] @ F.normalize(v, dim=-1)) + sum(top) / 2
        assert float(scores[fill]) == pytest.approx(expected, abs=1e-5), fill
    assert abs(float(scores["stretch"]) - float(scores["masked"])) > 1e-4

"""SimVTP (``--method simvtp``): conformance tests of SimVTP's masks and losses, the four-pass pre-training step,
2 gloo ranks against one process, exact resume of a killed pre-training run, and pre-train -> fine-tune
-> evaluate on generated videos."""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main_pretrain
import main_task_retrieval
from engine.distributed import DistEnv
from engine.step import StepContext
from gloo import assert_same_step, local_rows, run_on_ranks, step_record
from modules.clip import tokenize
from modules.components.matching import matching_labels, norm_softmax, random_negatives
from modules.components.pixel_decoder import PixelDecoder
from modules.components.pixels import patchify, pixel_targets, tube_statistics, unpatchify
from modules.components.tube_mask import TubeMaskGenerator
from modules.factory import add_model_args, build_model
from modules.heads.simvtp import average_views, scaled_lr
from test_pretrain import corpora, run_pretrain_subprocess  # noqa: F401  (toy corpus + benchmark, main_pretrain.py)
from test_videomae import tiny_bert  # noqa: F401  (fixture: a local BERT folder with a tiny vocabulary)

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ["--simvtp_stage", "pretrain", "--text_dropout", "0"]


def simvtp_model(*flags, seed=0, **attributes):
    args = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--method", "simvtp", "--pretrained_clip_name", "tiny", "--clip_init", "random", *flags])
    args.seed, args.normalize = 0, "imagenet"
    for name, value in attributes.items():
        setattr(args, name, value)
    torch.manual_seed(seed)
    return build_model(args)


def make_batch(n=4, frames=4, seed=1, tokenizer=tokenize, pad=True):
    g = torch.Generator().manual_seed(seed)
    words = "red green blue pink gray gold teal navy".split()
    ids, mask = tokenizer([f"a {words[i]} ball rolls left {'slowly ' * (i % 3)}" for i in range(n)], 16)
    video_mask = torch.ones(n, frames, dtype=torch.long)
    if pad:
        video_mask[1, frames - 1] = 0
    return {"text_ids": ids, "text_mask": mask, "video": torch.randn(n, frames, 3, 32, 32, generator=g),
            "video_mask": video_mask}


def step(model, batch, env=DistEnv()):
    return model(batch, StepContext(env))


# -- 14. tube masking ---------------------------------------------------------------------------------


def test_tube_mask_counts_slices_and_draws():
    generator = TubeMaskGenerator(positions=196, ratio=0.9, seed=3)
    masks = generator(batch=6, slices=8)
    assert masks.shape == (6, 1568) and generator.num_masked == 176
    per_slice = masks.view(6, 8, 196)
    assert (per_slice.sum(-1) == 176).all() and (masks.sum(1) == 1408).all() and ((~masks).sum(1) == 160).all()
    assert (per_slice == per_slice[:, :1]).all()  # the same spatial positions in every temporal slice
    assert len({tuple(m.tolist()) for m in per_slice[:, 0]}) == 6  # a new draw per sample
    again = TubeMaskGenerator(196, 0.9, seed=3)
    assert torch.equal(again(6, 8), masks) and not torch.equal(again(6, 8), masks)  # (seed, draw) decides
    assert int(generator.draws) == 1 and TubeMaskGenerator(10, 0.7).num_masked == 7  # ⌊0.7·10⌋, not 6
    with pytest.raises(ValueError, match="at least one tube stays visible"):
        TubeMaskGenerator(196, 1.0)


# -- 15. pixel targets ----------------------------------------------------------------------------------


def test_targets_are_standardised_per_tube_and_channel_in_conv_order():
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    target = pixel_targets(video, tubelet=2, patch=8)
    assert target.shape == (2, 32, 2 * 8 * 8 * 3)
    tubes = target.view(2, 32, 128, 3)
    torch.testing.assert_close(tubes.mean(2), torch.zeros(2, 32, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tubes.std(2, unbiased=True), torch.ones(2, 32, 3), atol=1e-4, rtol=0)
    # Token order = the Conv3d's flatten order (t·16 + h·4 + w), values in (p0, p1, p2, c) order: a conv
    # whose output channel o copies pixel o of the tube reproduces patchify exactly.
    conv = nn.Conv3d(3, 384, kernel_size=(2, 8, 8), stride=(2, 8, 8), bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for o in range(384):
            p0, rest = divmod(o, 8 * 8 * 3)
            p1, rest = divmod(rest, 8 * 3)
            p2, c = divmod(rest, 3)
            conv.weight[o, c, p0, p1, p2] = 1.0
        by_conv = conv(video.transpose(1, 2)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(by_conv, patchify(video, 2, 8).flatten(2), atol=1e-6, rtol=0)
    assert torch.equal(unpatchify(patchify(video, 2, 8), 4, 32, 2, 8), video)  # exact round trip
    mean, std = tube_statistics(patchify(video, 2, 8)[:1, :1])
    assert std.shape == (1, 1, 1, 3) and std.min() > 1.0


# -- 16. decoder output ----------------------------------------------------------------------------------


def test_decoder_predicts_masked_positions_only_in_mask_order():
    torch.manual_seed(0)
    decoder = PixelDecoder(encoder_width=64, width=32, layers=1, heads=2, out_dim=384).eval()
    visible = torch.randn(2, 4, 64)
    visible_index = torch.tensor([[0, 5, 16, 21], [3, 7, 19, 23]])
    masked_index = torch.tensor([[1, 2, 17, 18, 30], [0, 1, 16, 17, 31]])
    with torch.no_grad():
        out = decoder(visible, visible_index, masked_index, num_tokens=32)
        perm = torch.tensor([4, 2, 0, 1, 3])
        permuted = decoder(visible, visible_index, masked_index[:, perm], num_tokens=32)
        x = decoder.encoder_to_decoder(visible) + decoder_positions(visible_index)
        masked = decoder.mask_token + decoder_positions(masked_index)
        sequence = torch.cat([x, masked], 1)  # visible first, masked last
        for block in decoder.blocks:
            sequence = block(sequence)
        by_hand = decoder.head(decoder.norm(sequence[:, -5:]))
    assert out.shape == (2, 5, 384)
    torch.testing.assert_close(out, by_hand, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(permuted, out[:, perm], atol=1e-6, rtol=1e-6)  # row k predicts masked_index[k]


def decoder_positions(index):
    from modules.videomae import sincos_table

    return sincos_table(32, 32)[index]


# -- 17. text masking -------------------------------------------------------------------------------


def test_text_masker_masks_75_percent_of_ordinary_tokens_always_with_mask(tiny_bert):  # noqa: F811
    model = simvtp_model(*PRETRAIN, bert_path=str(tiny_bert))
    tokenize_bert = model.tokenizer()
    ids, mask = tokenize_bert(["a red ball rolls left slowly", "the cube", "a blue video of a ball"] * 400, 12)
    selected = 0
    for _ in range(20):
        out = model.text_masker(ids, mask)
        assert not out.selected[(ids == 0) | (ids == 2) | (ids == 3)].any()  # [PAD], [CLS], [SEP]
        assert torch.equal(out.masked, out.selected) and (out.ids[out.selected] == 4).all()  # always [MASK]
        assert torch.equal(out.ids[~out.selected], ids[~out.selected])
        assert torch.equal(out.labels[out.selected], ids[out.selected]) and (out.labels[~out.selected] == -100).all()
        selected += int(out.selected.sum())
    eligible = int(((ids > 4) & mask.bool()).sum()) * 20
    assert abs(selected / eligible - 0.75) < 0.01, selected / eligible  # ~1.1e5 draws


# -- 18. NormSoftmax -------------------------------------------------------------------------------------


def test_norm_softmax_is_the_sum_of_both_directions():
    s = torch.tensor([[0.09, 0.01, -0.02], [0.03, 0.08, 0.0], [-0.05, 0.04, 0.07]])
    tau = 0.05
    e = [[math.exp(s[i, j] / tau) for j in range(3)] for i in range(3)]
    rows = -sum(math.log(e[i][i] / sum(e[i])) for i in range(3)) / 3
    cols = -sum(math.log(e[j][j] / sum(e[i][j] for i in range(3))) for j in range(3)) / 3
    assert norm_softmax(s, tau).item() == pytest.approx(rows + cols, rel=1e-6)
    assert norm_softmax(s, tau).item() == pytest.approx(2 * F.cross_entropy(s / tau, torch.arange(3)).item(), rel=0.2)


# -- 19. VTM -------------------------------------------------------------------------------------------


def test_vtm_negatives_are_never_self_and_labels_are_ones_then_zeros():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([random_negatives(5, g) for _ in range(4000)])
    assert (draws != torch.arange(5)).all()
    counts = torch.stack([(draws == j).float().mean(0) for j in range(5)])  # P(j | i), 1/4 off the diagonal
    assert (counts.diagonal() == 0).all() and ((counts + torch.eye(5) * 0.25) - 0.25).abs().max() < 0.03
    assert matching_labels(3).tolist() == [1, 1, 1, 0, 0, 0]
    model = simvtp_model(*PRETRAIN)
    masked, negatives = model.draw_masks(4, StepContext(DistEnv()), slices=2, device="cpu")
    assert masked.shape == (4, 32) and (negatives != torch.arange(4)).all()


# -- 20. learning rate and test views --------------------------------------------------------------------


def test_lr_scaling_rule_and_view_averaging():
    assert scaled_lr(1.5e-4, 1024) == pytest.approx(6e-4) and scaled_lr(3e-4, 64) == pytest.approx(7.5e-5)
    model = simvtp_model(blr=1.5e-4, batch_size=1024)
    groups = model.param_groups(lr=1.0, coef_lr=1e-3, weight_decay=0.05)
    assert [g["lr"] for g in groups] == pytest.approx([6e-4] * len(groups))
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert decay["clip.blocks.0.attn.qkv.weight"] == 0.05 and decay["clip.blocks.0.norm1.weight"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    model.eval()
    views = torch.randn(2, 3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 2 videos x 3 views
    mask = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        averaged = model.encode_video(views, mask)
        per_view = torch.stack([model.encode_video(views[:, v], mask) for v in range(3)], 1)
    torch.testing.assert_close(averaged, per_view.mean(1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(per_view[:, 0], per_view[:, 1])
    flat = torch.arange(12.0).view(6, 2)  # views contiguous per video id
    assert average_views(flat, 3).tolist() == [[2.0, 3.0], [8.0, 9.0]]


def test_loader_gives_segments_times_crops_views(make_video):
    from dataloaders.video import VideoClipLoader

    path = make_video("wide.mp4", num_frames=30, size=(64, 96))
    options = dict(max_frames=4, image_size=32, mode="stride", stride=4, normalize="imagenet")
    views = VideoClipLoader(**options, test_views=(3, 3))
    assert views._segments([8, 12, 16, 20], 30, 25.0, None, None) == [[0, 4, 8, 12], [8, 12, 16, 20],
                                                                       [17, 21, 25, 29]]  # evenly spaced
    video, mask = views(path)
    assert video.shape == (9, 4, 3, 32, 32) and mask.shape == (9, 4) and bool(mask.all())
    single, _ = VideoClipLoader(**options)(path)  # one centred view
    assert torch.equal(video[4], single)  # the middle segment's centre crop
    assert not torch.equal(video[3], video[4]) and not torch.equal(video[1], video[4])  # other crops / segments
    train, _ = VideoClipLoader(**options, test_views=(3, 3), train_mode=True)(path)
    assert train.shape == (4, 3, 32, 32)  # training never gives views


# -- the pre-training step ------------------------------------------------------------------------------


def test_pretraining_step_trains_every_parameter_and_computes_the_spec_losses():
    model = simvtp_model(*PRETRAIN)
    batch = make_batch()
    draws = int(model.tube_mask.draws)
    losses = step(model, batch)
    assert set(losses) == {"loss", "pixel", "mlm", "vtc", "vtm"} and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss"].item() == pytest.approx(sum(losses[k].item() for k in ("pixel", "mlm", "vtc", "vtm")))
    assert losses["mlm"].item() == pytest.approx(math.log(49408), rel=0.1)  # fresh head: near uniform
    assert losses["vtm"].item() == pytest.approx(math.log(2), rel=0.3)
    assert int(model.tube_mask.draws) == draws + 1 and int(model.text_masker.draws) == 1
    losses["loss"].backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not without, without
    # Fine-tuning starts without what only pre-training uses.
    assert {n.split(".")[0] for n, _ in simvtp_model().named_parameters()} == {
        "clip", "text_trunk", "video_fc_norm", "text_fc_norm"}


def test_pixel_loss_is_the_mse_of_masked_tubes_and_padding_is_excluded():
    model = simvtp_model(*PRETRAIN, simvtp_loss_weights=[1.0, 0.0, 0.0, 0.0])
    batch = make_batch(pad=False)
    draws = int(model.tube_mask.draws)
    captured = {}
    model.decoder.register_forward_hook(lambda m, i, o: captured.update(pred=o, masked=i[2]))
    losses = step(model, batch)
    target = pixel_targets(batch["video"], 2, 8, "imagenet")
    target = target.gather(1, captured["masked"][..., None].expand(-1, -1, 384))
    assert losses["pixel"].item() == pytest.approx(F.mse_loss(captured["pred"], target).item(), rel=1e-6)
    assert captured["masked"].shape == (4, 28)  # ⌊0.9·16⌋ = 14 per slice, 2 slices
    model.tube_mask.draws.fill_(draws)  # the same masks again, with garbage in a padded frame
    padded = make_batch(pad=False)
    padded["video_mask"][:, 2:] = 0
    padded["video"][:, 2:] = 10 * torch.randn_like(padded["video"][:, 2:])
    losses_padded = step(model, padded)
    masked = captured["masked"]
    first = masked < 16  # tokens of the first (real) tubelet slice
    target = pixel_targets(padded["video"][:, :2].repeat(1, 2, 1, 1, 1), 2, 8, "imagenet")
    target = target.gather(1, masked[..., None].expand(-1, -1, 384))
    expected = F.mse_loss(captured["pred"][first], target[first])
    assert losses_padded["pixel"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_pool_padding_and_local_negatives_are_parity_switches():
    batch = make_batch()
    default, parity = simvtp_model().eval(), simvtp_model("--pool_padding").eval()
    with torch.no_grad():
        a = default.encode_text(batch["text_ids"], batch["text_mask"])
        b = parity.encode_text(batch["text_ids"], batch["text_mask"])
        alone = default.encode_text(batch["text_ids"][:1], batch["text_mask"][:1])  # the shortest caption, unpadded
    assert torch.allclose(a[0], alone[0], atol=1e-5)  # padding never changes a caption's feature
    assert not torch.allclose(a, b, atol=1e-4)  # SimVTP's code averages the padding in
    local = simvtp_model(*PRETRAIN, "--local_negatives")
    losses = step(local, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()


# -- 2 gloo ranks == 1 process -------------------------------------------------------------------------


def _result(model, batch, env):
    head = getattr(model, "module", model)
    return {**step_record(model, step(model, batch, env)),
            "draws": (int(head.tube_mask.draws), int(head.text_masker.draws))}


def _work(env, out_dir):
    model = nn.parallel.DistributedDataParallel(simvtp_model(*PRETRAIN))
    torch.save(_result(model, local_rows(make_batch(), env), env), f"{out_dir}/rank{env.rank}.pt")


def test_two_gloo_ranks_pretraining_step_equals_one_process(tmp_path):
    single = _result(simvtp_model(*PRETRAIN), make_batch(), DistEnv())
    assert len(single["grads"]) > 30
    run_on_ranks(_work, tmp_path)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["draws"] == single["draws"]  # the same masks: one draw of the global batch per step
        assert_same_step(result, single)


# -- dropout and drop-path: drawn per sample of the global batch ------------------------------------------

DROPOUT = ["--drop_path", "0.5", "--text_dropout", "0.3"]  # the tiny trunk's 2 blocks: rates 0 and 0.5
DROPOUT_CONFIGS = {"pretrain": ["--simvtp_stage", "pretrain", *DROPOUT], "finetune": DROPOUT}


def _dropout_result(model, batch, env):
    return step_record(model, model(batch, StepContext(env, step=3)))


def _dropout_work(env, out_dir):
    for name, flags in DROPOUT_CONFIGS.items():
        model = nn.parallel.DistributedDataParallel(simvtp_model(*flags))
        torch.save(_dropout_result(model, local_rows(make_batch(), env), env), f"{out_dir}/{name}{env.rank}.pt")


def test_two_gloo_ranks_equal_one_process_with_dropout_and_drop_path_on(tmp_path):
    singles = {name: _dropout_result(simvtp_model(*flags), make_batch(), DistEnv())
               for name, flags in DROPOUT_CONFIGS.items()}
    run_on_ranks(_dropout_work, tmp_path)
    for name, single in singles.items():
        for rank in range(2):
            assert_same_step(torch.load(tmp_path / f"{name}{rank}.pt", weights_only=True), single, 1e-5, name, rank)


def _features_of_step(model, batch, ctx):
    """The fine-tuning step's pooled text and video features (the loss's inputs), from hooks."""
    captured = []
    hooks = [norm.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
             for norm in (model.text_fc_norm, model.video_fc_norm)]
    try:
        model(batch, ctx)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(captured, 1)  # (B, 2 width): text then video


def test_micro_steps_draw_the_dropout_of_one_big_step():
    """Gradient accumulation: the micro-steps' rows get the masks they get in one step of the whole batch."""
    model, batch = simvtp_model(*DROPOUT), make_batch()
    whole = _features_of_step(model, batch, StepContext(DistEnv(), step=3))
    halves = torch.cat([_features_of_step(model, {k: v[2 * a:2 * a + 2] for k, v in batch.items()},
                                          StepContext(DistEnv(), step=3, micro_step=a)) for a in range(2)])
    # fp32 features after LayerNorm (entries of order 1) through 2 blocks in batches of 4 vs 2: a few ulps.
    torch.testing.assert_close(halves, whole, atol=1e-5 * max(1.0, whole.abs().max().item()), rtol=0)
    eval_features = _features_of_step(model.eval(), batch, StepContext(DistEnv(), step=3))
    assert (eval_features - whole).abs().max() > 0.1  # dropout was on


def test_dropout_differs_between_rows_micro_steps_and_steps_and_replays():
    model = simvtp_model(*DROPOUT)
    same = {k: v[:1].repeat(4, *([1] * (v.ndim - 1))) for k, v in make_batch(pad=False).items()}  # 4 equal rows

    def features(step, micro_step):
        return _features_of_step(model, same, StepContext(DistEnv(), step=step, micro_step=micro_step))

    first, width = features(3, 0), model.clip.config.width
    text = first[:, :width]
    assert all((text[i] - text[j]).abs().max() > 1e-3 for i in range(4) for j in range(i))  # rows: own masks
    assert (features(3, 1) - first).abs().max() > 1e-3  # the next micro-step: new rows, new masks
    assert (features(4, 0) - first).abs().max() > 1e-3  # the next optimiser step
    assert torch.equal(features(3, 0), first)  # (seed, step, row) decide: a resumed run replays them


def test_checkpointed_blocks_recompute_the_masks_they_drew():
    batch, grads = make_batch(), []
    for checkpointing in (False, True):
        model = simvtp_model(*DROPOUT)
        for trunk in (model.clip, model.text_trunk):
            trunk.set_grad_checkpointing(checkpointing)
        grads.append(step_record(model, model(batch, StepContext(DistEnv(), step=3)))["grads"])
    for name, grad in grads[0].items():  # the same arithmetic, recomputed: equal up to rounding
        assert (grads[1][name] - grad).abs().max() <= 1e-6 * max(1.0, grad.abs().max().item()), name


def test_the_trainer_numbers_the_micro_steps(corpora, tmp_path, monkeypatch):
    from modules.heads.simvtp import SimVTP

    seen, original = [], SimVTP.training_step

    def recording(self, batch, ctx):
        seen.append((ctx.step, ctx.micro_step, len(batch["text_ids"])))
        return original(self, batch, ctx)

    monkeypatch.setattr(SimVTP, "training_step", recording)
    corpus, bench = corpora
    assert main_task_retrieval.main(["--do_train", "--output_dir", str(tmp_path), "--datatype", "msrvtt", "--data_path",
                                     str(bench), "--features_path", str(bench / "videos"), *TINY, "--epochs", "1",
                                     "--gradient_accumulation_steps", "2"]) == 0
    assert seen[:4] == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]


def test_row_noise_hash_is_lowbias32_and_its_masks_have_the_rate():
    from modules.videomae.row_noise import RowStream, mix32

    def reference(x):  # Python's exact integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = torch.randint(0, 2 ** 32, (1000,), generator=torch.Generator().manual_seed(0))
    assert mix32(values).tolist() == [reference(v) for v in values.tolist()]
    assert mix32(0xFFFFFFFF) == reference(0xFFFFFFFF) and mix32(1) == reference(1)
    stream = RowStream(12345, torch.arange(20000))
    keep = stream.keep((1, 1), 0.3, torch.float32)
    assert keep.shape == (20000, 1, 1) and keep.unique().tolist() == [0.0, torch.tensor(1 / 0.7).item()]
    kept = (keep > 0).float().mean().item()
    assert abs(kept - 0.7) < 4 * math.sqrt(0.7 * 0.3 / 20000)  # 4 standard errors
    u = stream.uniform((8,))  # neighbouring elements and rows uncorrelated: |r| < 5.6 standard errors (1 / √n)
    assert torch.corrcoef(torch.stack([u[:-1, 0], u[:-1, 1], u[1:, 0]]))[0, 1:].abs().max() < 0.04
    assert torch.equal(RowStream(12345, torch.arange(5, 9)).uniform((8,)), u[5:9])  # a row's numbers are its own


def test_masked_vtc_leaves_chance_when_every_tube_shows_the_class():
    """docs/simvtp.md: the toy demo's VTC stays at chance under masking, yet the masked path can learn: with
    90% of the tubes hidden, VTC alone learns pairs whose class colours every frame (so any tube shows it)."""
    model = simvtp_model("--simvtp_stage", "pretrain", "--simvtp_loss_weights", "0", "0", "1", "0",
                         "--text_mask_ratio", "0", "--text_dropout", "0")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    g, words = torch.Generator().manual_seed(1), "red green blue pink gray gold teal navy".split()
    colours = torch.linspace(-1.5, 1.5, 8)
    ids, mask = tokenize([f"a {w} video" for w in words], 8)
    losses = []
    for s in range(40):
        order = torch.randperm(8, generator=g)
        video = 0.3 * torch.randn(8, 4, 3, 32, 32, generator=g)
        video[:, :, 0] += colours[order][:, None, None, None]
        video[:, :, 1] -= colours[order][:, None, None, None]
        out = model({"video": video, "video_mask": torch.ones(8, 4, dtype=torch.long), "text_ids": ids[order],
                     "text_mask": mask[order]}, StepContext(DistEnv(), step=s))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["vtc"].item())
    chance = 2 * math.log(8)
    assert losses[0] > 0.9 * chance and sum(losses[-5:]) / 5 < 0.5 * chance, losses


# -- main_pretrain.py: exact resume; pre-train -> fine-tune -> evaluate -----------------------------------


TINY = ["--method", "simvtp", "--pretrained_clip_name", "tiny", "--clip_init", "random", "--batch_size", "4",
        "--batch_size_val", "8", "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0",
        "--lr", "1e-3", "--seed", "3", "--sample_mode", "stride", "--eval_sample_mode", "stride", "--frame_stride", "2",
        "--normalize", "imagenet"]


def pretrain_args(corpora, out, *extra):
    corpus, bench = corpora
    return ["--do_pretrain", "--datatype", "msrvtt", "--data_path", str(corpus), "--features_path",
            str(corpus / "videos"),
            "--eval_datatype", "msrvtt", "--eval_data_path", str(bench), "--eval_features_path", str(bench / "videos"),
            "--output_dir", str(out), "--epochs", "2", "--no_eval_each_epoch", *TINY, *extra]


@pytest.fixture(scope="module")
def straight_run(corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = run_pretrain_subprocess(pretrain_args(corpora, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_pretraining_resumes_bit_identically_masks_included(corpora, straight_run, tmp_path):
    # 12 videos / batch 4 = 3 steps per epoch; die at step 5, one step after the checkpoint of step 4.
    killed = run_pretrain_subprocess(pretrain_args(corpora, tmp_path, "--save_every_steps", "2"), fault_at=5)
    assert killed.returncode == 17, killed.stderr[-2000:]
    at_step_4 = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert at_step_4["step"] == 4 and int(at_step_4["model"]["tube_mask.draws"]) == 4
    resume = ["--resume", str(tmp_path / "checkpoint_last.pt")]
    resumed = run_pretrain_subprocess(pretrain_args(corpora, tmp_path, *resume))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (torch.load(run / "model_final.pt", weights_only=True)["model"] for run in (straight_run, tmp_path))
    assert a.keys() == b.keys() and int(a["tube_mask.draws"]) == 6 and int(a["text_masker.draws"]) == 6
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    moved = [k for k in a if k.startswith("decoder.") and not torch.equal(a[k], at_step_4["model"][k])]
    assert moved  # the replayed steps trained (the comparison is not between untouched states)


def test_pretrain_finetune_evaluate_round_trip(corpora, straight_run, tmp_path):
    corpus, bench = corpora
    pretrained = straight_run / "model_final.pt"
    finetune = ["--datatype", "msrvtt", "--data_path", str(bench), "--features_path", str(bench / "videos"), *TINY,
                "--epochs", "1"]
    assert main_task_retrieval.main(["--do_train", "--output_dir", str(tmp_path / "ft"), "--init_model",
                                     str(pretrained), *finetune]) == 0
    log = (tmp_path / "ft" / "log.txt").read_text()
    assert "text copy of the trunk starts from the checkpoint's trunk" in log
    assert "tensors that only pre-training uses (clip, decoder, mlm_head, text_masker, tube_mask, vtm_head)" in log
    tuned = torch.load(tmp_path / "ft" / "model_final.pt", weights_only=True)["model"]
    assert not any(k.startswith(("decoder.", "mlm_head.", "clip.norm.")) for k in tuned)
    start = build_model(main_task_retrieval.get_args(["--do_train", "--init_model", str(pretrained), *finetune]))
    source = torch.load(pretrained, weights_only=True)["model"]
    for name, value in start.state_dict().items():  # both trunk copies start from the pre-trained trunk
        origin = "clip." + name[len("text_trunk."):] if name.startswith("text_trunk.") else name
        if "fc_norm" not in name:
            assert torch.equal(value, source[origin]), name
    # SimVTP's --only_test evaluates the fine-tuned weights to the same numbers.
    assert main_task_retrieval.main(["--only_test", "--output_dir", str(tmp_path / "eval"), "--init_model",
                                     str(tmp_path / "ft" / "model_final.pt"), *finetune]) == 0
    final = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()][-1]
    again = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()][-1]
    assert again["metrics"] == final["metrics"] and again["selection_rule"] == "evaluation only"
    # SimVTP's test protocol: 2 segments x 2 crops per video, averaged per video.
    assert main_task_retrieval.main(["--do_eval", "--output_dir", str(tmp_path / "views"), "--init_model",
                                     str(tmp_path / "ft" / "model_final.pt"), "--test_num_segment", "2",
                                     "--test_num_crop", "2", *finetune]) == 0
    views = [json.loads(line) for line in (tmp_path / "views" / "metrics.jsonl").read_text().splitlines()][-1]
    assert views["metrics"]["num_videos"] == 6


def test_visualize_mae_writes_a_picture_per_clip(corpora, straight_run, tmp_path):
    from PIL import Image

    from tools.visualize_mae import main as visualize

    corpus, bench = corpora
    videos = [str(bench / "videos" / "video0.mp4"), str(bench / "videos" / "video1.mp4")]
    assert visualize(["--checkpoint", str(straight_run / "model_final.pt"), "--videos", *videos, "--captions",
                      "a red ball moves left slowly", "a green cube", "--output_dir", str(tmp_path),
                      "--scale", "2"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [Path(s["png"]).name for s in summary] == ["000_video0.png", "001_video1.png"]
    assert summary[0]["masked_tubes"] == 28 and summary[0]["tubes"] == 32  # 14 of 16 per slice, 2 slices
    caption, masked, predicted = summary[0]["lines"]
    assert "[MASK]" in masked and predicted.count("[") == masked.count("[MASK]") > 0
    image = Image.open(summary[0]["png"])
    assert image.height > 3 * 64 and image.width >= 4 * 64  # 3 rows of 4 frames at 2 x 32 px


def test_two_nodes_through_torchrun_rendezvous_equal_one_process(corpora, tmp_path):
    """torchrun --nnodes 2 --node_rank R --master_addr ...: two "nodes" of one process each train what one
    process trains (no dropout, so the only difference is the order of fp32 sums)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = pretrain_args(corpora, tmp_path / "nodes", "--epochs", "1", "--text_dropout", "0")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--master_addr=127.0.0.1", f"--master_port={port}", "--nproc_per_node=1",
                               str(ROOT / "main_pretrain.py"), *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    single = run_pretrain_subprocess(pretrain_args(corpora, tmp_path / "single", "--epochs", "1", "--text_dropout",
                                                   "0"))
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert single.returncode == 0, single.stderr[-2000:]
    assert "world size 2" in (tmp_path / "nodes" / "log.txt").read_text()
    a, b = (torch.load(tmp_path / run / "model_final.pt", weights_only=True)["model"] for run in ("single", "nodes"))
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), atol=1e-4, rtol=1e-4), key


# -- flags ---------------------------------------------------------------------------------------------


def test_seed_flags_and_wrong_backbone_are_one_line(capsys):
    args = main_task_retrieval.get_args(["--only_test", "--finetune", "simvtp_msrvtt.pth", "--model",
                                         "vit_base_patch16_224", "--sampling_rate", "4", "--num_frames", "16",
                                         "--dist_eval", "--data_path", "data/msrvtt"])
    assert (args.method, args.do_eval, args.videomae_checkpoint, args.videomae_arch) == (
        "simvtp", True, "simvtp_msrvtt.pth", "ViT-B-16")
    assert (args.frame_stride, args.max_frames) == (4, 16)
    pre = main_pretrain.get_args(["--do_pretrain", "--mask_ratio", "0.9", "--mask_type", "tube", "--decoder_depth",
                                  "4"])
    assert (pre.method, pre.video_mask_ratio, pre.decoder_depth) == ("simvtp", 0.9, 4)
    with pytest.raises(ValueError, match="runs on the videomae_joint backbone, not --backbone clip"):
        simvtp_model("--backbone", "clip")
    with pytest.raises(ValueError, match="needs --videomae_checkpoint PATH"):
        build_model(main_task_retrieval.get_args(["--method", "simvtp"]))


@pytest.mark.parametrize("name, stage", [("simvtp_pretrain", "pretrain"), ("simvtp_msrvtt", "finetune")])
def test_recipes_parse(name, stage):
    from engine.options import build_parser, parse_args

    args = parse_args(["--config", str(ROOT / "configs" / f"{name}.yaml")], parser=build_parser())
    assert (args.method, args.simvtp_stage, args.videomae_arch) == ("simvtp", stage, "ViT-B-16")
    assert args.normalize == "imagenet"
    assert (args.max_frames, args.frame_stride, args.sample_mode) == (16, 4, "stride")
    if stage == "pretrain":
        assert (args.batch_size, args.blr, args.video_mask_ratio, args.text_mask_ratio) == (1024, 1.5e-4, 0.9, 0.75)
        assert scaled_lr(args.blr, args.batch_size) == pytest.approx(6e-4) and args.adam_beta2 == 0.95
    else:
        assert (args.batch_size, args.blr, args.drop_path, args.epochs) == (64, 3e-4, 0.1, 100)
        assert (args.test_num_segment, args.test_num_crop) == (3, 3)

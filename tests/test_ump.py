"""UMP conformance tests (the common checks and UMP's own) for the reconstructed R-UPG / R-STS."""
import pytest
import torch
from prompt_tuning_helpers import (Recorder, check_clip_bit_identical_after_step, check_frozen_clip,
                                   check_no_batch_leakage, make_batch, meta_model, reference_loss, tiny_model,
                                   trainable_count)

from modules.clip import tokenize
from modules.heads.prompting import TextPromptHook
from modules.heads.ump import spatial_temporal_shift

NO_PROMPTS = ("--ump_prompt_length", "0", "--ump_sts_layers", "0")


def _wake_generator(model, seed=1):
    """Give the zero-initialised output projection values, so prompts depend on the tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.upg.out.weight.copy_(torch.randn(model.upg.out.weight.shape, generator=g) * 0.5)
    return model


# -- common -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [(), ("--ump_sts_where", "residual", "--ump_sts_mode", "cyclic"),
                                   ("--ump_pooling", "xpool", "--ump_sts_spatial", "two")])
def test_clip_frozen_and_bit_identical_after_a_step(flags):
    model = tiny_model("ump", *flags)
    check_frozen_clip(model)
    check_clip_bit_identical_after_step(model, make_batch())


def test_without_prompts_or_shift_features_equal_vanilla_clip():
    model = tiny_model("ump", *NO_PROMPTS).eval()
    ids, mask, video, video_mask = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids, mask), model.clip.encode_text(ids), atol=1e-5, rtol=1e-5)
        frames, _ = model.clip.encode_frames(video)
        torch.testing.assert_close(model.encode_video(video, video_mask), frames.mean(1), atol=1e-5, rtol=1e-5)


def test_loss_is_symmetric_infonce_at_scale_100():
    model = tiny_model("ump")
    ids, mask, video, video_mask = make_batch()
    t, v = model.encode_text(ids, mask), model.encode_video(video, video_mask)
    torch.testing.assert_close(model.compute_loss(t, v)["loss"], reference_loss(t, v))


# -- UMP 1: R-STS -----------------------------------------------------------------------------------
B, FRAMES, GRID, NP, D = 2, 3, 4, 4, 16


def _tokens(seed=0):
    return torch.randn(B * FRAMES, 1 + GRID * GRID + NP, D, generator=torch.Generator().manual_seed(seed))


def test_sts_keeps_shape_and_cls_and_has_no_parameters():
    x = _tokens()
    for spatial in ("four", "two"):
        for mode in ("zero", "cyclic"):
            y = spatial_temporal_shift(x, FRAMES, GRID, NP, spatial=spatial, mode=mode)
            assert y.shape == x.shape and torch.equal(y[:, 0], x[:, 0])
            assert not torch.equal(y, x)
    assert all(n.startswith("upg.") for n, _ in tiny_model("ump").named_parameters() if not n.startswith("clip."))


@pytest.mark.parametrize("spatial", ["four", "two"])
def test_sts_cyclic_is_a_permutation_and_exactly_invertible(spatial):
    x = _tokens()
    y = spatial_temporal_shift(x, FRAMES, GRID, NP, spatial=spatial, mode="cyclic")
    per_channel = lambda t: t.unflatten(0, (B, FRAMES)).permute(0, 3, 1, 2).flatten(2).sort(-1).values  # noqa: E731
    assert torch.equal(per_channel(y), per_channel(x))  # each channel's multiset, per video
    back = spatial_temporal_shift(y, FRAMES, GRID, NP, spatial=spatial, mode="cyclic", inverse=True)
    assert torch.equal(back, x)


@pytest.mark.parametrize("spatial", ["four", "two"])
def test_sts_zero_mode_moves_entries_and_zero_fills_borders(spatial):
    x = _tokens()
    y = spatial_temporal_shift(x, FRAMES, GRID, NP, spatial=spatial, mode="zero")
    xs, ys = x.unflatten(0, (B, FRAMES)), y.unflatten(0, (B, FRAMES))
    px, py = xs[:, :, 1:17].unflatten(2, (GRID, GRID)), ys[:, :, 1:17].unflatten(2, (GRID, GRID))
    # (source offset (di, dj), channels) written out independently of the implementation
    blocks = ([((0, -1), range(0, 2)), ((0, 1), range(2, 4)), ((-1, 0), range(4, 6)), ((1, 0), range(6, 8))]
              if spatial == "four" else [((0, -1), range(0, 4)), ((0, 1), range(4, 8))])
    for (di, dj), channels in blocks:
        for i in range(GRID):
            for j in range(GRID):
                si, sj = i + di, j + dj
                for c in channels:
                    expected = px[:, :, si, sj, c] if 0 <= si < GRID and 0 <= sj < GRID else torch.zeros(B, FRAMES)
                    assert torch.equal(py[:, :, i, j, c], expected)
    assert torch.equal(py[..., 8:], px[..., 8:])  # half of the channels stay
    prompts_x, prompts_y = xs[:, :, 17:], ys[:, :, 17:]
    for f in range(FRAMES):
        before = prompts_x[:, f - 1, :2] if f > 0 else torch.zeros(B, 2, D)
        after = prompts_x[:, f + 1, 2:] if f < FRAMES - 1 else torch.zeros(B, 2, D)
        assert torch.equal(prompts_y[:, f, :2], before) and torch.equal(prompts_y[:, f, 2:], after)


@pytest.mark.parametrize("mode", ["zero", "cyclic"])
def test_sts_with_padding_shifts_among_the_real_frames_only(mode):
    frames, valid = 4, torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # clips of 3 and 1 real frames, padded to 4
    x = torch.randn(B * frames, 1 + GRID * GRID + NP, D, generator=torch.Generator().manual_seed(0))
    y = spatial_temporal_shift(x, frames, GRID, NP, mode=mode, valid=valid).unflatten(0, (B, frames))
    for b, length in enumerate(valid.sum(1).tolist()):  # the real frames: exactly as the unpadded clip
        alone = spatial_temporal_shift(x.unflatten(0, (B, frames))[b, :length], length, GRID, NP, mode=mode)
        assert torch.equal(y[b, :length], alone)
    # A padded frame gives nothing and receives nothing: only its own patches shift, on its own grid.
    unshifted = spatial_temporal_shift(x, frames, GRID, NP, mode=mode, temporal=False).unflatten(0, (B, frames))
    assert torch.equal(y[valid == 0], unshifted[valid == 0])
    # At the clip's last real frame, what comes "from the next frame" is the border's: zeros, or frame 0's.
    first = x.unflatten(0, (B, frames))[0, 0, 17 + NP // 2:]
    assert torch.equal(y[0, 2, 17 + NP // 2:], torch.zeros_like(first) if mode == "zero" else first)
    if mode == "cyclic":
        back = spatial_temporal_shift(y.flatten(0, 1), frames, GRID, NP, mode=mode, inverse=True, valid=valid)
        assert torch.equal(back, x)


@pytest.mark.parametrize("sts_layers", [0, 1, 2])
def test_sts_runs_only_in_the_last_k_blocks_and_prompt_lifecycle(sts_layers):
    model = _wake_generator(tiny_model("ump", "--ump_sts_layers", str(sts_layers), "--ump_prompt_length", "4"))
    model.eval()
    _, _, video, _ = make_batch(frames=3)
    rec = Recorder()
    visual, hook = model.clip.visual, model.video_hook(3)
    with torch.no_grad():
        x = visual.embed(video.flatten(0, 1))
        visual.transformer(x, hooks=[hook, rec])
        for k in range(2):
            stream = x if k == 0 else rec.outputs[k - 1]
            assert stream.shape[1] == 17 and rec.outputs[k].shape[1] == 17  # 1 + 16 patches after the block
            appended = torch.cat([stream, model.upg(k, stream, "video")], dim=1)  # 17 + 4 inside
            shifted = k >= 2 - sts_layers
            expected = spatial_temporal_shift(appended, 3, 4, 4, **model.sts) if shifted else appended
            assert torch.equal(rec.inputs[k], expected)


def test_sts_in_the_residual_branch_only_feeds_the_attention():
    model = tiny_model("ump", "--ump_sts_where", "residual", "--ump_sts_layers", "1").eval()
    _, _, video, _ = make_batch(frames=3)
    rec, hook = Recorder(), model.video_hook(3)
    visual = model.clip.visual
    with torch.no_grad():
        visual.transformer(visual.embed(video.flatten(0, 1)), hooks=[hook, rec])
        stream = rec.outputs[0]
        x = torch.cat([stream, model.upg(1, stream, "video")], dim=1)
        assert torch.equal(rec.inputs[1], x)  # the stream is not shifted
        block = visual.transformer.resblocks[1]
        y = x + block.attn(block.ln_1(spatial_temporal_shift(x, 3, 4, 8, **model.sts)))
        y = y + block.mlp(block.ln_2(y))
        torch.testing.assert_close(rec.outputs[1], y[:, :17], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(block(x)[:, :17], rec.outputs[1], atol=1e-4)


# -- UMP 2: token counts at B/32, text prompts after SOT -----------------------------------------------
def test_video_tokens_58_inside_50_after_at_b32():
    model = meta_model("ump")
    with torch.device("meta"):
        rec, visual = Recorder(), model.clip.visual
        visual.transformer(visual.embed(torch.empty(24, 3, 224, 224)), hooks=[model.video_hook(12), rec])
        assert all(rec.inputs[k].shape[1:] == (58, 768) and rec.outputs[k].shape[1:] == (50, 768) for k in range(12))
        assert tuple(model.encode_video(torch.empty(2, 12, 3, 224, 224), torch.ones(2, 12)).shape) == (2, 512)


def test_text_prompts_after_sot_and_eot_moves_by_np():
    model = _wake_generator(tiny_model("ump")).eval()
    ids, mask, _, _ = make_batch()
    hook, rec = model.text_hook(mask), Recorder()
    with torch.no_grad():
        pooled, tokens = model.clip.text(ids, hooks=[hook, rec], pool_index=hook.pool_index(ids), return_tokens=True)
        words = model.clip.text.embed(ids)
        x0 = rec.inputs[0]
        assert x0.shape[1] == ids.shape[1] + 8
        assert torch.equal(x0[:, :1], words[:, :1]) and torch.equal(x0[:, 9:], words[:, 1:])
        assert torch.equal(x0[:, 1:9], model.upg(0, words, "text", mask))
        torch.testing.assert_close(pooled, tokens[torch.arange(3), ids.argmax(-1) + 8])
        torch.testing.assert_close(model.encode_text(ids, mask), pooled)


# -- UMP 3: one generator for both branches, conditioned on the tokens -----------------------------------
def test_one_generator_serves_both_branches():
    model = tiny_model("ump")
    ids, mask, video, video_mask = make_batch()
    assert model.video_hook(4).upg is model.upg
    shared = ("upg.prompt_bank", "upg.out.weight")
    for branch in ("text", "video"):
        model.zero_grad(set_to_none=True)
        features = model.encode_text(ids, mask) if branch == "text" else model.encode_video(video, video_mask)
        features.pow(2).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in shared), branch
        assert (grads["upg.video_out.weight"] is not None) == (branch == "video")


def test_generated_prompts_depend_on_the_tokens():
    model = tiny_model("ump")
    x1, x2 = torch.randn(2, 17, 64), torch.randn(2, 17, 64)
    with torch.no_grad():
        for modality in ("text", "video"):  # at init (zero output projection) the bare bank, projected
            torch.testing.assert_close(model.upg(0, x1, modality), model.upg(0, x2, modality))
        _wake_generator(model)
        for modality in ("text", "video"):
            assert not torch.allclose(model.upg(0, x1, modality), model.upg(0, x2, modality), atol=1e-4)


def test_text_features_ignore_padding_length():
    model = _wake_generator(tiny_model("ump")).eval()
    short, short_mask = tokenize(["a dog runs on the beach"], max_words=12)
    long, long_mask = tokenize(["a dog runs on the beach"], max_words=24)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(short, short_mask), model.encode_text(long, long_mask),
                                   atol=1e-5, rtol=1e-5)


# -- UMP 4: no leakage across the batch --------------------------------------------------------------
@pytest.mark.parametrize("flags", [(), ("--ump_sts_mode", "cyclic", "--ump_sts_where", "residual")])
def test_no_batch_leakage(flags):
    check_no_batch_leakage(_wake_generator(tiny_model("ump", *flags)))


# -- UMP 5: text prompts are live; what the test would catch ---------------------------------------------
def test_text_prompts_get_gradient_and_post_eot_prompts_would_not():
    model = tiny_model("ump")
    ids, mask, video, video_mask = make_batch()
    videos = model.encode_video(video, video_mask).detach()
    model.compute_loss(model.encode_text(ids, mask), videos)["loss"].backward()
    assert model.upg.prompt_bank.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    # The released code's placement (after the padding) is dead under the causal mask:
    dead = TextPromptHook(None, 0, 2, lambda k, words: model.upg(k, words, "text", mask), 8)
    text = model.clip.encode_text(ids, hooks=[dead], pool_index=ids.argmax(-1))
    model.compute_loss(text, videos)["loss"].backward()
    assert torch.count_nonzero(model.upg.prompt_bank.grad) == 0


def test_zero_gradient_at_init_parameters_come_alive_after_one_step():
    model = tiny_model("ump")
    batch = make_batch()
    optimiser = torch.optim.AdamW(model.param_groups(1e-2, 1e-3, 0.2))
    for step in range(2):
        optimiser.zero_grad(set_to_none=True)
        ids, mask, video, video_mask = batch
        model.compute_loss(model.encode_text(ids, mask), model.encode_video(video, video_mask))["loss"].backward()
        sleeping = [p.grad for n, p in model.named_parameters() if n.startswith(model.zero_grad_at_init)]
        assert sleeping and all((torch.count_nonzero(g) == 0) == (step == 0) for g in sleeping)
        optimiser.step()


@pytest.mark.parametrize("pooling", ["mean", "xpool"])
def test_every_trainable_parameter_is_decayed(pooling):
    """UMP's X-Pool-based script: weight decay on every trainable parameter (biases, norms and banks included)."""
    from engine.optim import build_optimizer
    from engine.options import parse_args
    from modules.factory import build_model

    args = parse_args(["--method", "ump", "--clip_init", "random", "--pretrained_clip_name", "tiny",
                       "--ump_pooling", pooling, "--weight_decay", "0.05"])
    torch.manual_seed(0)
    model = build_model(args)
    optimizer, _ = build_optimizer(model, args, total_steps=10)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith(".bias") for n in trainable) and any("norm" in n for n in trainable)
    assert {n: decay.get(id(p)) for n, p in trainable.items()} == {n: args.weight_decay for n in trainable}


# -- UMP 6: parameter count ------------------------------------------------------------------------------
def test_parameter_count_at_b32():
    count = trainable_count(meta_model("ump"))
    assert count == 1_232_192 and abs(count - 1.2e6) <= 0.1e6
    assert trainable_count(meta_model("ump", "--ump_attn_dim", "64")) == 838_400 + 2_051 * 64
    assert trainable_count(meta_model("ump", "--ump_pooling", "xpool")) == 1_232_192 + 1_316_352


# -- recipes and the UMP README's flags --------------------------------------------------------------
SEED_COMMAND = ["--exp_name=run1", "--videos_dir=/data/videos", "--batch_size=32", "--noclip_lr=3e-5",
                "--transformer_dropout=0.3", "--dataset_name=MSRVTT", "--msrvtt_train_file=9k"]


def test_seed_command_flags_are_rewritten_onto_ours():
    from modules.heads.aliases import apply_flag_aliases

    assert apply_flag_aliases(SEED_COMMAND + ["--num_frames", "12"]) == [
        "--output_dir", "outputs/run1", "--features_path", "/data/videos", "--batch_size=32", "--lr", "3e-5",
        "--ump_pool_dropout", "0.3", "--datatype", "msrvtt", "--train_csv", "MSRVTT_train.9k.csv",
        "--max_frames", "12"]
    assert apply_flag_aliases(["--videos_dir", "v", "--method", "ump"]) == ["--features_path", "v", "--method", "ump"]


def _full_parser():
    from engine.options import build_parser

    return build_parser()


@pytest.mark.parametrize("name, method", [("dgl_msrvtt", "dgl"), ("ump_msrvtt", "ump")])
def test_recipes_parse_as_flags_of_main(name, method):
    from pathlib import Path

    from engine.options import parse_args

    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    args = parse_args(["--config", str(config)], parser=_full_parser())
    assert args.method == method and args.max_frames == 12 and args.pretrained_clip_name == "ViT-B/32"
    if method == "dgl":
        assert (args.lr, args.batch_size, args.adam_beta2, args.shared_latent_space) == (2e-3, 512, 0.98, "transformer")
    else:
        assert (args.lr, args.batch_size, args.adam_beta2, args.ump_sts_layers) == (3e-5, 32, 0.999, 6)


def test_seed_command_parses_into_our_flags():
    from engine.options import parse_args

    args = parse_args(["--method", "ump", *SEED_COMMAND], parser=_full_parser())
    assert (args.lr, args.ump_pool_dropout, args.datatype, args.train_csv, args.features_path, args.output_dir) == (
        3e-5, 0.3, "msrvtt", "MSRVTT_train.9k.csv", "/data/videos", "outputs/run1")

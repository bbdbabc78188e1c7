"""DGL conformance tests (the common checks and DGL's own), tiny CLIP unless a count or shape needs B/32."""
import math

import pytest
import torch
from prompt_tuning_helpers import (Recorder, check_clip_bit_identical_after_step, check_frozen_clip,
                                   check_no_batch_leakage, make_batch, meta_model, prompt_args, reference_loss,
                                   tiny_model, trainable_count)

from modules.clip import TokenTap, build_clip
from modules.heads import get_head
from modules.heads.dgl import global_local_mask
from modules.metrics import retrieval_metrics

LINEAR = ("--shared_latent_space", "linear")
TRANSFORMER = ("--shared_latent_space", "transformer")
NO_PROMPTS = ("--text_prompt_length", "0", "--visual_prompt_length", "0", "--global_prompt_length", "0",
              "--visual_output_type", "frame_cls_mean")


# -- common -----------------------------------------------------------------------------------------
def test_metrics_identity_and_known_3x3():
    m = retrieval_metrics(torch.eye(5))
    assert m["R1"] == 100.0 and m["MdR"] == 1.0 and m["MnR"] == 1.0
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.6, 0.2]])  # ranks 1, 2, 3
    m = retrieval_metrics(sim)
    assert m["R1"] == pytest.approx(100 / 3) and m["R5"] == 100.0 and m["MdR"] == 2.0 and m["MnR"] == 2.0


@pytest.mark.parametrize("latent", [LINEAR, TRANSFORMER])
def test_clip_frozen_and_bit_identical_after_a_step(latent):
    model = tiny_model("dgl", *latent, "--dgl_postfix")
    check_frozen_clip(model)
    check_clip_bit_identical_after_step(model, make_batch())


@pytest.mark.parametrize("attention", ["global_local", "frame"])
@pytest.mark.parametrize("latent", [LINEAR, TRANSFORMER])
def test_without_prompts_features_equal_vanilla_clip(latent, attention):
    model = tiny_model("dgl", *latent, *NO_PROMPTS, "--dgl_attention", attention).eval()
    ids, mask, video, video_mask = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids, mask), model.clip.encode_text(ids), atol=1e-5, rtol=1e-5)
        tokens, hook = model.video_tokens(video)
        rows = tokens[:, hook.frame_cls_rows()] if attention == "global_local" else tokens[:, 0].unflatten(0, (3, 4))
        vanilla, _ = model.clip.encode_frames(video)
        torch.testing.assert_close(model.clip.visual.project(rows), vanilla, atol=1e-5, rtol=1e-5)


# -- DGL 1: shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, tokens", [("ViT-B/32", 652), ("ViT-B/16", 2416)])
def test_visual_sequence_and_output_shapes_at_full_size(arch, tokens):
    model = meta_model("dgl", "--dgl_postfix", arch=arch)
    with torch.device("meta"):
        tap = TokenTap(range(12))
        video = torch.empty(2, 12, 3, 224, 224)
        model.video_tokens(video, hooks=[tap])
        assert all(tuple(tap.tokens[i].shape) == (2, tokens, 768) for i in range(12))
        assert tuple(model.encode_video(video, torch.ones(2, 12)).shape) == (2, 512)
        ids = torch.zeros(2, 32, dtype=torch.long)
        hook, tap = model.text_hook(model.generate_prompts()), TokenTap(range(12))
        out = model.clip.text(ids, hooks=[hook, tap], pool_index=hook.pool_index(ids))
        assert all(tuple(tap.tokens[i].shape) == (2, 40, 512) for i in range(12)) and tuple(out.shape) == (2, 512)


@pytest.mark.parametrize("postfix", [(), ("--dgl_postfix",)])
def test_text_layout_prompts_after_sot_words_keep_positions_eot_moves_by_4(postfix):
    model = tiny_model("dgl", *LINEAR, *postfix).eval()
    ids, mask, _, _ = make_batch()
    prompts = model.generate_prompts()
    hook, rec = model.text_hook(prompts), Recorder()
    with torch.no_grad():
        pooled, tokens = model.clip.text(ids, hooks=[hook, rec], pool_index=hook.pool_index(ids), return_tokens=True)
        x0, words = rec.inputs[0], model.clip.text.embed(ids)
    assert x0.shape[1] == ids.shape[1] + 4 + (4 if postfix else 0)
    assert torch.equal(x0[:, 0], words[:, 0]) and torch.equal(x0[:, 1:5], prompts.text_prefix[0].expand(3, -1, -1))
    assert torch.equal(x0[:, 5:5 + ids.shape[1] - 1], words[:, 1:])  # no positional embedding on prompts
    eot = ids.argmax(-1)
    torch.testing.assert_close(pooled, tokens[torch.arange(3), eot + 4])
    torch.testing.assert_close(model.encode_text(ids, mask), pooled)


# -- DGL 2: trainable names and exact counts ----------------------------------------------------------
PATTERNS = {
    "linear": ("visual_prompt_embedding", "prompt_embeddings", "prefix_text_prompt_proj_layer",
               "postfix_text_prompt_proj_layer"),
    "transformer": ("PromptTransformer", "unified_prompt_mlp", "unified_prompt_embedding", "prompt_embeddings"),
}


@pytest.mark.parametrize("latent, expected", [("linear", 827_392), ("transformer", 9_575_168)])
@pytest.mark.parametrize("arch", ["ViT-B/32", "ViT-B/16"])
def test_trainable_names_and_counts_at_full_size(latent, expected, arch):
    model = meta_model("dgl", "--shared_latent_space", latent, "--dgl_postfix", arch=arch)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(any(pattern in n for pattern in PATTERNS[latent]) for n in names), names
    assert all(any(pattern in n for n in names) for pattern in PATTERNS[latent])
    assert trainable_count(model) == expected
    if latent == "linear":
        # By default the dead postfix projection (393,728) is built (the paper's count, released
        # checkpoints) but frozen: it never reaches the loss, and DDP stops on trainable parameters that don't.
        default = meta_model("dgl", "--shared_latent_space", latent, arch=arch)
        assert trainable_count(default) == 433_664
        assert sum(p.numel() for p in default.parameters() if not p.requires_grad) - sum(
            p.numel() for p in default.clip.parameters()) == expected - 433_664


def _count_at_frames(frames: int, *flags: str) -> int:
    args = prompt_args("dgl", *TRANSFORMER, *flags)
    args.max_frames = frames
    with torch.device("meta"):
        return trainable_count(get_head("dgl")(build_clip("ViT-B/32", device="meta"), args))


def test_transformer_count_grows_with_frames_and_prompt_layers_alias():
    assert _count_at_frames(64) == 11_492_096  # ActivityNet: 8 + 4 x 64 = 264 table rows
    generator_and_globals = 7_087_872 + 1_968_128 + 3_072
    assert _count_at_frames(64, "--unified_prompt_layers", "2") == 2 * 264 * 768 + generator_and_globals
    assert prompt_args("dgl", "--unified_prompt_layers", "2").unified_transformer_layers == 2


# -- DGL 3 and 4: global-local attention through the mask -------------------------------------------
def _mha(attn, queries, keys):
    """Multi-head attention of ``queries`` over ``keys`` (no mask), from the block's own weights."""
    heads, width = attn.heads, queries.shape[-1]
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)

    def split(x, w, b):
        return (x @ w.t() + b).unflatten(-1, (heads, width // heads)).transpose(1, 2)

    q, k, v = split(queries, wq, bq), split(keys, wk, bk), split(keys, wv, bv)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
    return attn.out_proj((weights @ v).transpose(1, 2).flatten(2))


def _layout(model, video):
    hook = model.video_hook(model.generate_prompts(), video.shape[1])
    x = hook.before_block(0, model.clip.visual.embed(video.flatten(0, 1)))
    return hook, x


def test_masked_single_call_equals_two_call_global_local_form():
    model = tiny_model("dgl", *TRANSFORMER).eval()
    _, _, video, _ = make_batch()
    hook, x = _layout(model, video)
    ng, frames, s = hook.num_global, hook.num_frames, hook.frame_tokens
    assert x.shape[1] == ng + frames * s == 4 + 4 * (1 + 4 + 16)
    block = model.clip.visual.transformer.resblocks[0]
    with torch.no_grad():
        single = block(x, hook.attn_mask(0, x))
        xn = block.ln_1(x)
        g = xn[:, :ng]
        parts = [_mha(block.attn, g, xn)]  # global prompts see every token
        for t in range(frames):
            z = xn[:, ng + t * s: ng + (t + 1) * s]
            parts.append(_mha(block.attn, z, torch.cat([g, z], dim=1)))  # a frame sees itself + the globals
        two_call = x + torch.cat(parts, dim=1)
        two_call = two_call + block.mlp(block.ln_2(two_call))
    torch.testing.assert_close(single, two_call, atol=1e-5, rtol=1e-5)


def test_global_local_mask_values():
    mask = global_local_mask(2, 3, 2)
    allowed = mask == 0
    assert allowed[:2].all() and allowed[:, :2].all()  # global rows and columns
    assert allowed[2, 3] and not allowed[2, 4] and not allowed[7, 2] and allowed[7, 6]
    assert (mask[~allowed] == float("-inf")).all()


def test_global_local_mask_per_sample_hides_padded_frames_from_the_globals():
    valid = torch.tensor([[1, 1, 0], [1, 0, 1]])  # 2 globals, 3 frames of 2 tokens; frame 2, frame 1 padded
    masks, shared = global_local_mask(2, 3, 2, valid_frames=valid), global_local_mask(2, 3, 2)
    assert masks.shape == (2, 8, 8) and masks.dtype == torch.float32
    assert torch.equal(masks[:, 2:], shared[2:].expand(2, -1, -1))  # frame tokens: as without padding
    sees = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks[:, :2] == 0, sees[:, None].expand(-1, 2, -1))  # globals: globals and real frames
    assert (masks[masks != 0] == float("-inf")).all()


def test_changing_one_frame_leaves_other_frames_and_changes_globals():
    model = tiny_model("dgl", *LINEAR).eval()
    _, _, video, _ = make_batch()
    hook, x = _layout(model, video)
    ng, s, nl = hook.num_global, hook.frame_tokens, hook.num_local
    changed = x.clone()
    frame2 = slice(ng + 2 * s + 1 + nl, ng + 3 * s)  # frame 2's patches
    changed[:, frame2] += torch.randn_like(changed[:, frame2])
    block = model.clip.visual.transformer.resblocks[0]
    with torch.no_grad():
        a, b = block(x, hook.attn_mask(0, x)), block(changed, hook.attn_mask(0, changed))
    frame1 = slice(ng + s, ng + 2 * s)
    torch.testing.assert_close(a[:, frame1], b[:, frame1], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[:, ng + 3 * s:], b[:, ng + 3 * s:], atol=1e-6, rtol=0)  # frame 3 too
    assert (a[:, :ng] - b[:, :ng]).abs().amax() > 1e-3  # the global prompts saw the change


# -- DGL 5 and 6: deep local replacement, shallow globals, input-independent prompts ------------------
@pytest.mark.parametrize("latent, depth", [(LINEAR, "2"), (TRANSFORMER, "2"), (LINEAR, "1")])
def test_deep_replacement_and_shallow_globals(latent, depth):
    model = tiny_model("dgl", *latent, "--unified_transformer_layers", depth).eval()
    _, _, video, _ = make_batch()
    prompts = model.generate_prompts()
    rec = Recorder()
    with torch.no_grad():
        model.video_tokens(video, hooks=[rec])
    ng, nl, frames = model.num_global, model.num_local, video.shape[1]
    for index in range(2):
        x = rec.inputs[index]
        local = x[:, ng:].unflatten(1, (frames, -1))[:, :, 1:1 + nl]
        if index < int(depth):
            expected = prompts.frames[index][:frames] if prompts.frames.shape[1] > 1 else prompts.frames[index]
            assert torch.equal(local, expected.expand_as(local))
        if index:  # globals (and, past the prompted depth, everything) carry the previous block's output
            previous = rec.outputs[index - 1]
            assert torch.equal(x[:, :ng], previous[:, :ng])
            if index >= int(depth):
                assert torch.equal(x, previous)


def test_prompts_do_not_depend_on_the_input():
    model = tiny_model("dgl", *TRANSFORMER, "--dgl_postfix").eval()
    a, b = model.generate_prompts(), model.generate_prompts()
    assert all(torch.equal(x, y) for x, y in zip((a.text_prefix, a.text_postfix, a.frames),
                                                  (b.text_prefix, b.text_postfix, b.frames)))
    recs = []
    for seed, captions in ((0, ["one two", "three", "four five six"]), (1, ["a", "b c", "d e f g"])):
        ids, mask, video, _ = make_batch(seed=seed, captions=captions)
        rec_v, rec_t = Recorder(), Recorder()
        with torch.no_grad():
            model.video_tokens(video, hooks=[rec_v])
            hook = model.text_hook(model.generate_prompts())
            model.clip.text(ids, hooks=[hook, rec_t], pool_index=hook.pool_index(ids))
        recs.append((rec_v, rec_t))
    for index in range(2):
        va, vb = (r[0].inputs[index][:, 4:].unflatten(1, (4, -1))[:, :, 1:5] for r in recs)
        ta, tb = (r[1].inputs[index][:, 1:5] for r in recs)
        assert torch.equal(va, vb) and torch.equal(ta, tb)


# -- DGL 7: dead postfix prompts ---------------------------------------------------------------------
def test_postfix_projection_gets_exactly_zero_gradient_prefix_does_not():
    ids, mask, video, video_mask = make_batch()
    for flags in ((), ("--dgl_postfix",)):
        model = tiny_model("dgl", *LINEAR, *flags)
        loss = model.compute_loss(model.encode_text(ids, mask), model.encode_video(video, video_mask))["loss"]
        loss.backward()
        post, pre = model.postfix_text_prompt_proj_layer, model.prefix_text_prompt_proj_layer
        if flags:  # in the graph, behind the causal mask: exactly zero
            assert post.weight.grad is not None and torch.count_nonzero(post.weight.grad) == 0
            assert torch.count_nonzero(post.bias.grad) == 0
        else:
            assert post.weight.grad is None
        assert pre.weight.grad.abs().sum() > 0 and pre.bias.grad.abs().sum() > 0
    with torch.no_grad():  # and the text features are the same with or without them
        on, off = tiny_model("dgl", *LINEAR, "--dgl_postfix"), tiny_model("dgl", *LINEAR)
        torch.testing.assert_close(on.encode_text(ids, mask), off.encode_text(ids, mask), atol=1e-5, rtol=1e-5)


# -- DGL 8: frame order ------------------------------------------------------------------------------
@pytest.mark.parametrize("latent, invariant", [(LINEAR, True), (TRANSFORMER, False)])
def test_frame_order(latent, invariant):
    model = tiny_model("dgl", *latent).eval()
    _, _, video, video_mask = make_batch()
    with torch.no_grad():
        v = model.encode_video(video, video_mask)
        shuffled = model.encode_video(video[:, [2, 0, 3, 1]], video_mask)
    assert torch.allclose(v, shuffled, atol=1e-5) == invariant


# -- DGL 9: loss, and no leakage across the batch ----------------------------------------------------
def test_loss_is_symmetric_infonce_at_scale_100():
    model = tiny_model("dgl", *LINEAR)
    ids, mask, video, video_mask = make_batch()
    t, v = model.encode_text(ids, mask), model.encode_video(video, video_mask)
    torch.testing.assert_close(model.compute_loss(t, v)["loss"], reference_loss(t, v))
    torch.testing.assert_close(model.logit_scale(), torch.tensor(100.0))


@pytest.mark.parametrize("latent", [LINEAR, TRANSFORMER])
def test_no_batch_leakage(latent):
    check_no_batch_leakage(tiny_model("dgl", *latent))


def test_visual_output_types():
    _, _, video, video_mask = make_batch()
    outputs = {}
    for kind in ("global_prompt", "global_prompts_mean", "frame_cls_mean", "global_and_cls_mean"):
        model = tiny_model("dgl", *LINEAR, "--visual_output_type", kind).eval()
        with torch.no_grad():
            outputs[kind] = model.encode_video(video, video_mask)
            tokens, hook = model.video_tokens(video)
            globals_ = model.clip.visual.project(tokens[:, :4])
            cls = model.clip.visual.project(tokens[:, hook.frame_cls_rows()]).mean(1)
        assert outputs[kind].shape == (3, 64)
    torch.testing.assert_close(outputs["global_prompt"], globals_[:, 0])
    torch.testing.assert_close(outputs["global_prompts_mean"], globals_.mean(1))
    torch.testing.assert_close(outputs["frame_cls_mean"], cls)
    torch.testing.assert_close(outputs["global_and_cls_mean"], (globals_.mean(1) + cls) / 2)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="2 x --visual_prompt_length"):
        tiny_model("dgl", *LINEAR, "--text_prompt_length", "6")
    with pytest.raises(ValueError, match="global"):
        tiny_model("dgl", "--dgl_attention", "frame")
    with pytest.raises(ValueError, match="at most 2"):
        tiny_model("dgl", "--unified_transformer_layers", "3")


# -- padded frames: hidden by default; --padded_frames last_frame is DGL's loader -------------------------
def load_clip(path, fill: str, slots: int = 12, output: str = "float32"):
    from dataloaders.video import VideoClipLoader

    return VideoClipLoader(max_frames=slots, image_size=32, mode="uniform", padded_frames=fill, output=output)(path)


def test_last_frame_fill_is_dgls_loader_and_reaches_the_global_prompts(make_video):
    """A 5-frame video in 12 slots. Default: zeros under mask 0, and the embedding is that of the 5 frames
    alone. last_frame: DGL's indices clip(arange(12), 0, 4) under an all-ones mask, so the global prompts
    read the copies (DGL's model never reads the mask)."""
    path = make_video("short.mp4", num_frames=5, fps=5, size=(40, 40))
    video, mask = load_clip(path, "masked")
    filled, filled_mask = load_clip(path, "last_frame")
    assert mask.tolist() == [1] * 5 + [0] * 7 and not video[5:].any()
    assert filled_mask.tolist() == [1] * 12
    torch.testing.assert_close(filled, video[[0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]], rtol=0, atol=0)
    frames_u8, mask_u8 = load_clip(path, "last_frame", output="uint8")  # the workers' hand-over to the device
    assert mask_u8.tolist() == [1] * 12 and frames_u8.dtype == torch.uint8 and bool((frames_u8[5:] == frames_u8[4]).all())
    model = tiny_model("dgl", *TRANSFORMER).eval()
    with torch.no_grad():
        masked = model.encode_video(video[None], mask[None])
        alone = model.encode_video(video[None, :5], mask[None, :5])
        parity = model.encode_video(filled[None], filled_mask[None])
    torch.testing.assert_close(masked, alone, rtol=0, atol=1e-5 * float(alone.abs().max()))
    assert float((parity - masked).abs().max()) > 1e-2 * float(masked.abs().max())

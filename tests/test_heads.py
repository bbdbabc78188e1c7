"""Every registered head through the one interface the engine uses."""
import argparse

import pytest
import torch

from modules.clip import build_clip, tokenize
from modules.factory import add_model_args, build_model, count_parameters, freeze_clip_layers
from modules.heads import get_head, list_heads
from modules.heads.dgl import VISUAL_OUTPUT_TYPES

CLIP4CLIP_HEADS = ["meanP", "seqLSTM", "seqTransf", "tightTransf"]


def tiny_args(**overrides):
    args = add_model_args(argparse.ArgumentParser()).parse_args([])
    args.pretrained_clip_name, args.clip_init = "tiny", "random"
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def batch(n=3, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = tokenize([f"caption number {i} about a dog" for i in range(n)], max_words=12)
    video = torch.randn(n, frames, 3, 32, 32, generator=g)
    video_mask = torch.ones(n, frames, dtype=torch.long)
    video_mask[0, 2:] = 0  # a short video with padding
    video[0, 2:] = 0
    return ids, mask, video, video_mask


def test_registry_lists_clip4clip_heads():
    assert set(CLIP4CLIP_HEADS) <= set(list_heads())
    with pytest.raises(ValueError, match="unknown method"):
        get_head("nope")


@pytest.mark.parametrize("name", list_heads())
def test_head_interface_shapes_loss_and_gradients(name):
    torch.manual_seed(0)
    model = build_model(tiny_args(sim_header=name, freeze_layer_num=-1))
    ids, mask, video, video_mask = batch()
    text = model.encode_text(ids, mask)
    vid = model.encode_video(video, video_mask)
    sim = model.similarity(text, vid)
    assert sim.shape == (3, 3) and torch.isfinite(sim).all()
    losses = model.compute_loss(text, vid)
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    new_params = [(n, p) for n, p in model.named_parameters() if not n.startswith("clip.")]
    # A head may declare parameters whose first-step gradient is zero by design: exactly zero, then.
    dead = [(n, p) for n, p in new_params if n.startswith(model.zero_grad_at_init)]
    live = [(n, p) for n, p in new_params if not n.startswith(model.zero_grad_at_init)]
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for n, p in dead), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in live), name
    if model.frozen_clip:
        assert all(p.grad is None and not p.requires_grad for p in model.clip.parameters()), name
    else:
        assert model.clip.visual.proj.grad.abs().sum() > 0


# Options that change a head's video path; every registered head also runs with its defaults.
VIDEO_PATH_OPTIONS = {
    "dgl": [dict(shared_latent_space=latent, visual_output_type=kind) for latent in ("linear", "transformer")
            for kind in VISUAL_OUTPUT_TYPES]
    + [dict(dgl_attention="frame", global_prompt_length=0, visual_output_type="frame_cls_mean")],
    "ump": [dict(ump_sts_layers=2, ump_sts_mode=mode, ump_sts_where=where, ump_sts_spatial=spatial)
            for mode in ("zero", "cyclic") for where in ("stream", "residual") for spatial in ("four", "two")]
    + [dict(ump_pooling="xpool", ump_sts_layers=2, ump_sts_mode=mode) for mode in ("zero", "cyclic")],
    "hmmc": [dict(use_temp=True, use_frame_fea=True)],
}
PADDING_CASES = [(name, {}) for name in list_heads()] + [
    (name, options) for name, variants in VIDEO_PATH_OPTIONS.items() for options in variants]


@pytest.mark.parametrize("name, options", PADDING_CASES,
                         ids=[f"{n}-" + "-".join(map(str, o.values())) if o else n for n, o in PADDING_CASES])
def test_padding_never_changes_a_score(name, options):
    """A clip of L real frames padded to T with large random frames (video_mask 0) scores exactly like
    the same clip given alone with T = L frames and a mask of ones."""
    torch.manual_seed(0)
    model = build_model(tiny_args(sim_header=name, **options)).eval()
    with torch.no_grad():  # zero-initialised layers (UMP's generator output) would hide a dependence on tokens
        for param_name, param in model.named_parameters():
            if not param_name.startswith("clip."):
                param.add_(torch.randn_like(param) * 0.1)
    lengths = (2, 4, 1, 3)
    ids, mask, video, _ = batch(n=len(lengths), frames=max(lengths), seed=1)
    video_mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, length in enumerate(lengths):
        video_mask[i, :length] = 1
        video[i, length:] = 10 * torch.randn_like(video[i, length:])  # garbage where the mask says "padding"
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        padded = model.similarity(text, model.encode_video(video, video_mask))
        clips = [(video[i:i + 1, :length], torch.ones(1, length, dtype=torch.long)) for i, length in enumerate(lengths)]
        alone = torch.cat([model.similarity(text, model.encode_video(*clip)) for clip in clips], dim=1)
        as_frames = model.similarity(text, model.encode_video(video, torch.ones_like(video_mask)))
    difference = (padded - alone).abs().amax().item()
    assert difference <= 1e-5, f"{name} {options}: padding changed a score by {difference:.3g}"
    # Not invisible by accident: the same garbage given as real frames changes every padded clip's scores.
    padded_columns = [i for i, length in enumerate(lengths) if length < max(lengths)]
    assert (as_frames - alone)[:, padded_columns].abs().amax(0).gt(1e-4).all(), (as_frames - alone)


def test_meanp_is_mean_of_normalised_frames():
    torch.manual_seed(0)
    model = build_model(tiny_args(sim_header="meanP")).eval()
    _, _, video, video_mask = batch()
    with torch.no_grad():
        frames = model.clip.encode_image(video[1])
        expected = (frames / frames.norm(dim=-1, keepdim=True)).mean(0)
        torch.testing.assert_close(model.encode_video(video, video_mask)[1], expected, atol=1e-5, rtol=1e-5)


def test_seqtransf_starts_from_clip_text_blocks_and_counts():
    torch.manual_seed(0)
    model = build_model(tiny_args(sim_header="seqTransf"))
    for ours, theirs in zip(model.transformerClip.resblocks, model.clip.text.transformer.resblocks):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    # At ViT-B/32 shapes: 4 blocks of width 512 (3,152,384 each) + 128 x 512 frame positions.
    with torch.device("meta"):
        big = get_head("seqTransf")(build_clip("ViT-B/32", device="meta"), tiny_args())
    assert count_parameters(big) - count_parameters(big.clip) == 4 * 3_152_384 + 128 * 512


def test_seqtransf_sees_frame_order_meanp_does_not():
    torch.manual_seed(0)
    ids, mask, video, video_mask = batch()
    video_mask[:] = 1
    reversed_video = video.flip(1)
    for name, order_matters in (("meanP", False), ("seqTransf", True)):
        model = build_model(tiny_args(sim_header=name)).eval()
        with torch.no_grad():
            a = model.encode_video(video, video_mask)
            b = model.encode_video(reversed_video, video_mask)
        assert torch.allclose(a, b, atol=1e-5) != order_matters, name


def test_freeze_layer_num_follows_clip4clip():
    model = build_model(tiny_args(sim_header="meanP", freeze_layer_num=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" not in trainable
    assert "clip.visual.transformer.resblocks.1.attn.in_proj_weight" in trainable
    assert "clip.text.token_embedding.weight" not in trainable and "clip.visual.conv1.weight" not in trainable
    assert {"clip.visual.proj", "clip.text.proj", "clip.logit_scale"} <= trainable
    assert freeze_clip_layers(build_model(tiny_args(freeze_layer_num=-1)), -1) == 0


def test_linear_patch_3d_starts_equal_to_2d():
    torch.manual_seed(0)
    two_d = build_model(tiny_args(sim_header="meanP")).eval()
    torch.manual_seed(0)
    three_d = build_model(tiny_args(sim_header="meanP", linear_patch="3d")).eval()
    _, _, video, video_mask = batch()
    video_mask[:] = 1
    with torch.no_grad():
        torch.testing.assert_close(three_d.encode_video(video, video_mask), two_d.encode_video(video, video_mask),
                                   atol=1e-5, rtol=1e-5)
    assert three_d.clip.visual.conv2.weight.shape[2] == 3


def test_param_groups_split_clip_and_new_modules():
    model = build_model(tiny_args(sim_header="seqTransf", freeze_layer_num=-1))
    groups = model.param_groups(lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["clip.visual.proj"]["lr"] == pytest.approx(1e-7)
    assert by_name["frame_position_embeddings.weight"]["lr"] == 1e-4
    assert by_name["clip.visual.ln_pre.weight"]["weight_decay"] == 0.0
    assert by_name["transformerClip.resblocks.0.attn.in_proj_bias"]["weight_decay"] == 0.0
    assert by_name["transformerClip.resblocks.0.mlp.c_fc.weight"]["weight_decay"] == 0.2
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)

"""Shared by tests/test_dgl.py and tests/test_ump.py: flags, batches and checks every prompt head must pass."""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from modules.clip import BlockHook, build_clip, tokenize
from modules.factory import add_model_args, build_model
from modules.heads import get_head

CAPTIONS = ["a dog runs on the beach", "a man is cooking pasta", "two cats play", "a car drives at night"]


def prompt_args(method: str, *flags: str):
    return add_model_args(argparse.ArgumentParser()).parse_args(
        ["--method", method, "--clip_init", "random", "--pretrained_clip_name", "tiny", *flags])


def tiny_model(method: str, *flags: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(prompt_args(method, *flags))


def meta_model(method: str, *flags: str, arch: str = "ViT-B/32"):
    """The head at full size without memory (for counting and shapes)."""
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--method", method, *flags])
    with torch.device("meta"):
        return get_head(method)(build_clip(arch, device="meta"), args)


def make_batch(n: int = 3, frames: int = 4, seed: int = 0, captions=CAPTIONS):
    g = torch.Generator().manual_seed(seed)
    ids, mask = tokenize(list(captions[:n]), max_words=12)
    video = torch.randn(n, frames, 3, 32, 32, generator=g)
    return ids, mask, video, torch.ones(n, frames, dtype=torch.long)


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reference_loss(text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """½ (CE(S) + CE(Sᵀ)), S = 100 · t̂ v̂ᵀ, written out with log-softmax."""
    sim = 100.0 * F.normalize(text, dim=-1) @ F.normalize(video, dim=-1).t()
    rows = -torch.diagonal(sim.log_softmax(dim=1)).mean()
    cols = -torch.diagonal(sim.log_softmax(dim=0)).mean()
    return 0.5 * (rows + cols)


def check_frozen_clip(model) -> None:
    assert all(not p.requires_grad for p in model.clip.parameters())
    assert torch.equal(model.clip.logit_scale.detach(), torch.tensor(math.log(100.0)))  # fp32 ln 100
    assert trainable_count(model) > 0


def check_clip_bit_identical_after_step(model, batch) -> None:
    """One AdamW step (weight decay on the decayed groups) changes the prompts and not one CLIP bit."""
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    new_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    groups = model.param_groups(lr=1e-2, coef_lr=1e-3, weight_decay=0.2)
    assert any(g["weight_decay"] > 0 for g in groups)
    assert all(not n.startswith("clip.") for g in groups for n in g["names"])
    optimiser = torch.optim.AdamW(groups, lr=1e-2)
    ids, mask, video, video_mask = batch
    loss = model.compute_loss(model.encode_text(ids, mask), model.encode_video(video, video_mask))["loss"]
    loss.backward()
    optimiser.step()
    model.clamp_logit_scale()
    after = model.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, new_before[n])]
    assert changed, "the optimiser step changed no trainable parameter"


def check_no_batch_leakage(model) -> None:
    """Sample 0's text and video features do not depend on its batch-mates."""
    model.eval()
    ids, mask, video, video_mask = make_batch(3, seed=0)
    ids2, mask2, video2, video_mask2 = make_batch(3, seed=1, captions=[CAPTIONS[0], *CAPTIONS[2:]])
    video2[0] = video[0]
    with torch.no_grad():
        t1, t2 = model.encode_text(ids, mask), model.encode_text(ids2, mask2)
        v1, v2 = model.encode_video(video, video_mask), model.encode_video(video2, video_mask2)
    assert not torch.allclose(t1[1], t2[1]) and not torch.allclose(v1[1], v2[1])  # the batches do differ
    torch.testing.assert_close(t1[0], t2[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(v1[0], v2[0], atol=1e-6, rtol=0)


class Recorder(BlockHook):
    """A hook that records the tokens entering and leaving every block (placed after the method's hook)."""

    def __init__(self):
        self.inputs, self.outputs = {}, {}

    def before_block(self, index, x):
        self.inputs[index] = x.detach().clone()
        return x

    def after_block(self, index, x):
        self.outputs[index] = x.detach().clone()
        return x

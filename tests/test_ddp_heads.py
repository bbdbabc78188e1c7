"""Every trainable parameter reaches the loss, for every registered head and every option that changes
the parameter set: DDP (without find_unused_parameters) stops at the second step otherwise."""
import argparse

import pytest
import torch

from engine.distributed import DistEnv
from engine.trainer import step_losses
from gloo import local_rows, run_on_ranks
from modules.clip import tokenize
from modules.factory import add_model_args, build_model
from modules.heads import list_heads

# Options that add, drop or freeze parameters, beside every head at its defaults (freeze_layer_num 0).
OPTION_SETS = [
    ("meanP", "--freeze_layer_num", "-1"),
    ("meanP", "--linear_patch", "3d", "--freeze_layer_num", "-1"),
    ("meanP", "--linear_patch", "3d"),
    ("seqTransf", "--freeze_layer_num", "-1"),
    ("tightTransf", "--freeze_layer_num", "-1"),
    ("dgl", "--shared_latent_space", "linear"),
    ("dgl", "--shared_latent_space", "linear", "--dgl_postfix"),
    ("dgl", "--shared_latent_space", "transformer", "--dgl_postfix"),
    ("dgl", "--shared_latent_space", "transformer", "--visual_output_type", "global_and_cls_mean"),
    ("ump", "--ump_pooling", "xpool"),
    ("t2vlp", "--t2vlp_stage", "2"),
    ("t2vlp", "--t2vlp_stage", "2", "--freeze_backbone"),
    ("t2vlp", "--t2vlp_stage", "retrieval", "--freeze_layer_num", "-1"),
    ("simvtp", "--simvtp_stage", "pretrain"),
    ("simvtp", "--simvtp_stage", "pretrain", "--local_negatives"),
    ("simvtp", "--local_negatives", "--drop_path", "0.1"),
]
CONFIGS = [(name,) for name in list_heads()] + OPTION_SETS
FRAMES, GLOBAL_BATCH = 4, 4


def make_model(config):
    name, *flags = config
    args = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--pretrained_clip_name", "tiny", "--clip_init", "random", "--method", name, *flags])
    args.max_frames = FRAMES  # a video flag, read by the prompt-tuning heads
    torch.manual_seed(0)
    return build_model(args)


def make_batch(step):
    g = torch.Generator().manual_seed(step)
    ids, mask = tokenize([f"clip {i} of step {step} shows a ball" for i in range(GLOBAL_BATCH)], 12)
    video_mask = torch.ones(GLOBAL_BATCH, FRAMES, dtype=torch.long)
    video_mask[1, 3:] = 0
    return {"text_ids": ids, "text_mask": mask, "video": torch.randn(GLOBAL_BATCH, FRAMES, 3, 32, 32, generator=g),
            "video_mask": video_mask}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c))
def test_one_step_gives_every_trainable_parameter_a_gradient(config):
    model = build_and_step(config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without, f"{config}: trainable parameters outside the loss: {without}"


def build_and_step(config):
    model = make_model(config)
    step_losses(model, make_batch(0), DistEnv())["loss"].backward()
    return model


def _work(env, out_dir):
    failures = []
    for config in CONFIGS:
        try:
            model = torch.nn.parallel.DistributedDataParallel(make_model(config))
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            for step in range(2):  # DDP's unused-parameter error comes at the second step
                step_losses(model, local_rows(make_batch(step), env), env)["loss"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        except RuntimeError as error:
            failures.append(("-".join(config), str(error).splitlines()[0]))
    torch.save(failures, f"{out_dir}/failures{env.rank}.pt")


def test_two_gloo_ranks_train_two_steps_with_every_head_and_option(tmp_path):
    run_on_ranks(_work, tmp_path)
    for rank in range(2):
        assert torch.load(tmp_path / f"failures{rank}.pt", weights_only=True) == []

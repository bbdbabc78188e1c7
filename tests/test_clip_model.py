"""The shared CLIP backbone: architectures, parameter counts, parity with transformers, hooks."""
import pytest
import torch

from modules.clip import (BlockHook, CLIPConfig, build_clip, get_config, list_architectures, tokenize)
from modules.clip.transformer import causal_mask


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_vit_b32_parameter_counts_on_meta():
    model = build_clip("ViT-B/32", device="meta")
    assert model.logit_scale.device.type == "meta"
    assert n_params(model.visual) == 87_849_216
    assert n_params(model.text) == 63_428_096
    assert model.text.token_embedding.weight.numel() == 25_296_896
    assert n_params(model) == 151_277_313  # visual + text + logit scale


@pytest.mark.parametrize("name,total", [("ViT-B/16", 149_620_737), ("ViT-L/14", 427_616_513),
                                        ("ViT-L/14@336px", 427_944_193)])
def test_other_published_sizes(name, total):
    assert n_params(build_clip(name, device="meta")) == total


@pytest.mark.parametrize("arch", list_architectures())
def test_every_registered_architecture_builds(arch):
    cfg = get_config(arch)
    model = build_clip(arch, device="meta")
    assert model.visual.positional_embedding.shape == (cfg.vision.num_patches + 1, cfg.vision.width)
    assert model.text.proj.shape == (cfg.text.width, cfg.embed_dim)


def test_names_and_dicts_resolve_to_the_same_config():
    assert get_config("ViT-B/32") == get_config("ViT-B-32")
    assert get_config(get_config("tiny").to_dict()) == get_config("tiny")
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        get_config("ViT-H/99")


def test_encode_shapes_and_logit_scale():
    torch.manual_seed(0)
    model = build_clip("tiny").eval()
    ids, mask = tokenize(["a dog runs", "a cat"], max_words=16)
    assert model.encode_text(ids, mask).shape == (2, 64)
    pooled, tokens = model.encode_text(ids, return_tokens=True)
    assert tokens.shape == (2, 16, 64)
    torch.testing.assert_close(pooled, tokens[torch.arange(2), ids.argmax(-1)], atol=1e-5, rtol=1e-5)
    assert model.encode_image(torch.randn(3, 3, 32, 32)).shape == (3, 64)
    assert model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.07)).item())
    with pytest.raises(ValueError, match="built for 32x32"):
        model.encode_image(torch.randn(1, 3, 64, 64))


# ---------------------------------------------------------------------------------------------------
# Parity with transformers.CLIPModel on the same random weights


def hf_model(vision_width, vision_heads, patch, image, text_width, text_heads, layers, embed):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=layers,
                         num_attention_heads=text_heads, max_position_embeddings=77, vocab_size=49408,
                         eos_token_id=49407, bos_token_id=49406, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=layers,
                           num_attention_heads=vision_heads, image_size=image, patch_size=patch, hidden_act="quick_gelu"),
        projection_dim=embed,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    # transformers initialises some tensors (LayerNorms, biases) to constants; randomise every one so
    # that a swapped or transposed weight cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02 + (1.0 if p.dim() == 1 and p.shape[0] in (vision_width, text_width) else 0.0))
    return model


def features(out):
    return out if torch.is_tensor(out) else out.pooler_output


PARITY_SHAPES = {
    "tiny": dict(vision_width=64, vision_heads=2, patch=8, image=32, text_width=64, text_heads=2, layers=2, embed=64),
    "vit-b32-shallow": dict(vision_width=768, vision_heads=12, patch=32, image=224, text_width=512, text_heads=8,
                            layers=2, embed=512),
}


@pytest.mark.parametrize("shape", PARITY_SHAPES)
@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_parity_with_transformers(tmp_path, shape, weights_file):
    from safetensors.torch import save_file

    from modules.clip import load_clip

    spec = PARITY_SHAPES[shape]
    reference = hf_model(**spec)
    reference.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if weights_file.endswith(".safetensors"):
        save_file(state, str(tmp_path / weights_file))
    else:
        torch.save(state, tmp_path / weights_file)
    ours = load_clip(tmp_path).eval()
    assert ours.config.vision.width == spec["vision_width"] and ours.config.text.heads == spec["text_heads"]

    torch.manual_seed(1)
    images = torch.randn(3, 3, spec["image"], spec["image"])
    ids, mask = tokenize(["a man is singing", "two dogs play in the snow on a sunny day", "cat"], max_words=32)
    with torch.no_grad():
        ref_img = features(reference.get_image_features(pixel_values=images))
        ref_txt = features(reference.get_text_features(input_ids=ids, attention_mask=mask))
        our_img = ours.encode_image(images)
        our_txt = ours.encode_text(ids, mask)
    assert our_img.shape == ref_img.shape and our_txt.shape == ref_txt.shape
    torch.testing.assert_close(our_img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_txt, ref_txt, atol=1e-5, rtol=1e-5)
    assert ours.logit_scale.item() == pytest.approx(reference.logit_scale.item())


# ---------------------------------------------------------------------------------------------------
# Extension points


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_clip("tiny").eval()


class InsertPrompts(BlockHook):
    """Inserts prompt tokens before block 0, masks them out of every real token's view, drops them at the end."""

    def __init__(self, count, width, last):
        self.prompts = torch.randn(count, width)
        self.count, self.last = count, last

    def before_block(self, index, x):
        if index == 0:
            return torch.cat([x, self.prompts.expand(x.shape[0], -1, -1)], dim=1)
        return x

    def attn_mask(self, index, x):
        mask = torch.zeros(x.shape[1], x.shape[1])
        mask[: -self.count, -self.count:] = float("-inf")  # real tokens cannot see the prompts
        return mask

    def after_block(self, index, x):
        return x[:, : -self.count] if index == self.last else x


def test_inserted_masked_prompts_leave_real_tokens_unchanged():
    model = tiny_model()
    images = torch.randn(2, 3, 32, 32)
    hook = InsertPrompts(3, 64, last=model.config.vision.layers - 1)
    with torch.no_grad():
        plain = model.encode_image(images)
        prompted = model.encode_image(images, hooks=[hook])
    torch.testing.assert_close(prompted, plain, atol=1e-5, rtol=1e-5)


class Recorder(BlockHook):
    def __init__(self):
        self.shapes = []

    def before_block(self, index, x):
        self.shapes.append((index, tuple(x.shape)))
        return x


def test_visible_prompts_change_outputs_and_hooks_see_every_block():
    model = tiny_model()
    images = torch.randn(2, 3, 32, 32)

    class Visible(InsertPrompts):
        def attn_mask(self, index, x):
            return None

    recorder = Recorder()
    with torch.no_grad():
        plain = model.encode_image(images)
        prompted = model.encode_image(images, hooks=[Visible(3, 64, last=1), recorder])
    assert not torch.allclose(prompted, plain, atol=1e-4)
    assert recorder.shapes == [(0, (2, 20, 64)), (1, (2, 20, 64))]  # 1 CLS + 16 patches + 3 prompts


def test_text_causal_fast_path_equals_explicit_mask():
    model = tiny_model()
    ids, _ = tokenize(["a man is singing a song"], max_words=12)

    class ZeroMask(BlockHook):
        def attn_mask(self, index, x):
            return torch.zeros(x.shape[1], x.shape[1])  # forces the explicit-mask path

    with torch.no_grad():
        fast = model.encode_text(ids)
        explicit = model.encode_text(ids, hooks=[ZeroMask()])
    torch.testing.assert_close(fast, explicit, atol=1e-6, rtol=1e-6)
    assert causal_mask(3).tolist() == [[0, float("-inf"), float("-inf")], [0, 0, float("-inf")], [0, 0, 0]]


def test_taps_and_joint_attention_across_frames():
    model = tiny_model()
    video = torch.randn(2, 4, 3, 32, 32)
    changed = video.clone()
    changed[:, 3] += 1.0  # perturb the last frame only
    with torch.no_grad():
        per_frame, taps = model.encode_frames(video, taps=(1,))
        per_frame_changed, _ = model.encode_frames(changed)
        joint, joint_taps = model.encode_frames(video, taps=(1,), joint_last_n=1)
        joint_changed, _ = model.encode_frames(changed, joint_last_n=1)
        images = model.encode_image(video.flatten(0, 1)).view(2, 4, -1)
    assert per_frame.shape == (2, 4, 64) and taps[1].shape == (2, 4, 17, 64)
    torch.testing.assert_close(per_frame, images)
    # Without joint blocks other frames are untouched; with them frame 0 sees frame 3.
    torch.testing.assert_close(per_frame_changed[:, :3], per_frame[:, :3])
    assert not torch.allclose(joint_changed[:, 0], joint[:, 0], atol=1e-4)
    # The input of block 1 is the same whether block 1 is joint or not (only blocks >= 1 mix frames).
    torch.testing.assert_close(joint_taps[1], taps[1])


def test_grad_checkpointing_gives_same_outputs_and_gradients():
    ids, _ = tokenize(["a dog", "a red car"], max_words=8)
    images = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = tiny_model()
        model.train()
        model.set_grad_checkpointing(enable)
        img, txt, scale = model(images, ids)
        (scale * img @ txt.t()).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_freeze_parts():
    model = tiny_model()
    frozen = model.freeze(("visual.",))
    assert frozen == n_params(model.visual)
    images, (ids, _) = torch.randn(2, 3, 32, 32), tokenize(["a", "b"], max_words=8)
    img, txt, _ = model(images, ids)
    (img @ txt.t()).sum().backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert all(p.grad is not None for p in model.text.transformer.parameters())
    assert model.freeze() == n_params(model)  # everything, the logit scale included
    assert not any(p.requires_grad for p in model.parameters())


def test_config_round_trip_keeps_mlp_ratio():
    cfg = CLIPConfig.from_dict({"embed_dim": 16, "vision": {"image_size": 16, "patch_size": 8, "width": 32,
                                "layers": 1, "heads": 1, "mlp_ratio": 2.0}, "text": {"width": 32, "layers": 1, "heads": 1}})
    model = build_clip(cfg)
    assert model.visual.transformer.resblocks[0].mlp.c_fc.out_features == 64


def test_fp16_weights_text_input_is_the_fp16_sum_of_fp16_embeddings():
    """``--precision fp16_weights`` reproduces OpenAI CLIP's (and CLIP4Clip's) fp16 text path: the token
    embedding and the position embedding are each cast to fp16, then added in fp16 (bit-exact)."""
    from types import SimpleNamespace

    from engine.trainer import convert_clip_to_fp16
    from modules.clip.transformer import TokenTap

    model = tiny_model(seed=1)
    convert_clip_to_fp16(SimpleNamespace(clip=model))
    ids, _ = tokenize(["a red ball rolls to the left of a green cube, slowly", "two hands"], max_words=77)
    tap = TokenTap([0])
    with torch.no_grad():
        model.encode_text(ids, hooks=[tap])
        tokens, positions = model.text.token_embedding(ids), model.text.positional_embedding[: ids.shape[1]]
        by_hand = tokens.half() + positions.half()  # CPU fp16 addition: one rounding of the fp16 operands' sum
        fp32_sum_cast = (tokens + positions).half()
    assert tap.tokens[0].dtype == torch.float16 and torch.equal(tap.tokens[0], by_hand)
    assert not torch.equal(by_hand, fp32_sum_cast)  # the two orders differ on these inputs: the check can fail

"""Checkpoint formats: OpenAI TorchScript archives and state dicts, our safetensors, name resolution."""
import pytest
import torch
from torch import nn

from modules.clip import CheckpointError, build_clip, load_clip, save_clip, tokenize
from modules.clip.loading import from_openai, resolve_checkpoint, to_hf, from_hf, to_openai


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_clip("tiny").eval()


def assert_same_model(a, b):
    images = torch.randn(2, 3, 32, 32)
    ids, _ = tokenize(["a dog on a skateboard", "rain"], max_words=16)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), atol=0, rtol=0)
        torch.testing.assert_close(a.encode_text(ids), b.encode_text(ids), atol=0, rtol=0)
    assert a.logit_scale.item() == b.logit_scale.item()


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def write_torchscript_archive(state, path):
    """A TorchScript archive with OpenAI's key names (and its non-weight extras), like the released .pt files."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_buffer(leaf, value.clone())
    for extra in ("input_resolution", "context_length", "vocab_size"):
        root.register_buffer(extra, torch.tensor(7))
    torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_archive(tmp_path):
    model = tiny()
    openai_state = to_openai(model.state_dict())
    assert "text_projection" in openai_state and "transformer.resblocks.0.attn.in_proj_weight" in openai_state
    write_torchscript_archive({k: v.half() for k, v in openai_state.items()}, tmp_path / "ViT-tiny.pt")
    loaded = load_clip(tmp_path / "ViT-tiny.pt")
    assert loaded.visual.proj.dtype == torch.float32  # OpenAI ships fp16; we load fp32
    assert loaded.config.vision.patch_size == 8 and loaded.config.vision.image_size == 32
    reference = tiny()
    with torch.no_grad():  # the archive held fp16 weights: compare against the same rounding
        for p in reference.parameters():
            p.copy_(p.half().float())
    assert_same_model(loaded, reference)


def test_plain_state_dicts_load_with_weights_only(tmp_path):
    model = tiny()
    torch.save(to_openai(model.state_dict()), tmp_path / "openai_names.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "our_names.bin")
    torch.save({"clip." + k: v for k, v in to_openai(model.state_dict()).items()}, tmp_path / "pytorch_model.bin.4")
    for name in ("openai_names.pt", "our_names.bin", "pytorch_model.bin.4"):
        assert_same_model(load_clip(tmp_path / name), model)


def test_untrusted_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"visual.proj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        load_clip(tmp_path / "evil.pt")


def test_safetensors_round_trip_keeps_architecture(tmp_path):
    model = tiny()
    path = save_clip(model, tmp_path / "tiny.safetensors")
    assert not (tmp_path / "tiny.safetensors.tmp").exists()
    assert_same_model(load_clip(path), model)


def test_hf_names_round_trip():
    state = tiny().state_dict()
    back = from_hf(to_hf(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert from_openai(to_openai(state)).keys() == state.keys()


def test_name_resolution_search_order(tmp_path, monkeypatch):
    model = tiny()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    torch.save(to_openai(model.state_dict()), second / "ViT-B-32.pt")
    monkeypatch.setenv("CLIP_HOME", str(second))
    assert resolve_checkpoint("ViT-B/32", pretrained_dir=first) == second / "ViT-B-32.pt"
    torch.save(to_openai(model.state_dict()), first / "ViT-B-32.pt")
    assert resolve_checkpoint("ViT-B/32", pretrained_dir=first) == first / "ViT-B-32.pt"
    assert_same_model(load_clip("ViT-B-32", pretrained_dir=first), model)


def test_missing_checkpoint_names_every_searched_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_HOME", str(tmp_path / "clip_home"))
    with pytest.raises(CheckpointError) as info:
        load_clip("ViT-B/16", pretrained_dir=tmp_path / "weights")
    message = str(info.value)
    for searched in (tmp_path / "weights" / "ViT-B-16.pt", tmp_path / "clip_home" / "ViT-B-16.pt"):
        assert str(searched) in message
    assert ".cache/clip/ViT-B-16.pt" in message and "modules/ViT-B-16.pt" in message
    assert "github.com/openai/CLIP" in message and "openai/clip-vit-base-patch16" in message
    assert "\n" not in message  # one line for the user


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_checkpoint_gets_a_clear_error(tmp_path, damage):
    path = tmp_path / "ViT-B-32.pt"
    torch.save(to_openai(tiny().state_dict()), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 10}[damage])
    with pytest.raises(CheckpointError, match=str(path)):
        load_clip(path)

"""The VideoMAE joint trunk (``modules.videomae``): architectures as data, parity with ``transformers``'
VideoMAE on the same random weights (trunk, pixel decoder, normalised targets, loss), every checkpoint
layout, one-line errors, BERT's tokenizer and embeddings from a local folder."""
import argparse
import math

import pytest
import torch
from transformers import BertConfig, BertModel
from transformers import VideoMAEConfig as HFVideoMAEConfig
from transformers import VideoMAEForPreTraining, VideoMAEModel

from modules.clip.loading import CheckpointError
from modules.components.pixel_decoder import PixelDecoder
from modules.components.pixels import pixel_targets
from modules.videomae import (build_joint_trunk, get_config, list_architectures, load_videomae, save_videomae,
                              sincos_table)
from modules.videomae.loading import convert
from modules.videomae.transformer import JointTrunk, complete_tubelets, count_trunk_parameters

TINY = dict(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=256, decoder_hidden_size=32, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=128)
B16_TWO_BLOCKS = dict(image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=768,
                      num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072, decoder_hidden_size=384,
                      decoder_num_hidden_layers=1, decoder_num_attention_heads=6, decoder_intermediate_size=1536)


def hf_pretraining_model(shape, seed=0):
    """transformers' VideoMAEForPreTraining with every parameter random (not its zero/one inits)."""
    config = HFVideoMAEConfig(**shape, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, use_mean_pooling=False,
                              norm_pix_loss=True, attn_implementation="eager")
    torch.manual_seed(seed)
    model = VideoMAEForPreTraining(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    return model


def tube_mask(batch, slices, per_slice, visible, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.rand(batch, per_slice, generator=g).argsort(1).argsort(1) >= visible
    return spatial.repeat(1, slices)


def official_names(trunk_state):
    """Our trunk names -> VideoMAE's (the inverse of the loader's renaming), for building checkpoints."""
    rename = {"visual.proj": "patch_embed.proj.weight", "visual.proj_bias": "patch_embed.proj.bias"}
    return {rename.get(k, k): v for k, v in trunk_state.items() if not k.startswith("text.")}


# -- architectures -----------------------------------------------------------------------------------


def test_architectures_are_data_and_errors_are_one_line():
    assert {"ViT-B-16", "ViT-S-16", "ViT-L-16", "tiny"} <= set(list_architectures())
    b16 = get_config("ViT-B/16")
    assert (b16.width, b16.layers, b16.heads, b16.decoder.width, b16.decoder.layers) == (768, 12, 12, 384, 4)
    assert (b16.num_tokens(), b16.grid, b16.tube_pixels) == (1568, 14, 1536)
    with pytest.raises(ValueError, match="unknown VideoMAE architecture 'ViT-X'; known: ViT-B-16"):
        get_config("ViT-X")
    with pytest.raises(ValueError, match=r"unknown VideoMAE config keys: \['depth'\]"):
        get_config({"depth": 3})


def test_parameter_count_equals_transformers_at_b16():
    config = get_config("ViT-B-16")
    hf = HFVideoMAEConfig(use_mean_pooling=False, qkv_bias=True)  # its defaults are ViT-B/16, 16 frames
    with torch.device("meta"):
        theirs = sum(p.numel() for p in VideoMAEModel(hf).parameters())
        trunk = JointTrunk(config, text=False)
    ours = sum(p.numel() for p in trunk.parameters())
    assert ours == theirs == count_trunk_parameters(config) == 86_227_200


def test_sincos_table_values():
    table = sincos_table(5, 6)
    p, j = 3, 4  # dim 4 = 2*2: sin(p / 10000^(4/6)); dim 5: cos of the same angle
    assert table[p, j].item() == pytest.approx(math.sin(p / 10000 ** (4 / 6)), abs=1e-7)
    assert table[p, j + 1].item() == pytest.approx(math.cos(p / 10000 ** (4 / 6)), abs=1e-7)
    assert table[0, 1].item() == 1.0 and table[0, 0].item() == 0.0


# -- parity with transformers -------------------------------------------------------------------------


@pytest.mark.parametrize("shape, batch", [(TINY, 3), (B16_TWO_BLOCKS, 1)], ids=["tiny", "b16-2blocks"])
def test_trunk_equals_transformers_videomae(shape, batch, tmp_path):
    reference = hf_pretraining_model(shape)
    reference.save_pretrained(tmp_path)
    trunk = build_joint_trunk(checkpoint=str(tmp_path)).eval()
    assert trunk.source.layout == "hf" and trunk.config.width == shape["hidden_size"]
    size, frames = shape["image_size"], shape["num_frames"]
    video = torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    grid = (size // shape["patch_size"]) ** 2
    masked = tube_mask(batch, frames // 2, grid, visible=max(1, grid // 10))
    with torch.no_grad():
        tokens, valid = trunk.embed_video(video)
        ours_full = trunk(tokens)
        theirs_full = reference.videomae(video).last_hidden_state
        visible = tokens[~masked].view(batch, -1, tokens.shape[-1])
        ours_masked = trunk(visible)
        theirs_masked = reference.videomae(video, bool_masked_pos=masked).last_hidden_state
    assert valid.all() and ours_full.shape == (batch, frames // 2 * grid, shape["hidden_size"])
    torch.testing.assert_close(ours_full, theirs_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_masked, theirs_masked, atol=1e-5, rtol=1e-5)
    assert theirs_masked.abs().max() > 0.1  # not a comparison of near-zero outputs
    with torch.no_grad():  # and the comparison can fail: one changed bias breaks it
        trunk.blocks[-1].attn.v_bias.add_(0.1)
        assert (trunk(visible) - theirs_masked).abs().max() > 1e-3


def test_pixel_decoder_targets_and_loss_equal_transformers(tmp_path):
    reference = hf_pretraining_model(TINY)
    reference.save_pretrained(tmp_path)
    weights = load_videomae(tmp_path)
    trunk = build_joint_trunk(checkpoint=str(tmp_path)).eval()
    c = weights.config
    decoder = PixelDecoder(c.width, c.decoder.width, c.decoder.layers, c.decoder.heads, c.tube_pixels,
                           c.decoder.mlp_ratio, c.norm_eps).eval()
    decoder.load_state_dict(weights.decoder)
    decoder.norm.eps = 1e-5  # transformers' decoder LayerNorm keeps PyTorch's default eps (VideoMAE: 1e-6)
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    masked = tube_mask(2, 2, 16, visible=2)
    order = masked.float().argsort(dim=1, stable=True)
    visible_index, masked_index = order[:, :4], order[:, 4:]
    with torch.no_grad():
        tokens, _ = trunk.embed_video(video)
        encoded = trunk(tokens.gather(1, visible_index[..., None].expand(-1, -1, c.width)))
        predicted = decoder(encoded, visible_index, masked_index, tokens.shape[1])
        target = pixel_targets(video, c.tubelet_size, c.patch_size, "imagenet").gather(
            1, masked_index[..., None].expand(-1, -1, c.tube_pixels))
        out = reference(video, bool_masked_pos=masked)
    assert predicted.shape == (2, 28, 2 * 8 * 8 * 3)
    torch.testing.assert_close(predicted, out.logits, atol=1e-5, rtol=1e-5)
    loss = torch.nn.functional.mse_loss(predicted, target)
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


# -- checkpoint layouts ---------------------------------------------------------------------------------


def test_every_layout_loads_the_same_trunk(tmp_path):
    reference = hf_pretraining_model(TINY)
    reference.save_pretrained(tmp_path / "hf")
    hf = load_videomae(tmp_path / "hf")
    in_memory = convert(reference.state_dict(), "hf")  # query/key/value names (the saved file has q_bias/v_bias)
    assert all(torch.equal(in_memory["trunk"][k], v) for k, v in hf.trunk.items())
    encoder = {f"encoder.{k}": v for k, v in official_names(hf.trunk).items()}
    decoder = {("" if k in ("encoder_to_decoder.weight", "mask_token") else "decoder.") + k: v
               for k, v in hf.decoder.items()}
    namespace = argparse.Namespace(model="pretrain_videomae_base_patch16_224", lr=1.5e-4)  # as VideoMAE saves
    torch.save({"model": encoder | decoder, "epoch": 1599, "args": namespace}, tmp_path / "videomae.pth")
    official = load_videomae(tmp_path / "videomae.pth")
    assert official.layout == "videomae_pretrain" and official.config.width == 64
    text = {f"text_embeddings.{k}": torch.randn(v.shape) for k, v in  # CLIP's BPE + [MASK]: no --bert_path needed
            JointTrunk(hf.config, text_overrides={"vocab_size": 49409}).text.state_dict().items()}
    heads = {"text_cls.weight": torch.randn(49408, 64), "text_cls.bias": torch.zeros(49408),
             "vtm_head.weight": torch.randn(2, 64), "vtm_head.bias": torch.zeros(2)}
    torch.save({"model": encoder | decoder | text | heads}, tmp_path / "simvtp.pth")
    simvtp = load_videomae(tmp_path / "simvtp.pth")
    assert simvtp.layout == "simvtp_pretrain" and set(simvtp.heads) == {"mlm_head.weight", "mlm_head.bias",
                                                                         "vtm_head.weight", "vtm_head.bias"}
    assert torch.equal(simvtp.text["word_embeddings.weight"], text["text_embeddings.word_embeddings.weight"])
    video_copy = {f"video_encoder.{k}": v for k, v in official_names(hf.trunk).items() if not k.startswith("norm.")}
    text_copy = {f"text_encoder.{k}": v + 1 for k, v in official_names(hf.trunk).items() if not k.startswith("norm.")}
    fc = {f"{side}_encoder.fc_norm.{k}": torch.ones(64) for side in ("video", "text") for k in ("weight", "bias")}
    torch.save({"module": video_copy | text_copy | fc | {f"text_encoder.{k}": v for k, v in text.items()}},
               tmp_path / "simvtp_msrvtt.pth")
    finetuned = load_videomae(tmp_path / "simvtp_msrvtt.pth")
    assert finetuned.layout == "simvtp_finetune" and set(finetuned.fc_norms) == {
        "video_fc_norm.weight", "video_fc_norm.bias", "text_fc_norm.weight", "text_fc_norm.bias"}
    assert torch.equal(finetuned.text_trunk["blocks.0.attn.qkv.weight"], hf.trunk["blocks.0.attn.qkv.weight"] + 1)
    from modules.factory import add_model_args, build_model

    def build(checkpoint, *flags):
        parser = add_model_args(argparse.ArgumentParser())
        return build_model(parser.parse_args(["--method", "simvtp", "--videomae_checkpoint", str(checkpoint), *flags]))

    dual = build(tmp_path / "simvtp_msrvtt.pth")  # SimVTP's fine-tuned model, as --only_test evaluates it
    assert torch.equal(dual.text_trunk.state_dict()["blocks.1.mlp.fc2.bias"], hf.trunk["blocks.1.mlp.fc2.bias"] + 1)
    assert torch.equal(dual.clip.blocks[1].mlp.fc2.bias, hf.trunk["blocks.1.mlp.fc2.bias"])
    assert torch.equal(dual.text_fc_norm.weight, torch.ones(64)) and dual.clip.norm is None
    assert torch.equal(dual.clip.text.word_embeddings.weight, text["text_embeddings.word_embeddings.weight"])
    pretraining = build(tmp_path / "simvtp.pth", "--simvtp_stage", "pretrain")  # SimVTP's released pre-training
    assert torch.equal(pretraining.mlm_head.weight, heads["text_cls.weight"])
    assert torch.equal(pretraining.decoder.mask_token, hf.decoder["mask_token"])
    for other in (official, simvtp):
        assert other.trunk.keys() == hf.trunk.keys()
        assert all(torch.equal(other.trunk[k], v) for k, v in hf.trunk.items())
        assert all(torch.equal(other.decoder[k], v) for k, v in hf.decoder.items())
    trunk = build_joint_trunk(checkpoint=str(tmp_path / "hf"))
    save_videomae(trunk, tmp_path / "ours.safetensors")
    ours = load_videomae(tmp_path / "ours.safetensors")
    assert ours.layout == "univtr" and ours.config == trunk.config
    assert all(torch.equal(ours.trunk[k], v) for k, v in hf.trunk.items())


def test_missing_truncated_and_unknown_checkpoints_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOMAE_HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError) as error:
        load_videomae("videomae_base_k400.pth", pretrained_dir=tmp_path / "weights")
    message = str(error.value)
    assert "\n" not in message and "MCG-NJU/VideoMAE" in message
    for searched in ("videomae_base_k400.pth", str(tmp_path / "weights" / "videomae_base_k400.pth"),
                     str(tmp_path / "home" / "videomae_base_k400.pth"), ".cache/videomae/videomae_base_k400.pth"):
        assert searched in message
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"model": {"encoder.patch_embed.proj.weight": torch.zeros(8, 3, 2, 4, 4)}}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:200])
    torch.save({"model": {"visual.conv1.weight": torch.zeros(8, 3, 4, 4)}}, tmp_path / "clip.pth")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    for name, expected in (("empty.pth", "empty"), ("cut.pth", "Is the file complete?"),
                           ("clip.pth", "unknown checkpoint layout (first keys: visual.conv1.weight)"),
                           ("bert", "describes a 'bert' model, not videomae")):
        with pytest.raises(CheckpointError) as error:
            load_videomae(tmp_path / name)
        assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)


# -- text: BERT from a local folder --------------------------------------------------------------------


@pytest.fixture
def tiny_bert(tmp_path):
    """A local folder as bert-base-uncased looks: vocab.txt, config.json and weights (hidden 64)."""
    words = "a the red green blue ball cube rolls moves left right slowly fast video of".split()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=40)
    BertModel(config).save_pretrained(tmp_path)
    return tmp_path


def test_bert_tokenizer_and_embeddings_from_a_local_folder(tiny_bert):
    trunk = build_joint_trunk("tiny", bert_path=str(tiny_bert)).eval()
    vocab = trunk.vocabulary
    ids, mask = vocab.tokenize(["A red ball rolls left", "the cube"], 8)
    assert ids[0].tolist() == [2, 5, 7, 10, 12, 14, 3, 0] and mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert (vocab.mask_id, vocab.pad_id, vocab.prediction_size, set(vocab.special_ids)) == (4, 0, 20, {0, 1, 2, 3, 4})
    assert trunk.text.position_embeddings.num_embeddings == 40  # the folder's config.json, not the architecture's
    bert = BertModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        torch.testing.assert_close(trunk.embed_text(ids), bert.embeddings(input_ids=ids), atol=1e-6, rtol=1e-6)
    with pytest.raises(CheckpointError, match="the text embeddings are 64 wide, the trunk 768"):
        build_joint_trunk("ViT-B-16", bert_path=str(tiny_bert))
    with pytest.raises(ValueError, match="outside the text embedding's vocabulary of 20"):
        trunk.embed_text(torch.tensor([[2, 20]]))


def test_clip_vocabulary_adds_one_mask_row():
    trunk = build_joint_trunk("tiny")
    vocab = trunk.vocabulary
    assert vocab.tokenize is None
    assert (vocab.embedding_rows, vocab.prediction_size, vocab.mask_id) == (49409, 49408, 49408)
    assert trunk.text.word_embeddings.num_embeddings == 49409 and set(vocab.special_ids) == {49406, 49407}


def test_padded_frames_repeat_the_last_real_frame():
    video = torch.arange(3.0).view(1, 3, 1, 1, 1).expand(1, 3, 3, 2, 2).clone()
    filled, mask = complete_tubelets(video, torch.tensor([[1, 1, 0]]), tubelet=2)
    assert filled[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 1.0] and mask.tolist() == [[1, 1, 0, 0]]
    filled, mask = complete_tubelets(video, None, tubelet=2)  # 3 frames: the tubelet is completed
    assert filled[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 2.0] and mask.tolist() == [[1, 1, 1, 0]]
    trunk = JointTrunk(get_config("tiny"))
    _, valid = trunk.embed_video(torch.randn(1, 4, 3, 32, 32), torch.tensor([[1, 1, 0, 0]]))
    assert valid.tolist() == [[True] * 16 + [False] * 16]


def test_bert_folder_saved_by_older_transformers_with_its_position_ids_buffer_loads(tiny_bert, tmp_path):
    """transformers < 4.31 saved BERT's ``position_ids`` index buffer with the weights (pytorch_model.bin)."""
    from safetensors.torch import load_file

    state = load_file(str(tiny_bert / "model.safetensors"))
    state["embeddings.position_ids"] = torch.arange(40)[None]
    older = tmp_path / "bert_4_30"
    older.mkdir()
    for name in ("vocab.txt", "config.json"):
        (older / name).write_bytes((tiny_bert / name).read_bytes())
    torch.save(state, older / "pytorch_model.bin")
    trunk = build_joint_trunk("tiny", bert_path=str(older)).eval()
    ids, _ = trunk.vocabulary.tokenize(["a red ball rolls left"], 8)
    bert = BertModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        torch.testing.assert_close(trunk.embed_text(ids), bert.embeddings(input_ids=ids), atol=1e-6, rtol=1e-6)

"""SimVTP's released checkpoints load through ``--init_model`` (modules/converters/simvtp.py, docs/reproduce.md).

The key lists of its two files (tests/fixtures/converters/simvtp_vitb16.txt: pre-trained, MSR-VTT fine-tuned;
names and shapes at ViT-B/16, written for this project from SimVTP's module structure) are recognised by the
simvtp converter alone, imply the flags that build the model they fill with zero leftovers (on the meta device
at full size), and our model written in SimVTP's layout gives exactly the fixture. With random weights at the
tiny size: ours -> SimVTP -> ours is exact, SimVTP's wrappers load, leftovers and contradictions are one line,
the older ``--backbone videomae_joint --videomae_checkpoint`` path reads the same weights, and
``main_task_retrieval.py --do_eval`` scores a converted file exactly as its source model.
"""
import argparse
import re

import numpy as np
import pytest
import torch
from test_converters import SEEDS, T2VLP_SEEDS, evaluate, implied, meta_state, parse, shapes, tiny, toy  # noqa: F401
from test_videomae import tiny_bert  # noqa: F401  (fixture: a local BERT folder, hidden 64, 20 words)

from modules.clip import CheckpointError
from modules.converters import CONVERTERS, detect, plan_load
from modules.converters.simvtp import FRESH_FOR_FINETUNING, UNRUN_TEXT, UNRUN_VIDEO
from modules.factory import add_model_args, build_model
from modules.heads.simvtp import SimVTP
from modules.videomae.config import get_config
from modules.videomae.text import TextVocabulary
from modules.videomae.transformer import JointTrunk

FIXTURE = "simvtp_vitb16.txt"
BERT_BASE = TextVocabulary(None, 30522, 30522, 0, (0, 100, 101, 102, 103), 103, "bert-base-uncased (shapes only)")
CONVERTER = CONVERTERS["simvtp"]
FULL_SIZE = {"method": "simvtp", "backbone": "videomae_joint", "clip_init": "random", "videomae_arch": "ViT-B-16",
             "image_resolution": 224}


def meta_simvtp(stage: str) -> SimVTP:
    """The simvtp head at ViT-B/16 with bert-base-uncased's 30522-row table, without memory."""
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--method", "simvtp", "--simvtp_stage", stage])
    with torch.device("meta"):
        trunk = JointTrunk(get_config("ViT-B-16"), text_overrides={"vocab_size": BERT_BASE.embedding_rows})
        trunk.vocabulary = BERT_BASE
        return SimVTP(trunk, args)


def dropped(conv) -> set[str]:
    return {k for keys in conv.dropped.values() for k in keys}


# (fixture section, --simvtp_stage of the model it fills)
LAYOUTS = {"pretrained-into-finetuning": ("pretrained", "finetune"),
           "pretrained-into-pretraining": ("pretrained", "pretrain"),
           "finetuned": ("finetuned", "finetune")}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_simvtp_layout_recognised_implies_its_flags_and_fills_the_model_exactly(case):
    section, stage = LAYOUTS[case]
    state = meta_state(FIXTURE, section)
    assert [c.name for share, c in detect(state)] == ["simvtp"]  # no other converter claims the file
    assert detect(state)[0][0] == 1.0
    converter, conv, flags, _ = implied(state, parse("--bert_path", "bert-base-uncased"))
    assert flags == FULL_SIZE | ({"simvtp_stage": "finetune"} if section == "finetuned" else {})
    model = meta_simvtp(stage)
    own = model.state_dict()
    plan = plan_load(own, conv, model.pretrain_only_prefixes)
    assert plan.problems("simvtp") == [] and plan.extra == [] and plan.clip_missing == [] and plan.head_missing == []
    kept = set(own) - set(plan.tensors)  # what the file may lack, each with its reason in the log
    assert all(k.startswith(tuple(conv.not_needed)) for k in kept)
    assert "clip.text.position_ids" in dropped(conv) or "text_encoder.text_embeddings.position_ids" in dropped(conv)
    if case == "pretrained-into-finetuning":
        assert {k.split(".")[0] + "." for k in kept} == set(FRESH_FOR_FINETUNING)
        assert {"decoder.mask_token", "mlm_head.weight", "clip.norm.weight"} <= dropped(conv)
    else:
        assert kept <= {"tube_mask.draws", "text_masker.draws"}
        assert shapes(converter.from_ours(own)) == shapes(state)  # ours in SimVTP's layout is the fixture
    if section == "finetuned":
        assert set(conv.dropped[UNRUN_TEXT]) == {k for k in state if k.startswith("video_encoder.text_embeddings.")}
        assert set(conv.dropped[UNRUN_VIDEO]) == {f"text_encoder.patch_embed.proj.{k}" for k in ("weight", "bias")}


def test_simvtp_claims_no_other_layout():
    others = [meta_state(fixture, *sections) for fixture, sections, *_ in SEEDS.values()]
    others += [meta_state("t2vlp_vitb16.txt", *sections) for sections, *_ in T2VLP_SEEDS.values()]
    others.append(tiny(("--method", "simvtp")).state_dict())  # this project's own simvtp checkpoints: ours
    for state in others:
        assert not CONVERTER.matches(list(state))
    assert [c.name for _, c in detect(others[-1])] == ["ours"]


# -- real tensors at the tiny size -------------------------------------------------------------------------

MODELS = {"finetuned": ("--method", "simvtp"), "pretrained": ("--method", "simvtp", "--simvtp_stage", "pretrain")}


def normalised(keys):
    return {re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in keys}


def counters_off(keys):
    return {k for k in keys if not k.startswith(("tube_mask.", "text_masker."))}  # draw counters SimVTP never saves


@pytest.mark.parametrize("section", list(MODELS))
def test_simvtp_random_weights_round_trip_is_exact(section):
    model = tiny(MODELS[section])
    ours = model.state_dict()
    theirs = CONVERTER.from_ours(ours)
    assert normalised(theirs) == normalised(meta_state(FIXTURE, section))  # SimVTP's names at any size
    prefix = "text_encoder.text_embeddings." if section == "finetuned" else "text_embeddings."
    theirs[prefix + "token_type_ids"] = torch.zeros(1, 512, dtype=torch.long)  # a buffer some versions might save
    back = CONVERTER.to_ours(theirs)
    assert back.unexplained == [] and prefix + "token_type_ids" in dropped(back)
    plan = plan_load(ours, back, model.pretrain_only_prefixes)
    assert plan.problems(model.head_name) == [] and plan.tensors.keys() == counters_off(ours)
    for key in plan.tensors:
        assert torch.equal(plan.tensors[key], ours[key]) and plan.tensors[key].dtype == ours[key].dtype, key


def save_simvtp(model, path, wrap="model", **beside):
    """``model`` as SimVTP writes it: under "model" with the run's args (pre-training), or DeepSpeed's "module"
    (fine-tuning, fp16), optionally with DDP's ``module.`` prefix."""
    theirs = CONVERTER.from_ours(model.state_dict())
    if wrap == "ddp_fp16":
        theirs = {f"module.{k}": (v.half() if v.is_floating_point() else v) for k, v in theirs.items()}
    torch.save({"module" if wrap == "ddp_fp16" else "model": theirs, **beside}, path)
    return path


def test_simvtp_fine_tuned_fp16_ddp_file_loads_with_its_flags_inferred(tmp_path, caplog):
    source = tiny(MODELS["finetuned"])
    path = save_simvtp(source, tmp_path / "checkpoint-best.pth", "ddp_fp16", epoch=np.int64(99))
    args = parse("--init_model", str(path))  # no --method, --backbone or architecture
    caplog.set_level("INFO")
    loaded = build_model(args)
    assert (args.method, args.backbone, args.videomae_arch, args.simvtp_stage, args.image_resolution) == (
        "simvtp", "videomae_joint", "tiny", "finetune", 32)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    assert "SimVTP checkpoint layout, detected" in caplog.text and "float16 tensors converted" in caplog.text
    assert "the video copy's BERT embedding layer" in caplog.text and "the text copy's tubelet embedding" in caplog.text


def test_simvtp_pretrained_file_starts_fine_tuning_or_continues_pre_training(tmp_path, caplog):
    source = tiny(MODELS["pretrained"])
    run = argparse.Namespace(model="pretrain_simvtp_base_patch16_224", lr=6e-4, mask_ratio=0.9)
    first = next(source.parameters())
    adamw = {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.ones_like(first), "exp_avg_sq": first ** 2}},
             "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.05, "params": [0]}]}
    # SimVTP's utils.save_model (torch.amp): {"model", "optimizer", "epoch", "scaler", "args"}
    path = save_simvtp(source, tmp_path / "checkpoint-199.pth", optimizer=adamw, epoch=199,
                       scaler={"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}, args=run)
    caplog.set_level("INFO")
    tuned = build_model(parse("--init_model", str(path)))  # --do_eval / --do_train: the dual encoder
    assert tuned.stage == "finetune"
    trunk = {k: v for k, v in source.state_dict().items() if k.startswith("clip.") and not k.startswith("clip.norm.")}
    for key, value in tuned.state_dict().items():
        origin = "clip." + key[len("text_trunk."):] if key.startswith("text_trunk.") else key
        if "fc_norm" not in key:
            assert torch.equal(value, trunk[origin]), key  # both copies start from the pre-trained encoder
    assert "text copy of the trunk starts from the checkpoint's trunk" in caplog.text
    assert "tensors that only pre-training uses (clip, decoder, mlm_head, vtm_head)" in caplog.text
    resumed = build_model(parse("--init_model", str(path), "--simvtp_stage", "pretrain"))
    for key, value in source.state_dict().items():
        if key not in ("tube_mask.draws", "text_masker.draws"):
            assert torch.equal(resumed.state_dict()[key], value), key


def test_videomae_checkpoint_path_reads_the_same_weights(tmp_path):
    """The older path (``--backbone videomae_joint --videomae_checkpoint``, modules/videomae/loading.py) and
    the converter read one SimVTP file alike."""
    source = tiny(MODELS["finetuned"])
    path = save_simvtp(source, tmp_path / "simvtp_msrvtt.pth")
    old = build_model(parse("--method", "simvtp", "--backbone", "videomae_joint", "--videomae_checkpoint", str(path)))
    new = build_model(parse("--init_model", str(path)))
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())


@pytest.mark.parametrize("change", ["extra", "missing-text-copy", "missing-trunk"])
def test_simvtp_leftover_on_either_side_is_one_line_naming_it(tmp_path, change):
    theirs = CONVERTER.from_ours(tiny(MODELS["finetuned"]).state_dict())
    named = {"extra": "video_encoder.extra_adapter.weight", "missing-text-copy": "text_trunk.blocks.1.mlp.fc2.bias",
             "missing-trunk": "clip.blocks.1.norm1.weight"}[change]
    if change == "extra":
        theirs[named] = torch.zeros(3)
    else:
        theirs.pop({"missing-text-copy": "text_encoder.blocks.1.mlp.fc2.bias",
                    "missing-trunk": "video_encoder.blocks.1.norm1.weight"}[change])
    torch.save(theirs, tmp_path / "simvtp.pth")
    with pytest.raises(CheckpointError) as error:
        build_model(parse("--init_model", str(tmp_path / "simvtp.pth")))
    message = str(error.value)
    assert "\n" not in message and "not loaded" in message and named in message, message
    assert ("no place in the simvtp model" if change == "extra" else "not in the checkpoint") in message


def test_init_format_simvtp_forces_the_layout(tmp_path):
    source = tiny(MODELS["finetuned"])
    path = save_simvtp(source, tmp_path / "simvtp.pth")
    forced = build_model(parse("--init_model", str(path), "--init_format", "simvtp"))
    assert all(torch.equal(forced.state_dict()[k], v) for k, v in source.state_dict().items())
    clip4clip = tmp_path / "pytorch_model.bin.1"  # read as SimVTP's layout, CLIP4Clip's names have no place
    torch.save(CONVERTERS["clip4clip"].from_ours(tiny(("--method", "meanP")).state_dict()), clip4clip)
    with pytest.raises(CheckpointError) as error:
        build_model(parse("--init_model", str(clip4clip), "--init_format", "simvtp", "--pretrained_clip_name", "tiny"))
    message = str(error.value)
    assert "\n" not in message and "forced by --init_format" in message
    assert "checkpoint tensors have no place in the simvtp model" in message
    assert "clip.token_embedding.weight" in message


def test_given_flags_that_contradict_simvtp_weights_are_one_line_naming_both(tmp_path):
    path = save_simvtp(tiny(MODELS["finetuned"]), tmp_path / "simvtp.pth")
    for flags, named in ((("--simvtp_stage", "pretrain"), "--simvtp_stage pretrain given, the weights imply finetune"),
                         (("--videomae_arch", "ViT-B-16"), "--videomae_arch ViT-B-16 given, the weights imply tiny"),
                         (("--method", "seqTransf"), "--method seqTransf given, the weights are a simvtp model"),
                         (("--backbone", "clip"), "--backbone clip given, the weights imply videomae_joint")):
        with pytest.raises(CheckpointError) as error:
            build_model(parse("--init_model", str(path), *flags))
        assert "\n" not in str(error.value) and named in str(error.value), str(error.value)
    args = parse("--init_model", str(path), "--videomae_arch", "tiny", "--method", "simvtp")  # agreeing flags
    build_model(args)
    assert args.videomae_arch == "tiny"


def test_simvtp_bert_table_needs_bert_path(tmp_path, tiny_bert):  # noqa: F811
    source = tiny((*MODELS["finetuned"], "--bert_path", str(tiny_bert)))
    path = save_simvtp(source, tmp_path / "simvtp.pth")
    with pytest.raises(CheckpointError, match="has 20 rows .*pass --bert_path PATH") as error:
        build_model(parse("--init_model", str(path)))
    assert "\n" not in str(error.value)
    loaded = build_model(parse("--init_model", str(path), "--bert_path", str(tiny_bert)))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_do_eval_of_a_simvtp_file_equals_its_source_model(toy, tmp_path):  # noqa: F811
    source = tiny(MODELS["finetuned"], seed=3)
    torch.save({"model": source.state_dict()}, tmp_path / "ours.pt")
    tiny_flags = ("--pretrained_clip_name", "tiny", "--clip_init", "random", "--method", "simvtp")
    expected = evaluate(toy, tmp_path / "ours", *tiny_flags, "--init_model", str(tmp_path / "ours.pt"))
    seed_file = save_simvtp(source, tmp_path / "simvtp_msrvtt.pth")
    got = evaluate(toy, tmp_path / "seed", "--init_model", str(seed_file))  # every model flag from the weights
    assert got == expected


def test_simvtp_deepspeed_checkpoint_folder_loads(tmp_path):
    """SimVTP's fine-tuning runs under DeepSpeed (fp16): ``save_checkpoint`` writes the weights under "module" of
    <output_dir>/checkpoint-N/mp_rank_00_model_states.pt, beside the engine's bookkeeping, and the tag to
    <output_dir>/latest. The file, its folder and the run folder all load."""
    source = tiny(MODELS["finetuned"])
    module = {k: v.half() if v.is_floating_point() else v for k, v in CONVERTER.from_ours(source.state_dict()).items()}
    tag = tmp_path / "checkpoint-29"
    tag.mkdir()
    torch.save({"module": module, "buffer_names": ["video_encoder.pos_embed"], "optimizer": None,
                "param_shapes": [{k: v.shape for k, v in module.items()}], "frozen_param_shapes": None,
                "shared_params": {}, "frozen_param_fragments": None, "lr_scheduler": None, "data_sampler": None,
                "random_ltd": None, "sparse_tensor_module_names": set(), "skipped_steps": 2, "global_steps": 300,
                "global_samples": 9600, "dp_world_size": 8, "mp_world_size": 1,
                "ds_config": {"fp16": {"enabled": True}}, "ds_version": "0.8.0", "epoch": 29},
               tag / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("checkpoint-29")
    for given in (tag / "mp_rank_00_model_states.pt", tag, tmp_path):
        loaded = build_model(parse("--init_model", str(given)))
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value.half().float()), (given, key)


def test_our_simvtp_pretraining_file_logs_what_fine_tuning_takes_from_it(tmp_path, caplog):
    source = tiny(MODELS["pretrained"])
    torch.save({"model": source.state_dict()}, tmp_path / "model_final.pt")
    caplog.set_level("INFO")
    tuned = build_model(parse("--init_model", str(tmp_path / "model_final.pt"), "--method", "simvtp",
                              "--pretrained_clip_name", "tiny", "--clip_init", "random"))
    assert tuned.stage == "finetune"
    assert all(torch.equal(v, source.state_dict()["clip." + k[len("text_trunk."):]])
               for k, v in tuned.state_dict().items() if k.startswith("text_trunk."))
    # The text copy is the checkpoint's trunk, not a fresh module; the two new LayerNorms are.
    assert "these start fresh: text_fc_norm, video_fc_norm\n" in caplog.text
    assert f"text_trunk.* not in the checkpoint: {FRESH_FOR_FINETUNING['text_trunk.']}" in caplog.text
    mapped = re.search(r"(\d+) tensors mapped \((.*)\)", caplog.text)
    counts = dict(re.findall(r"([\w ]+?) (\d+)(?:, |$)", mapped[2]))
    assert sum(map(int, counts.values())) == int(mapped[1]) == len([k for k in source.state_dict() if k.startswith(
        "clip.") and not k.startswith("clip.norm.")])  # what was loaded: no decoder or MLM head among them
    assert set(counts) == {"CLIP blocks", "CLIP text", "CLIP vision"}


def test_bert_path_gives_only_the_vocabulary_beside_init_model(tmp_path, tiny_bert, monkeypatch):  # noqa: F811
    """--init_model holds the text embedding: the BERT folder's weights are not read (its vocabulary is)."""
    import modules.videomae.model as videomae_model

    source = tiny((*MODELS["finetuned"], "--bert_path", str(tiny_bert)))
    path = save_simvtp(source, tmp_path / "simvtp.pth")

    def unread(folder):
        raise AssertionError(f"{folder}: BERT weights read although --init_model holds the text embedding")

    monkeypatch.setattr(videomae_model, "bert_embedding_state", unread)
    loaded = build_model(parse("--init_model", str(path), "--bert_path", str(tiny_bert)))
    assert loaded.vocabulary.embedding_rows == 20  # the folder's vocabulary
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())

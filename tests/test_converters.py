"""The seeds' released checkpoints load without the real files (modules/converters, docs/reproduce.md).

Each seed layout is a key list written for this project from the seed's module structure
(tests/fixtures/converters/*.txt, names and shapes at ViT-B/32). On the meta device: the layout is
recognised, implies the right flags, and fills the model those flags build with zero leftovers on either
side; our model written in the seed's layout gives exactly the fixture. With real tensors at the tiny
size: ours -> seed -> ours is exact, files load through every wrapper, leftovers and contradictions are one
line, and ``main_task_retrieval.py --do_eval`` scores a converted checkpoint exactly as its source model.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from prompt_tuning_helpers import meta_model
from test_hmmc import tiny_bert  # noqa: F401  (fixture: a one-layer BERT folder)

import main_task_retrieval
from modules.clip import CheckpointError
from modules.converters import CONVERTERS, choose_converter, detect, plan_load
from modules.converters.flags import backbone_flags
from modules.factory import build_model

FIXTURES = Path(__file__).with_name("fixtures") / "converters"
DTYPES = {"int64": torch.int64}


def fixture_keys(name: str, *sections: str, prefix: str = "") -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (shape, dtype)} of a fixture file: the lines before any [section] plus the named sections."""
    out, section = {}, None
    for line in (FIXTURES / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section is None or section in sections:
            if line.startswith("@include"):
                _, other, inner = line.split()
                out |= fixture_keys(other, prefix=prefix + inner)
                continue
            key, shape, *dtype = line.split()
            dims = () if shape == "()" else tuple(int(d) for d in shape.split(","))
            match = re.search(r"\{(\d+)\.\.(\d+)\}", key)
            indices = range(int(match[1]), int(match[2]) + 1) if match else [None]
            for i in indices:
                name = key if i is None else key.replace(match[0], str(i))
                out[prefix + name] = (dims, DTYPES[dtype[0]] if dtype else torch.float32)
    return out


def meta_state(name, *sections):
    keys = fixture_keys(name, *sections)
    return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in keys.items()}


def shapes(state):
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def parse(*flags):
    return main_task_retrieval.get_args(list(flags))


# (fixture, sections, converter, implied flags beyond the ViT-B/32 backbone)
SEEDS = {
    "clip4clip-meanP": ("clip4clip_vitb32.txt", (), "clip4clip", {}),
    "clip4clip-seqTransf": ("clip4clip_vitb32.txt", ("seqTransf",), "clip4clip",
                            {"method": "seqTransf", "cross_num_hidden_layers": 4, "max_position_embeddings": 77}),
    "clip4clip-seqLSTM": ("clip4clip_vitb32.txt", ("seqLSTM",), "clip4clip", {"method": "seqLSTM"}),
    "clip4clip-3d": ("clip4clip_vitb32.txt", ("seqTransf", "linear_patch_3d"), "clip4clip",
                     {"method": "seqTransf", "cross_num_hidden_layers": 4, "max_position_embeddings": 77,
                      "linear_patch": "3d"}),
    "dgl-transformer": ("dgl_vitb32.txt", ("transformer",), "dgl",
                        {"method": "dgl", "shared_latent_space": "transformer", "global_prompt_length": 4,
                         "max_frames": 12, "unified_transformer_layers": None}),
    "dgl-linear": ("dgl_vitb32.txt", ("linear",), "dgl",
                   {"method": "dgl", "shared_latent_space": "linear", "global_prompt_length": 4,
                    "visual_prompt_length": 4, "text_prompt_length": 8, "unified_transformer_layers": None}),
    "hmmc": ("hmmc_vitb32.txt", (), "hmmc", {"method": "hmmc", "use_temp": True, "text_encoder": None}),
    "hmmc-pretraining": ("hmmc_vitb32.txt", ("pretraining",), "hmmc",
                         {"method": "hmmc", "use_temp": True, "text_encoder": None}),
}


def implied(state, args):
    converter = choose_converter(state, "auto", "fixture")
    conv = converter.to_ours(state)
    backbone, complete = backbone_flags(conv)
    flags = {k: value for k, (value, _) in {**backbone, **converter.implied_flags(conv, args)}.items()}
    return converter, conv, flags, complete


@pytest.mark.parametrize("seed", list(SEEDS))
def test_seed_layout_recognised_implies_its_flags_and_fills_the_model_exactly(seed):
    fixture, sections, expected_converter, expected_flags = SEEDS[seed]
    state = meta_state(fixture, *sections)
    assert [c.name for share, c in detect(state) if share == 1.0] == [expected_converter]
    args = parse()
    converter, conv, flags, complete = implied(state, args)
    assert flags == {"pretrained_clip_name": "ViT-B/32", "image_resolution": 224, **expected_flags} and complete
    for flag, value in flags.items():
        setattr(args, flag, value)
    method = flags.get("method", "meanP")
    argv = ["--use_temp"] if flags.get("use_temp") else []
    for flag in ("shared_latent_space", "cross_num_hidden_layers", "max_position_embeddings"):
        argv += [f"--{flag}", str(flags[flag])] if flag in flags else []
    model = meta_model(method, *argv)
    if flags.get("linear_patch") == "3d":
        model.clip.visual.enable_3d_patch()
    plan = plan_load(model.state_dict(), conv, model.pretrain_only_prefixes)
    assert plan.problems(method) == [] and plan.extra == [] and plan.clip_missing == [] and plan.head_missing == []
    assert set(plan.tensors) == set(model.state_dict())
    # The other way: our model in the seed's layout is the fixture, name for name and shape for shape.
    if seed != "hmmc-pretraining":
        assert shapes(converter.from_ours(model.state_dict())) == shapes(state)


def test_pretraining_only_tensors_of_hmmc_are_dropped_and_named():
    conv = CONVERTERS["hmmc"].to_ours(meta_state("hmmc_vitb32.txt", "pretraining"))
    dropped = {k for keys in conv.dropped.values() for k in keys}
    assert {"queue_ptr", "cls.decoder.weight", "visual_encoder_k.visual.conv1.weight", "v_predictor.linear_out.weight",
            "t_projector_k.linear_out.weight", "weight_sum"} <= dropped
    assert conv.unexplained == [] and not any(k.startswith(("queue", "cls.", "momentum")) for k in conv.state)


# -- real tensors at the tiny size -------------------------------------------------------------------------

TINY = ("--pretrained_clip_name", "tiny", "--clip_init", "random")
MODELS = {  # seed layout -> the flags of a tiny model of that kind
    "clip4clip-seqTransf": ("clip4clip", "--method", "seqTransf", "--max_position_embeddings", "77"),
    "clip4clip-seqLSTM": ("clip4clip", "--method", "seqLSTM"),
    "dgl-transformer": ("dgl", "--method", "dgl", "--max_frames", "6"),
    "dgl-linear": ("dgl", "--method", "dgl", "--shared_latent_space", "linear"),
    "hmmc": ("hmmc", "--method", "hmmc", "--use_temp"),
}


def tiny(flags, seed=0):
    torch.manual_seed(seed)
    model = build_model(parse(*TINY, *flags))
    with torch.no_grad():  # every tensor distinct from its initialisation (LayerNorms, zero biases)
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.01)
    return model


def normalised(keys):
    return {re.sub(r"resblocks\.\d+\.", "resblocks.N.", k) for k in keys}


@pytest.mark.parametrize("seed", list(MODELS))
def test_random_weights_round_trip_ours_seed_ours_is_exact(seed):
    fmt, *flags = MODELS[seed]
    model = tiny(flags)
    ours = model.state_dict()
    theirs = CONVERTERS[fmt].from_ours(ours)
    fixture, sections, *_ = SEEDS[seed]
    assert normalised(theirs) == normalised(fixture_keys(fixture, *sections))  # the seed's names at any size
    back = CONVERTERS[fmt].to_ours(theirs)
    plan = plan_load(ours, back, model.pretrain_only_prefixes)
    assert plan.problems(model.head_name) == [] and plan.tensors.keys() == ours.keys()
    for key, value in ours.items():
        assert torch.equal(plan.tensors[key], value) and plan.tensors[key].dtype == value.dtype, key


def save_as_seed(model, fmt, path: Path, wrap: str = "plain") -> Path:
    theirs = CONVERTERS[fmt].from_ours(model.state_dict())
    if wrap == "ddp_fp16_pth_tar":  # DGL's main.py: DDP names, optimiser and scalars beside the weights
        theirs = {f"module.{k}": (v.half() if v.is_floating_point() else v) for k, v in theirs.items()}
        obj = {"epoch": 5, "global_step": 1755, "arch": "CLIp4Clip", "state_dict": theirs,
               "best_acc1": np.float64(45.8), "optimizer": {"state": {}, "param_groups": [{"lr": 2e-3}]}}
        torch.save(obj, path, _use_new_zipfile_serialization=False)
        # numpy 1 names the scalar's module numpy.core (a legacy pickle spells it out as text)
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    else:
        torch.save(theirs, path)
    return path


def test_ddp_fp16_pth_tar_with_numpy_scalars_loads_with_every_flag_inferred(tmp_path, caplog):
    source = tiny(MODELS["dgl-transformer"][1:])
    path = save_as_seed(source, "dgl", tmp_path / "ckpt.best.pth.tar", wrap="ddp_fp16_pth_tar")
    args = parse("--init_model", str(path))  # no --method, no backbone, no prompt flags
    caplog.set_level("INFO")
    loaded = build_model(args)
    assert (args.method, args.shared_latent_space, args.max_frames) == ("dgl", "transformer", 6)
    assert (args.pretrained_clip_name, args.clip_init) == ("tiny", "random")
    for key, value in source.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype, key
        assert torch.equal(got, value.half().to(value.dtype) if value.is_floating_point() else value), key
    assert "DGL ckpt.best.pth.tar layout, detected" in caplog.text and "float16 tensors converted" in caplog.text
    assert "dropped 1 index buffer" in caplog.text


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_a_leftover_on_either_side_is_one_line_naming_it(tmp_path, change):
    source = tiny(MODELS["clip4clip-seqTransf"][1:])
    theirs = CONVERTERS["clip4clip"].from_ours(source.state_dict())
    key = "transformerClip.resblocks.1.ln_2.bias"
    if change == "extra":
        theirs["clip.visual.extra_adapter.weight"] = torch.zeros(3)
        key = "clip.visual.extra_adapter.weight"
    else:
        theirs.pop(key)
    torch.save(theirs, tmp_path / "pytorch_model.bin.4")
    with pytest.raises(CheckpointError) as error:
        build_model(parse("--init_model", str(tmp_path / "pytorch_model.bin.4")))
    message = str(error.value)
    assert "\n" not in message and key in message and "not loaded" in message
    assert ("no place in the seqTransf model" if change == "extra" else "not in the checkpoint") in message


def test_init_format_forces_the_layout(tmp_path):
    source = tiny(MODELS["hmmc"][1:])
    path = save_as_seed(source, "hmmc", tmp_path / "pytorch_model.bin.2")
    forced = build_model(parse("--init_model", str(path), "--init_format", "hmmc"))
    assert all(torch.equal(forced.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(CheckpointError) as error:  # read as CLIP4Clip's layout, HMMC's names have no place
        build_model(parse("--init_model", str(path), "--init_format", "clip4clip", "--method", "hmmc", "--use_temp",
                          *TINY))
    assert "\n" not in str(error.value) and "forced by --init_format" in str(error.value)
    assert "checkpoint tensors have no place in the hmmc model" in str(error.value)
    assert "text_encoder.token_embedding.weight" in str(error.value)
    with pytest.raises(SystemExit):  # an unknown layout name is refused by the parser
        parse("--init_format", "t2vlp_someday")


def test_given_flags_that_contradict_the_weights_are_one_line_naming_both(tmp_path):
    dgl = save_as_seed(tiny(MODELS["dgl-transformer"][1:]), "dgl", tmp_path / "dgl.pth.tar")
    for flags, named in ((("--shared_latent_space", "linear"), "--shared_latent_space linear given, the weights "
                                                                "imply transformer"),
                         (("--max_frames", "8"), "--max_frames 8 given, the weights imply 6"),
                         (("--method", "seqTransf"), "--method seqTransf given, the weights are a dgl model"),
                         (("--pretrained_clip_name", "ViT-B/16"), "--pretrained_clip_name ViT-B/16 given, the weights "
                                                                  "imply tiny")):
        with pytest.raises(CheckpointError) as error:
            build_model(parse("--init_model", str(dgl), *flags))
        assert "\n" not in str(error.value) and named in str(error.value), str(error.value)
    args = parse("--init_model", str(dgl), "--unified_transformer_layers", "2")  # = every tiny block: agrees
    build_model(args)
    with pytest.raises(CheckpointError, match="--unified_transformer_layers 1 given, the weights imply 2"):
        build_model(parse("--init_model", str(dgl), "--unified_transformer_layers", "1"))
    hmmc_no_temp = save_as_seed(tiny(("--method", "hmmc")), "hmmc", tmp_path / "hmmc.bin")
    with pytest.raises(CheckpointError, match="--use_temp on given, the weights imply off"):
        build_model(parse("--init_model", str(hmmc_no_temp), "--use_temp"))
    args = parse("--init_model", str(hmmc_no_temp))
    build_model(args)
    assert args.method == "hmmc" and args.use_temp is False


def test_clip4clip_tight_transformer_is_refused_in_one_line(tmp_path):
    state = meta_state("clip4clip_vitb32.txt", "tightTransf")
    assert choose_converter(state, "auto", "x").name == "clip4clip"
    real = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items() if not k.startswith("clip.")}
    source = tiny(("--method", "tightTransf"))
    real |= {k: v for k, v in CONVERTERS["clip4clip"].from_ours(
        {k: v for k, v in source.state_dict().items() if k.startswith("clip.")}).items()}
    torch.save(real, tmp_path / "pytorch_model.bin.1")
    with pytest.raises(CheckpointError, match="not the cross encoder of this project's tightTransf head") as error:
        build_model(parse("--init_model", str(tmp_path / "pytorch_model.bin.1")))
    assert "\n" not in str(error.value)


def test_hmmc_chinese_text_encoder_maps_onto_the_hugging_face_tower(tmp_path, tiny_bert):  # noqa: F811
    source = tiny(("--method", "hmmc", "--use_temp", "--language", "chinese", "--text_encoder", tiny_bert))
    without_clip_text = {k: v for k, v in source.state_dict().items() if not k.startswith("clip.text.")}
    theirs = CONVERTERS["hmmc"].from_ours(without_clip_text)
    assert any(k.startswith("text_encoder.chinese_encoder.") for k in theirs)
    assert "text_encoder.text_proj.weight" in theirs
    torch.save(theirs, tmp_path / "pytorch_model.bin.4")
    with pytest.raises(CheckpointError, match="pass --text_encoder PATH"):
        build_model(parse("--init_model", str(tmp_path / "pytorch_model.bin.4")))
    args = parse("--init_model", str(tmp_path / "pytorch_model.bin.4"), "--text_encoder", tiny_bert)
    loaded = build_model(args)
    assert args.language == "chinese"
    for key, value in source.state_dict().items():
        if not key.startswith("clip.text."):  # CLIP's text tower is unused with the Chinese encoder
            assert torch.equal(loaded.state_dict()[key], value), key


# -- end to end: main_task_retrieval.py --do_eval on a converted checkpoint ------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=4, num_test=6, size=32, fps=5,
                            seconds=1.6, workers=1, progress=False)


def evaluate(toy, out, *flags):
    argv = ["--do_eval", "--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--output_dir", str(out), "--batch_size_val", "8", "--max_frames", "4", "--image_resolution", "32",
            "--num_thread_reader", "0", *flags]
    assert main_task_retrieval.main(argv) == 0
    return json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]


@pytest.mark.parametrize("fmt,model_flags,eval_flags", [
    ("clip4clip", ("--method", "seqTransf", "--max_position_embeddings", "77"), ()),
    ("dgl", ("--method", "dgl", "--max_frames", "4"), ()),
    ("hmmc", ("--method", "hmmc", "--use_temp", "--use_frame_fea", "--top_frames", "2"),
     ("--use_frame_fea", "--top_frames", "2")),  # scoring flags HMMC's weights cannot say (its README passes them)
])
def test_do_eval_of_a_converted_checkpoint_equals_its_source_model(toy, tmp_path, fmt, model_flags, eval_flags):
    source = tiny(model_flags, seed=3)
    torch.save({"model": source.state_dict()}, tmp_path / "ours.pt")
    expected = evaluate(toy, tmp_path / "ours", *TINY, *model_flags, "--init_model", str(tmp_path / "ours.pt"))
    seed_file = save_as_seed(source, fmt, tmp_path / f"{fmt}.bin")
    got = evaluate(toy, tmp_path / "seed", *eval_flags, "--init_model", str(seed_file))  # flags from the weights
    assert got == expected


# -- T2VLP (ViT-B/16; tests/fixtures/converters/t2vlp_vitb16.txt) ----------------------------------------------

T2VLP_SEEDS = {  # sections, --t2vlp_stage given, the stage the weights then imply
    "stage-1": ((), None, "1"),
    "stage-2": (("fusion",), "2", "2"),
    "downstream-retrieval": (("fusion",), None, "retrieval"),
}


def without_counters(keys):
    return {k for k in keys if not k.startswith(("negatives.", "masker."))}  # draw counters T2VLP does not save


@pytest.mark.parametrize("seed", list(T2VLP_SEEDS))
def test_t2vlp_layout_recognised_implies_its_flags_and_fills_the_model_exactly(seed):
    sections, given, stage = T2VLP_SEEDS[seed]
    state = meta_state("t2vlp_vitb16.txt", *sections)
    assert [c.name for share, c in detect(state) if share == 1.0] == ["t2vlp"]
    args = parse(*(("--t2vlp_stage", given) if given else ()))
    converter, conv, flags, complete = implied(state, args)
    assert flags == {"pretrained_clip_name": "ViT-B/16", "image_resolution": 224, "method": "t2vlp",
                     "t2vlp_stage": stage, "num_centers": 8, "joint_layers": 2} and complete
    model = meta_model("t2vlp", "--t2vlp_stage", stage, arch="ViT-B/16")
    plan = plan_load(model.state_dict(), conv, model.pretrain_only_prefixes)
    assert plan.problems("t2vlp") == [] and plan.extra == [] and plan.clip_missing == [] and plan.head_missing == []
    assert set(plan.tensors) == without_counters(model.state_dict())
    assert shapes(converter.from_ours(model.state_dict())) == shapes(state)
    dropped = {k for keys in conv.dropped.values() for k in keys}
    assert "clip.local_visual.conv1.weight" in dropped and "clip.local_visual.ln_pre.bias" in dropped
    if sections:
        assert "clip.fusion_transformer.resblocks.11.ln_2.bias" in dropped and "visual_linear.weight" in dropped
        assert "fusion.transformer.resblocks.5.ln_2.bias" in conv.state
        assert "fusion.transformer.resblocks.6.ln_2.bias" not in conv.state


T2VLP_MODELS = {
    "stage-1": ("--method", "t2vlp"),
    "stage-2": ("--method", "t2vlp", "--t2vlp_stage", "2", "--fusion_layers", "2"),
    "downstream-retrieval": ("--method", "t2vlp", "--t2vlp_stage", "retrieval", "--fusion_layers", "2"),
}


@pytest.mark.parametrize("seed", list(T2VLP_MODELS))
def test_t2vlp_random_weights_round_trip_is_exact(seed):
    model = tiny(T2VLP_MODELS[seed])
    ours = model.state_dict()
    theirs = CONVERTERS["t2vlp"].from_ours(ours)
    sections = T2VLP_SEEDS[seed][0]
    assert normalised(theirs) == normalised(fixture_keys("t2vlp_vitb16.txt", *sections))
    back = CONVERTERS["t2vlp"].to_ours(theirs)
    assert back.unexplained == []
    plan = plan_load(ours, back, model.pretrain_only_prefixes)
    assert plan.problems(model.head_name) == [] and plan.tensors.keys() == without_counters(ours)
    for key in plan.tensors:
        assert torch.equal(plan.tensors[key], ours[key]) and plan.tensors[key].dtype == ours[key].dtype, key


def test_t2vlp_file_loads_with_its_flags_inferred(tmp_path):
    source = tiny(T2VLP_MODELS["downstream-retrieval"])
    path = save_as_seed(source, "t2vlp", tmp_path / "pytorch_model.bin.4")
    args = parse("--init_model", str(path))
    loaded = build_model(args)
    assert (args.method, args.t2vlp_stage, args.fusion_layers, args.joint_layers) == ("t2vlp", "retrieval", 2, 2)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_t2vlp_leftover_on_either_side_is_one_line_naming_it(tmp_path, change):
    theirs = CONVERTERS["t2vlp"].from_ours(tiny(T2VLP_MODELS["stage-1"]).state_dict())
    key = "clip.local_visual.transformer.resblocks.1.ln_2.bias"
    if change == "extra":
        key = "clip.local_visual.extra_adapter.weight"
        theirs[key] = torch.zeros(3)
    else:
        theirs.pop(key)
    torch.save(theirs, tmp_path / "pytorch_model.bin.1")
    with pytest.raises(CheckpointError) as error:
        build_model(parse("--init_model", str(tmp_path / "pytorch_model.bin.1")))
    message = str(error.value)
    assert "\n" not in message and "not loaded" in message
    assert (key if change == "extra" else "tube.local.resblocks.1.ln_2.bias") in message


# -- every wrapper the seeds' training scripts write (their save code, key for key) --------------------------


def bertadam_state(model):
    """An optimiser state as BertAdam's state_dict() holds it: tensors beside plain numbers and strings."""
    params = list(model.parameters())[:2]
    return {"state": {i: {"step": 3, "next_m": torch.ones_like(p), "next_v": torch.ones_like(p)}
                      for i, p in enumerate(params)},
            "param_groups": [{"lr": 1e-7, "schedule": "warmup_cosine", "warmup": 0.1, "t_total": 90, "b1": 0.9,
                              "b2": 0.98, "e": 1e-6, "weight_decay": 0.2, "max_grad_norm": 1.0, "params": [0, 1]}]}


# seed script -> (layout, the tiny model, the object its save code passes to torch.save)
SAVED_BY = {
    "clip4clip main_task_retrieval.save_model": ("clip4clip", MODELS["clip4clip-seqTransf"][1:],
                                                 lambda theirs, model: theirs),
    "hmmc main_task_retrieval.save_model": ("hmmc", MODELS["hmmc"][1:], lambda theirs, model: theirs),
    "dgl main.py": ("dgl", MODELS["dgl-transformer"][1:],
                    lambda theirs, model: {"epoch": 5, "arch": "CLIP4Clip",
                                           "state_dict": {f"module.{k}": v for k, v in theirs.items()},
                                           "best_acc1": 45.8, "optimizer": bertadam_state(model)}),
    "t2vlp main_task_clip.save_model": ("t2vlp", T2VLP_MODELS["stage-1"],
                                        lambda theirs, model: {"global_step": 1500, "model_state_dict": theirs,
                                                               "optim_state_dict": bertadam_state(model)}),
    "t2vlp main_task_fusion.save_model": ("t2vlp", T2VLP_MODELS["stage-2"],
                                          lambda theirs, model: {"global_step": 800, "model_state_dict": theirs,
                                                                 "optim_state_dict": bertadam_state(model)}),
    "t2vlp video_text_retrieval save_model": ("t2vlp", T2VLP_MODELS["downstream-retrieval"],
                                              lambda theirs, model: {"global_step": 60, "model_state_dict": theirs,
                                                                     "optim_state_dict": bertadam_state(model),
                                                                     "epoch": 4}),
}


@pytest.mark.parametrize("script", list(SAVED_BY))
def test_the_file_each_seed_script_saves_loads_exactly(tmp_path, script):
    fmt, flags, wrap = SAVED_BY[script]
    source = tiny(flags)
    path = tmp_path / "pytorch_model.bin.3"
    torch.save(wrap(CONVERTERS[fmt].from_ours(source.state_dict()), source), path)
    args = parse("--init_model", str(path), *(("--t2vlp_stage", "2") if "fusion" in script else ()))
    loaded = build_model(args)
    assert args.method == source.head_name
    kept = without_counters(loaded.state_dict()) if fmt == "t2vlp" else loaded.state_dict().keys()
    for key in kept:
        assert torch.equal(loaded.state_dict()[key], source.state_dict()[key]), key


def test_hmmc_file_without_a_logit_scale_gets_the_scale_hmmc_scores_with(tmp_path, caplog):
    from engine.evaluate import dsl_temperature

    source = tiny(MODELS["hmmc"][1:])
    theirs = CONVERTERS["hmmc"].from_ours(source.state_dict())
    del theirs["logit_scale"], theirs["visual_encoder.logit_scale"]  # HMMC keeps it as a plain tensor: not saved
    torch.save(theirs, tmp_path / "pytorch_model.bin.4")
    args = parse("--init_model", str(tmp_path / "pytorch_model.bin.4"))
    caplog.set_level("INFO")
    loaded = build_model(args)
    assert loaded.clip.logit_scale.item() == torch.tensor(np.log(100.0), dtype=torch.float32).item()
    assert dsl_temperature(loaded, args) == pytest.approx(100.0, rel=1e-6)  # not CLIP's initial 1/0.07
    assert "clip.logit_scale set to ln 100" in caplog.text
    for key, value in source.state_dict().items():
        if key != "clip.logit_scale":
            assert torch.equal(loaded.state_dict()[key], value), key

"""Issue 13's speed work, checked on CPU: every change computes what the old path computed.

* uint8 frames from the workers, normalised on the device, equal the worker-normalised float32 frames
  (exactly without augmentation, within half a grey level with it), padding included;
* LMDB JPEG frames packed by the workers and decoded at the batch's device equal worker decoding;
* fused AdamW, torch.compile (dynamic batch) and the backend switches leave the loss unchanged;
* persistent DataLoader workers still see every epoch's captions.
"""
import argparse
import copy

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from dataloaders.video import VideoClipLoader
from dataloaders.video.handover import finish_on_device
from dataloaders.video.transforms import CLIP_STD, PIXELS_KEY, _resize, resize_through_float
from engine.distributed import DistEnv
from engine.evaluate import to_device
from main_task_retrieval import get_args

GREY = 1 / 255 / min(CLIP_STD)  # one grey level in normalised units (the largest, blue's std is smallest)
CPU = DistEnv(device=torch.device("cpu"))
CUDA = DistEnv(device=torch.device("cuda"))  # only its .device.type is read: nothing runs on a GPU


def collate(loader, calls):
    """A batch as the engine's DataLoader makes it: one item per call, with the loader's batch fields."""
    items = []
    for path, seed in calls:
        video, mask = loader(path, rng=np.random.default_rng(seed))
        items.append({"video": video, "video_mask": mask, **loader.batch_fields()})
    return default_collate(items)


@pytest.fixture
def clips(make_video):
    # Real H.264 files: 24 and 6 frames of 72x96, so 8-frame uniform clips of the second are padded.
    return make_video("long.mp4", num_frames=24, fps=8, size=(72, 96), seed=3), \
        make_video("short.mp4", num_frames=6, fps=8, size=(72, 96), seed=4)


@pytest.mark.parametrize("augment", [False, True])
def test_uint8_handover_normalised_on_the_device_equals_the_float_path(clips, augment):
    options = dict(max_frames=8, image_size=48, mode="uniform", train_augment=augment, backend="pyav")
    old = VideoClipLoader(**options)
    new = VideoClipLoader(**options, output="uint8")
    calls = [(clips[0], 0), (clips[1], 1), (clips[0], 2)]
    expected = collate(old, calls)
    handed = collate(new, calls)
    assert PIXELS_KEY not in expected and handed[PIXELS_KEY] == ["uint8/clip"] * 3
    assert handed["video"].dtype == torch.uint8 and expected["video"].dtype == torch.float32
    got = to_device(handed, torch.device("cpu"))
    assert PIXELS_KEY not in got and got["video"].dtype == torch.float32
    assert torch.equal(got["video_mask"], expected["video_mask"])
    assert expected["video_mask"][1].tolist() == [1] * 6 + [0] * 2
    assert torch.count_nonzero(got["video"][1, 6:]) == 0  # padded frames stay exactly 0
    diff = (got["video"] - expected["video"]).abs().max().item()
    if augment:  # jittered values are rounded to uint8 in the worker: at most half a grey level
        assert 0 < diff <= 0.5 * GREY + 1e-6
    else:  # resize and crop happen on uint8 in both paths: the same numbers
        assert diff == 0


def test_views_and_imagenet_statistics_on_the_device(clips):
    options = dict(max_frames=4, image_size=32, mode="stride", stride=2, normalize="imagenet", test_views=(2, 2))
    expected = collate(VideoClipLoader(**options), [(clips[1], 0)])
    handed = collate(VideoClipLoader(**options, output="uint8"), [(clips[1], 0)])
    assert handed[PIXELS_KEY] == ["uint8/imagenet"] and handed["video"].shape == (1, 4, 4, 3, 32, 32)
    assert torch.equal(to_device(handed, "cpu")["video"], expected["video"])


def test_batches_without_the_field_are_left_as_they_are():
    batch = {"video": torch.rand(2, 3, 3, 4, 4), "video_mask": torch.ones(2, 3, dtype=torch.long)}
    assert torch.equal(to_device(dict(batch), "cpu")["video"], batch["video"])
    with pytest.raises(ValueError, match="mixes frame formats"):
        finish_on_device({**batch, PIXELS_KEY: ["uint8/clip", "uint8/imagenet"]}, "cpu")


def test_resize_through_float_is_within_one_grey_level_of_the_uint8_kernel(clips):
    from dataloaders.video import open_reader

    with open_reader(clips[0], "pyav") as reader:
        frames = torch.from_numpy(reader.get([0, 5, 11])).permute(0, 3, 1, 2)
    for size in ((48, 64), (100, 133)):  # down and up
        kernel, through_float = _resize(frames, *size), resize_through_float(frames, *size)
        assert kernel.dtype == through_float.dtype == torch.uint8
        assert (kernel.int() - through_float.int()).abs().max() <= 1


# ----------------------------------------------------------------------------------------------------
# LMDB JPEG frames decoded at the batch's device


@pytest.fixture
def frame_lmdb(tmp_path):
    from preprocess import frames_to_lmdb
    from preprocess.synthetic import gradient_frames, write_video

    write_video(tmp_path / "videos" / "a.mp4", gradient_frames(30, 72, 96, seed=1), 10)
    write_video(tmp_path / "videos" / "b.mp4", gradient_frames(12, 96, 72, seed=2), 10)  # portrait, shorter
    assert frames_to_lmdb.main(["--input_root", str(tmp_path / "videos"), "--lmdb_path", str(tmp_path / "db"),
                                "--fps", "2", "--size", "64", "--workers", "1"]) == 0
    return tmp_path / "db"


@pytest.mark.parametrize("augment", [False, True])
def test_jpeg_frames_decoded_per_batch_equal_worker_decoding(frame_lmdb, augment):
    options = dict(max_frames=6, image_size=48, mode="uniform", backend="lmdb", lmdb_path=frame_lmdb,
                   train_augment=augment)
    workers = VideoClipLoader(**options)
    packed = VideoClipLoader(**options, jpeg_decode="device")
    assert packed.packed and not workers.packed
    calls = [("a.mp4", 0), ("b.mp4", 1)]
    expected = collate(workers, calls)
    handed = collate(packed, calls)
    assert handed[PIXELS_KEY] == ["jpeg/clip"] * 2 and all(isinstance(v, bytes) for v in handed["video"])
    got = to_device(handed, torch.device("cpu"))  # torchvision's decoder on the CPU: the fallback device
    assert got["video"].shape == expected["video"].shape == (2, 6, 3, 48, 48)
    assert torch.equal(got["video_mask"], expected["video_mask"]) and expected["video_mask"][1].sum() == 3
    assert (got["video"] - expected["video"]).abs().max().item() <= GREY + 1e-6
    assert torch.count_nonzero(got["video"][1, 3:]) == 0


def test_jpeg_decode_device_falls_back_to_the_workers_without_cuda(frame_lmdb, caplog):
    args = get_args(["--video_backend", "lmdb", "--lmdb_path", str(frame_lmdb), "--jpeg_decode", "device"])
    with caplog.at_level("INFO", logger="univtr"):
        loader = VideoClipLoader.from_args(args, train=True, device_side=True)
    assert not loader.packed and loader.output == "uint8"
    assert "decoding in the DataLoader workers instead" in caplog.text
    # Outside the engine (tools that call the model themselves) the loader keeps normalised float32.
    assert VideoClipLoader.from_args(args, train=False).batch_fields() == {}


def test_packed_clips_round_trip():
    from dataloaders.video.jpeg_device import pack, unpack
    from dataloaders.video.transforms import ClipPlan

    plan = ClipPlan((3, 4, 50, 60), (32, 32), (0, 0), 32, True, (1.1, 0.9, 1.05))
    files, back = unpack(pack([b"\xff\xd8one", b"\xff\xd8second"], plan))
    assert back == plan and [bytes(f.numpy()) for f in files] == [b"\xff\xd8one", b"\xff\xd8second"]
    with pytest.raises(ValueError, match="not a packed clip"):
        unpack(b"junk" * 4)


# ----------------------------------------------------------------------------------------------------
# The step: fused AdamW, torch.compile, backend switches


def tiny_model(*flags):
    from engine.optim import add_optim_args
    from engine.perf import add_perf_args
    from modules.factory import add_model_args, build_model

    parser = add_perf_args(add_optim_args(add_model_args(argparse.ArgumentParser())))
    args = parser.parse_args(["--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1",
                              *flags])
    args.max_frames = 4

    torch.manual_seed(0)
    return build_model(args), args


def step_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 400, (3, 16), generator=g)
    ids[:, 0] = 49406
    return {"text_ids": ids, "text_mask": torch.ones(3, 16, dtype=torch.long),
            "video": torch.randn(3, 4, 3, 32, 32, generator=g),
            "video_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])}


def losses_over_steps(model, args, steps=3):
    from engine.optim import build_optimizer
    from engine.trainer import step_losses

    optimizer, scheduler = build_optimizer(model, args, 10)
    torch.manual_seed(1)  # heads that draw (T2VLP's negatives, dropout) draw the same in both runs
    out = []
    for _ in range(steps):
        loss = step_losses(model, step_batch(), CPU)["loss"]
        loss.backward()
        optimizer.step()
        scheduler.step()  # as the engine: the warm-up's first step is at lr 0
        optimizer.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out, optimizer


def test_fused_adamw_gives_the_same_losses_and_cpu_keeps_the_default(monkeypatch):
    import engine.optim as optim

    model, args = tiny_model()
    twin = copy.deepcopy(model)
    plain, optimizer = losses_over_steps(model, args)
    assert optim.adamw_implementation(optimizer.param_groups, args) == {}  # CPU parameters: torch's default
    assert not optimizer.defaults.get("fused")
    monkeypatch.setattr(optim, "adamw_implementation", lambda groups, args: {"fused": True})  # what CUDA gets
    fused, fused_optimizer = losses_over_steps(twin, args)
    assert fused_optimizer.defaults["fused"] is True
    assert plain[-1] != plain[0]  # the steps changed the weights
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-5)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_default_on_cuda_only_and_flags():
    from engine.perf import wants_compile

    flags = lambda *argv: get_args(list(argv))  # noqa: E731
    assert not wants_compile(flags(), CPU) and wants_compile(flags("--compile"), CPU)
    assert wants_compile(flags(), CUDA) and not wants_compile(flags("--no_compile"), CUDA)
    with pytest.raises(ValueError, match="contradict"):
        wants_compile(flags("--compile", "--no_compile"), CPU)


def test_evaluation_compiles_once_for_every_batch_size():
    from engine.perf import compile_towers

    model, _ = tiny_model()
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    assert compile_towers(model, backend=counting_backend) == ["visual", "text"]

    def encode(batch, train):
        model.train(train)
        video, ids = torch.randn(batch, 4, 3, 32, 32), torch.randint(1, 400, (batch, 16))
        with torch.set_grad_enabled(train):
            model.encode_video(video, torch.ones(batch, 4, dtype=torch.long))
            model.encode_text(ids, torch.ones(batch, 16, dtype=torch.long))

    encode(3, True)
    trained = len(graphs)
    encode(6, False)
    evaluated = len(graphs)
    for batch in (6, 5, 2):  # full evaluation batches, then the last, smaller one
        encode(batch, False)
    encode(7, True)  # the next training step, another micro-batch size
    assert trained == 2 and evaluated == 4  # one graph per tower for training, one per tower for evaluation
    assert len(graphs) == evaluated


@pytest.mark.parametrize("flags", [(), ("--method", "t2vlp", "--t2vlp_stage", "retrieval")], ids=["meanP", "t2vlp"])
def test_compiled_towers_give_the_same_losses(flags):
    """Compiled by default on CUDA, so every head must trace: T2VLP passes hooks (joint frames, token taps)."""
    from engine.perf import compile_towers

    model, args = tiny_model(*flags)
    twin = copy.deepcopy(model)
    compile_towers(twin, backend="aot_eager")  # Dynamo and AOTAutograd's graphs, without Inductor's C++ build
    np.testing.assert_allclose(losses_over_steps(twin, args, 2)[0], losses_over_steps(model, args, 2)[0],
                               rtol=0, atol=1e-5)


def test_backend_switches_touch_nothing_on_cpu_and_set_tf32_on_cuda():
    from engine.perf import configure_backends

    state = lambda: (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,  # noqa: E731
                     torch.backends.cudnn.benchmark)
    before = state()
    configure_backends(get_args([]), CPU)
    assert state() == before
    try:  # the switches themselves need no GPU to be set
        configure_backends(get_args([]), CUDA)
        assert state() == ("high", True, True)
        configure_backends(get_args(["--no_tf32"]), CUDA)
        assert state()[:2] == ("highest", False)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before[1:]


# ----------------------------------------------------------------------------------------------------
# DataLoader options and persistent workers


def test_loader_options_from_flags():
    from engine.perf import loader_options
    from engine.preemption import ignore_stop_signals

    assert loader_options(get_args([]), CPU, 0) == {"pin_memory": False}
    assert loader_options(get_args([]), CUDA, 4) == {"pin_memory": True, "persistent_workers": True,
                                                     "prefetch_factor": 2, "worker_init_fn": ignore_stop_signals}
    args = get_args(["--pin_memory", "off", "--no_persistent_workers", "--prefetch_factor", "6"])
    assert loader_options(args, CUDA, 4) == {"pin_memory": False, "persistent_workers": False, "prefetch_factor": 6,
                                             "worker_init_fn": ignore_stop_signals}
    assert loader_options(get_args([]), CPU, 2, persistent=False)["persistent_workers"] is False


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")  # CPU-only here
def test_evaluation_loaders_follow_pin_memory():
    from engine.evaluate import eval_loader, shard_loader

    items = list(range(5))
    assert eval_loader(items, get_args([]), "cuda").pin_memory is True
    assert eval_loader(items, get_args([]), "cpu").pin_memory is False
    assert eval_loader(items, get_args(["--pin_memory", "off"]), "cuda").pin_memory is False
    shard = shard_loader(items, get_args(["--pin_memory", "on", "--batch_size_val", "2"]), CPU)
    assert shard.pin_memory is True and [b.tolist() for b in shard] == [[0, 1], [2, 3], [4]]


class IndexLoader:
    def __call__(self, path, start=None, end=None, rng=None):
        return torch.zeros(1, 1, 1, 1), torch.ones(1, dtype=torch.long)


def caption_order(workers: int, persistent: bool) -> list[list[int]]:
    from dataloaders.base import RetrievalDataset, VideoRecord
    from engine.train_data import MapTrainData

    records = [VideoRecord(f"v{i}", f"/videos/v{i}.mp4", [f"{i} {k}" for k in range(5)]) for i in range(8)]
    dataset = RetrievalDataset(records, split="train", video_loader=IndexLoader(), expand_captions=False, seed=3,
                               tokenizer=lambda texts, max_words: (torch.zeros(len(texts), 4, dtype=torch.long),) * 2)
    flags = ["--batch_size", "4", "--num_thread_reader", str(workers), *([] if persistent else ["--no_persistent_workers"])]
    data = MapTrainData(dataset, get_args(flags), CPU)
    assert data.loader.persistent_workers == (persistent and workers > 0)
    order = []
    for epoch in range(3):
        batches, steps = data.epoch(epoch, 0)
        order.append([int(i) for _ in range(steps) for i in next(batches)["caption_index"]])
    return order


def test_persistent_workers_see_each_epochs_captions():
    in_process = caption_order(0, False)
    assert in_process[0] != in_process[1]  # one random caption per video, drawn anew each epoch
    assert caption_order(1, True) == in_process


def test_speed_flags_parse_and_come_from_a_config(tmp_path):
    config = tmp_path / "speed.yaml"
    config.write_text("persistent_workers: false\npin_memory: 'on'\nprefetch_factor: 4\nno_compile: true\n"
                      "loader_frames: float32\njpeg_decode: device\n")
    args = get_args(["--config", str(config)])
    assert (args.persistent_workers, args.pin_memory, args.prefetch_factor, args.no_compile) == (False, "on", 4, True)
    assert (args.loader_frames, args.jpeg_decode) == ("float32", "device")
    defaults = get_args([])
    assert (defaults.persistent_workers, defaults.pin_memory, defaults.loader_frames, defaults.compile) == (
        True, "auto", "uint8", False)

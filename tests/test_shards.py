"""Tar shards: make_shards writes exactly a dataset's records, ShardDataset reads them back with the
same items, splits shards over ranks and workers, survives broken samples and resumes at shard level."""
import json
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dataloaders import DataError, build_dataset
from dataloaders.shards import ShardDataset, ShardProgress
from dataloaders.video import VideoBytes, VideoClipLoader, VideoDecodeError
from dataloaders.video.backends import backend_available
from main_task_retrieval import get_args
from modules.clip import tokenize
from preprocess.make_shards import main as make_shards_main
from preprocess.make_toy_dataset import encode_mp4, make_toy_dataset
from preprocess.synthetic import gradient_frames

NUM_TRAIN, NUM_TEST = 8, 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=NUM_TRAIN, num_test=NUM_TEST,
                            workers=1, progress=False)


def data_flags(toy: Path) -> list[str]:
    return ["--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos")]


def write_shards(toy: Path, out: Path, *extra: str) -> int:
    return make_shards_main([*data_flags(toy), "--out", str(out), "--workers", "1", *extra])


@pytest.fixture(scope="module")
def train_shards(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_shards")
    assert write_shards(toy, out, "--samples_per_shard", "3") == 0
    return out


@pytest.fixture
def loader():
    return VideoClipLoader(max_frames=4, image_size=32, mode="uniform", backend="pyav")


def contents(folder: Path) -> dict[str, tuple[str, dict, bytes]]:
    """{key: (shard name, json, video bytes)} read with the standard library, not the reader under test."""
    found = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            key, ext = name.split(".", 1)
            if ext != "json":
                assert key not in found, f"{key} written twice"
                found[key] = (shard.name, json.loads(members[key + ".json"]), data)
    return found


def pattern(folder: Path) -> str:
    return str(folder / f"{{000000..{len(list(folder.glob('*.tar'))) - 1:06d}}}.tar")


def flat(token_ids: torch.Tensor) -> tuple:
    return tuple(token_ids.tolist())


# --------------------------------------------------------------------------------------------------
# in-memory decoding


@pytest.mark.parametrize("backend", ["pyav", "decord", "cv2"])
def test_every_backend_decodes_video_bytes_like_the_file(backend, tmp_path):
    if not backend_available(backend):
        pytest.skip(f"{backend} not installed")
    path = encode_mp4(tmp_path / "clip.mp4", gradient_frames(20, 64, 96, seed=1), 10)
    loader = VideoClipLoader(max_frames=5, image_size=32, mode="uniform", backend=backend)
    from_file, from_bytes = loader(path), loader(VideoBytes(path.read_bytes(), "000001.tar/clip.mp4"))
    assert torch.equal(from_file[0], from_bytes[0]) and torch.equal(from_file[1], from_bytes[1])
    for data in (b"", b"not a video" * 50):
        with pytest.raises(VideoDecodeError, match=r"^000001\.tar/clip\.mp4: "):
            loader(VideoBytes(data, "000001.tar/clip.mp4"))


# --------------------------------------------------------------------------------------------------
# round trip


def test_shards_hold_exactly_the_dataset_and_decode_like_the_files(toy, train_shards, tmp_path, loader):
    for split, out in (("train", train_shards), ("test", tmp_path / "test_shards")):
        if split == "test":
            assert write_shards(toy, out, "--split", "test", "--samples_per_shard", "3") == 0
        dataset = build_dataset(get_args([*data_flags(toy), "--output_dir", str(tmp_path)]), split)
        stored = contents(out)
        assert sorted((m["video_id"], tuple(m["captions"]), m["start"], m["end"]) for _, m, _ in stored.values()) == \
            sorted((r.video_id, tuple(r.captions), r.start, r.end) for r in dataset.records)
        by_id = {r.video_id: r for r in dataset.records}
        for _, meta, video in stored.values():
            assert video == Path(by_id[meta["video_id"]].video_path).read_bytes()
        index = json.loads((out / "shards.json").read_text())
        assert index["total"] == len(dataset.records) == sum(s["samples"] for s in index["shards"])
        assert Counter(name for name, _, _ in stored.values()) == {s["name"]: s["samples"] for s in index["shards"]}

        items = list(ShardDataset(pattern(out), loader, seed=5, shuffle_buffer=4))
        assert sorted(item["sample_key"] for item in items) == sorted(stored)  # every video once per epoch
        pairs = Counter()
        for item in items:
            record = by_id[stored[item["sample_key"]][1]["video_id"]]
            video, mask = loader(record.video_path)
            assert torch.equal(item["video"], video) and torch.equal(item["video_mask"], mask)
            assert item["video"].dtype == torch.float32 and item["video_mask"].dtype == torch.int64
            assert item["text_ids"].dtype == torch.int64 and item["text_mask"].dtype == torch.int64
            assert set(item) == {"text_ids", "text_mask", "video", "video_mask", "sample_key", "shard_index"}
            pairs[record.video_id, flat(item["text_ids"])] += 1
        if split == "test":  # one caption per video: the (video, caption) multiset is the dataset's
            expected = Counter((r.video_id, flat(tokenize(r.captions, max_words=32)[0][0])) for r in dataset.records)
            assert pairs == expected
        else:  # several captions: each item has one of its video's
            for (video_id, ids), _ in pairs.items():
                assert ids in {flat(row) for row in tokenize(by_id[video_id].captions, max_words=32)[0]}


def test_windows_and_other_containers_are_kept(toy, tmp_path, loader):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(toy / "videos" / "video1.mp4", videos / "video1.mp4")
    shutil.copy(toy / "videos" / "video2.mp4", videos / "clip.mov")  # decoders go by content, not name
    rows = [{"video_path": "video1.mp4", "caption": "the whole clip"},
            {"video_path": "video1.mp4", "caption": "its middle", "start": 0.5, "end": 1.5},
            {"video_path": "clip.mov", "caption": ["one", "two"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "shards"
    assert make_shards_main(["--datatype", "jsonl", "--data_path", str(tmp_path), "--features_path", str(videos),
                             "--out", str(out), "--workers", "1"]) == 0
    stored = contents(out)
    with tarfile.open(out / "000000.tar") as tar:
        assert sorted(tar.getnames()) == ["clip_mov.json", "clip_mov.mov", "video1_mp4.json", "video1_mp4.mp4",
                                          "video1_mp4_0_5-1_5.json", "video1_mp4_0_5-1_5.mp4"]
    assert stored["video1_mp4_0_5-1_5"][1] == {"video_id": "video1.mp4@0.5-1.5", "captions": ["its middle"],
                                               "start": 0.5, "end": 1.5}
    assert stored["clip_mov"][1]["captions"] == ["one", "two"] and stored["clip_mov"][1]["start"] is None
    items = {item["sample_key"]: item for item in ShardDataset(pattern(out), loader)}
    assert torch.equal(items["video1_mp4_0_5-1_5"]["video"], loader(videos / "video1.mp4", start=0.5, end=1.5)[0])
    assert torch.equal(items["video1_mp4"]["video"], loader(videos / "video1.mp4")[0])
    assert torch.equal(items["clip_mov"]["video"], loader(videos / "clip.mov")[0])


def test_caption_draw_depends_on_seed_epoch_and_key_only(train_shards, loader):
    def captions(epoch, **kwargs):
        dataset = ShardDataset(pattern(train_shards), loader, seed=5, **kwargs)
        dataset.set_epoch(epoch)
        return {item["sample_key"]: flat(item["text_ids"]) for item in dataset}

    assert captions(0, shuffle_buffer=1) == captions(0, shuffle_buffer=100)
    assert captions(0, shuffle_buffer=1) != captions(1, shuffle_buffer=1)


# --------------------------------------------------------------------------------------------------
# ranks and workers


def test_two_ranks_two_workers_read_disjoint_shards_covering_the_set(toy, tmp_path, loader):
    out = tmp_path / "shards"
    assert write_shards(toy, out, "--samples_per_shard", "1") == 0
    stored = contents(out)
    seen_shards, seen_keys = [], []
    for rank in range(2):
        dataset = ShardDataset(pattern(out), loader, seed=1, rank=rank, world_size=2, num_workers=2)
        dataset.set_epoch(3)
        plan = dataset.assignment()
        per_worker = plan[rank]
        assert len(per_worker) == 2 and all(per_worker)
        seen_shards += [shard for shards in per_worker for shard in shards]
        batches = list(DataLoader(dataset, batch_size=1, num_workers=2))
        got = [(batch["sample_key"][0], int(batch["shard_index"][0])) for batch in batches]
        assert sorted(s for _, s in got) == sorted(sum(per_worker, []))
        for key, shard in got:
            assert stored[key][0] == Path(dataset.shard_paths[shard]).name
        seen_keys += [key for key, _ in got]
    assert sorted(seen_shards) == list(range(NUM_TRAIN))  # disjoint, and together the whole set
    assert sorted(seen_keys) == sorted(stored)
    other = ShardDataset(pattern(out), loader, seed=1, world_size=2, num_workers=2)
    other.set_epoch(4)
    assert other.assignment() != plan  # the shard order changes with the epoch


def test_every_rank_makes_the_same_number_of_whole_batches(train_shards, loader):
    # shards of 3, 3 and 2 samples over two ranks: one rank has 5 or 6 samples, the other 2 or 3
    counts = []
    for rank in range(2):
        dataset = ShardDataset(pattern(train_shards), loader, seed=0, rank=rank, world_size=2, micro_batch=2)
        steps = dataset.steps_per_epoch()
        batches = list(DataLoader(dataset, batch_size=2))
        assert all(len(batch["sample_key"]) == 2 for batch in batches)
        counts.append((steps, len(batches)))
    assert counts[0] == counts[1] == (1, 1)
    with pytest.raises(DataError, match="num_workers"):
        list(ShardDataset(pattern(train_shards), loader, num_workers=2))  # built for 2 workers, run in-process


# --------------------------------------------------------------------------------------------------
# broken samples


def test_broken_samples_are_logged_and_skipped(train_shards, tmp_path, loader, caplog):
    from webdataset import TarWriter

    good = {key: (meta, video) for key, (_, meta, video) in contents(train_shards).items()}
    keys = sorted(good)
    out = tmp_path / "broken"
    out.mkdir()
    with TarWriter(str(out / "000000.tar"), encoder=False) as tar:
        for key in keys[:2]:
            tar.write({"__key__": key, "json": json.dumps(good[key][0]).encode(), "mp4": good[key][1]})
        tar.write({"__key__": "badvideo", "json": json.dumps(good[keys[0]][0]).encode(), "mp4": b"\x00garbage" * 64})
        tar.write({"__key__": "badjson", "json": b"{not json", "mp4": good[keys[1]][1]})
    with TarWriter(str(out / "000001.tar"), encoder=False) as tar:
        for key in keys[2:5]:
            tar.write({"__key__": key, "json": json.dumps(good[key][0]).encode(), "mp4": good[key][1]})
    with tarfile.open(out / "000001.tar") as tar:
        last = tar.getmembers()[-2].offset  # the last sample's json
    whole = (out / "000001.tar").read_bytes()
    (out / "000001.tar").write_bytes(whole[:last + 600])  # the last sample is cut off
    with TarWriter(str(out / "000002.tar"), encoder=False) as tar:  # nothing readable in it
        tar.write({"__key__": "alone", "json": json.dumps(good[keys[0]][0]).encode(), "mp4": b"\x00" * 64})
    (out / "shards.json").write_text(json.dumps({"format_version": 1, "paragraph": False, "shards": [
        {"name": "000000.tar", "samples": 4}, {"name": "000001.tar", "samples": 3},
        {"name": "000002.tar", "samples": 1}]}))

    dataset = ShardDataset(pattern(out), loader, seed=0, shuffle_buffer=8)
    with caplog.at_level(logging.WARNING, logger="dataloaders.shards"):
        items = list(dataset)
    shard_of = Counter(item["shard_index"] for item in items)
    assert shard_of == {0: 4, 1: 3}  # every slot filled, each from its own shard
    assert {item["sample_key"] for item in items} <= set(keys[:5])
    assert all(item["video_mask"].sum() > 0 and item["video"].std() > 0 for item in items)
    assert dataset.broken_samples == 4
    log = caplog.text
    assert "000000.tar, sample badvideo: cannot decode the video" in log
    assert "000000.tar, sample badjson: bad sample" in log
    assert "000001.tar, sample #3..#3: the shard is damaged" in log
    assert "000002.tar, sample alone: cannot decode the video" in log
    assert "000002.tar: 1 slots of broken samples stay empty" in log

    # with a micro batch the rank still makes its 8 // 2 steps: the empty slot repeats a good sample
    batched = ShardDataset(pattern(out), loader, seed=0, shuffle_buffer=8, micro_batch=2)
    assert batched.steps_per_epoch() == 4 and len(list(batched)) == 8


# --------------------------------------------------------------------------------------------------
# make_shards


def copy_toy(toy: Path, folder: Path) -> Path:
    shutil.copytree(toy, folder)
    return folder


def test_make_shards_lists_unreadable_videos_and_never_writes_them(toy, tmp_path, capsys):
    data = copy_toy(toy, tmp_path / "toy")
    broken = data / "videos" / "video3.mp4"
    broken.write_bytes(b"\x00" * 1000)
    (data / "videos" / "video5.mp4").write_bytes(b"")
    out = tmp_path / "shards"
    assert write_shards(data, out, "--samples_per_shard", "3") == 1
    listed = dict(line.split("\t") for line in (out / "unreadable_videos.txt").read_text().splitlines())
    assert set(listed) == {str(broken), str(data / "videos" / "video5.mp4")} and all(listed.values())
    assert "empty" in listed[str(data / "videos" / "video5.mp4")]
    stored = contents(out)
    assert sorted(meta["video_id"] for _, meta, _ in stored.values()) == sorted(
        f"video{i}" for i in range(NUM_TRAIN) if i not in (3, 5))
    assert json.loads((out / "shards.json").read_text())["total"] == NUM_TRAIN - 2
    assert "2 of 8 videos left out" in capsys.readouterr().out


def test_make_shards_resumes_and_refuses_other_settings(toy, tmp_path, capsys):
    out = tmp_path / "shards"
    assert write_shards(toy, out, "--samples_per_shard", "3") == 0
    shards = sorted(out.glob("*.tar"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    probes = (out / "probed_videos.tsv").read_text()
    shards[-1].unlink()
    (out / "000001.tar.part").write_bytes(b"half a shard")
    capsys.readouterr()

    assert write_shards(toy, out, "--samples_per_shard", "3") == 0
    assert "1 shards written, 2 already complete" in capsys.readouterr().out
    assert not list(out.glob("*.part"))
    assert (out / "probed_videos.tsv").read_text() == probes  # nothing probed again
    for p in shards[:-1]:
        assert p.stat().st_mtime_ns == before[p.name][0]  # finished shards are not rewritten
    assert {p.name: p.read_bytes() for p in shards} == {name: data for name, (_, data) in before.items()}

    assert write_shards(toy, out, "--samples_per_shard", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "samples_per_shard 3 there, 2 now" in err
    assert sorted(out.glob("*.tar")) == shards


# --------------------------------------------------------------------------------------------------
# resume


def test_resume_skips_exactly_the_completed_shards(toy, tmp_path, loader):
    out = tmp_path / "shards"
    assert write_shards(toy, out, "--samples_per_shard", "2") == 0
    key_shard = {key: int(name[:6]) for key, (name, _, _) in contents(out).items()}
    dataset = ShardDataset(pattern(out), loader, seed=3, shuffle_buffer=2)
    dataset.set_epoch(1)
    progress = dataset.progress()
    consumed = []
    for batch in DataLoader(dataset, batch_size=2):
        progress.update(batch["shard_index"])
        consumed += batch["sample_key"]
        if len(consumed) == 4:
            break
    state = json.loads(json.dumps(progress.state_dict()))  # as a checkpoint keeps it
    done = progress.done
    partial = {key_shard[k] for k in consumed} - done
    assert done and partial, "the test needs both completed and partially consumed shards"

    resumed = ShardProgress(dataset.shard_sizes)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and resumed.done == done
    again = ShardDataset(pattern(out), loader, seed=3, shuffle_buffer=2)
    again.set_epoch(resumed.epoch, skip_shards=resumed.done)
    rest = [item["sample_key"] for item in again]
    assert sorted(rest) == sorted(k for k, shard in key_shard.items() if shard not in done)
    for key in rest:
        resumed.update(key_shard[key])
    assert resumed.done == set(range(len(dataset.shard_paths)))  # after the resumed epoch: everything

    ranks = [ShardProgress([2, 2]), ShardProgress([2, 2])]
    ranks[0].update([0]), ranks[1].update([0, 1, 1])
    assert ShardProgress.merged(r.state_dict() for r in ranks).done == {0, 1}

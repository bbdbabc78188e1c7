"""The toy dataset generator: determinism, MSR-VTT format through the real loader, real decodable
videos whose pixels match their captions, and exact time-reversal pairs."""
import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataloaders import build_dataset
from main_task_retrieval import get_args
from preprocess.make_toy_dataset import COLOURS, DIRECTION_WORDS, OPPOSITE, SHAPES, main, make_toy_dataset

NUM_TRAIN, NUM_TEST, FRAMES, SIZE = 12, 8, 24, 64
ANNOTATIONS = ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json", "temporal_pairs.json",
               "README.txt")
# Longest wording first so "to the left" wins over "left" and "upward" over "up".
PHRASES = sorted(((w, d) for d, words in DIRECTION_WORDS.items() for w in words), key=lambda p: -len(p[0]))
PHRASE_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w, _ in PHRASES) + r")\b")
OBJECT_RE = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def generate(folder: Path, seed: int) -> Path:
    return make_toy_dataset(folder, seed=seed, num_train=NUM_TRAIN, num_test=NUM_TEST, workers=2, progress=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("toy") / "seed0", 0)


def decode(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    cap.release()
    return np.stack(frames).astype(np.int16)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def parse(caption: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(caption with objects and direction phrases blanked, objects in text order, directions in text order)."""
    objects = OBJECT_RE.findall(caption)
    directions = [dict(PHRASES)[w] for w in PHRASE_RE.findall(caption)]
    skeleton = PHRASE_RE.sub("<dir>", OBJECT_RE.sub("<obj>", caption))
    return skeleton, objects, directions


def test_same_seed_same_bytes_and_frames_other_seed_differs(toy, tmp_path):
    again = generate(tmp_path / "again", 0)
    other = generate(tmp_path / "other", 1)
    for name in ANNOTATIONS:
        assert (toy / name).read_bytes() == (again / name).read_bytes(), name
    assert (toy / "MSRVTT_data.json").read_bytes() != (other / "MSRVTT_data.json").read_bytes()
    for i in range(NUM_TRAIN + NUM_TEST):
        np.testing.assert_array_equal(decode(toy / f"videos/video{i}.mp4"), decode(again / f"videos/video{i}.mp4"))
    assert not np.array_equal(decode(toy / "videos/video0.mp4"), decode(other / "videos/video0.mp4"))


def test_real_msrvtt_loader_reads_it(toy, tmp_path):
    args = get_args(["--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
                     "--output_dir", str(tmp_path / "out"), "--expand_msrvtt_sentences", "--image_resolution", "32",
                     "--max_frames", "8", "--sample_mode", "uniform", "--eval_sample_mode", "uniform"])
    train, test = build_dataset(args, "train"), build_dataset(args, "test")
    assert (train.num_videos, train.num_captions, test.num_videos, test.num_captions) == (
        NUM_TRAIN, NUM_TRAIN * 10, NUM_TEST, NUM_TEST)
    assert not train.missing_videos and not test.missing_videos
    item = test[0]
    assert tuple(item["video"].shape) == (8, 3, 32, 32) and int(item["video_mask"].sum()) == 8


def test_files_follow_msrvtt_layout(toy):
    train_ids = [r["video_id"] for r in read_csv(toy / "MSRVTT_train.9k.csv")]
    rows = read_csv(toy / "MSRVTT_JSFUSION_test.csv")
    assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
    test_ids = [r["video_id"] for r in rows]
    assert train_ids == [f"video{i}" for i in range(NUM_TRAIN)]
    assert test_ids == [f"video{i}" for i in range(NUM_TRAIN, NUM_TRAIN + NUM_TEST)]
    data = json.loads((toy / "MSRVTT_data.json").read_text())
    assert set(data) == {"info", "videos", "sentences"}
    assert [v["video_id"] for v in data["videos"]] == train_ids + test_ids
    assert [v["split"] for v in data["videos"]] == ["train"] * NUM_TRAIN + ["test"] * NUM_TEST
    assert [s["sen_id"] for s in data["sentences"]] == list(range(len(data["sentences"])))
    captions = {}
    for s in data["sentences"]:
        captions.setdefault(s["video_id"], []).append(s["caption"])
    assert all(len(c) == len(set(c)) == 10 for c in captions.values())
    # The test csv's caption is one of the video's json captions, as in CLIP4Clip's files.
    assert all(r["sentence"] in captions[r["video_id"]] for r in rows)


def test_videos_decode_to_the_expected_frames_and_size(toy):
    for i in range(NUM_TRAIN + NUM_TEST):
        path = toy / f"videos/video{i}.mp4"
        cap = cv2.VideoCapture(str(path))
        fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        assert fps == pytest.approx(10)
        assert decode(path).shape == (FRAMES, SIZE, SIZE, 3), path


def observed_events(frames: np.ndarray, count: int) -> list[tuple[str, str]]:
    """(colour, direction) of each of ``count`` equal time windows, measured on decoded pixels: the shape
    is where a channel is bright (the background is dark), its colour the nearest palette entry to the
    mean, its direction the larger displacement of its centroid from the window's first to last frame."""
    out = []
    palette = {name: np.array(rgb) for name, rgb in COLOURS.items()}
    for k in range(count):
        window = frames[k * len(frames) // count:(k + 1) * len(frames) // count]
        masks = window.max(axis=-1) > 150
        assert all(m.sum() > 20 for m in masks), "a frame without a visible shape"
        (y0, x0), (y1, x1) = (np.argwhere(masks[0]).mean(0), np.argwhere(masks[-1]).mean(0))
        dx, dy = x1 - x0, y1 - y0
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert max(abs(dx), abs(dy)) > 5, "the shape barely moved"
        mean = window[masks].mean(axis=0)
        out.append((min(palette, key=lambda c: np.abs(palette[c] - mean).sum()), direction))
    return out


def test_pixels_and_captions_match_the_ground_truth(toy):
    data = json.loads((toy / "MSRVTT_data.json").read_text())
    captions = {}
    for s in data["sentences"]:
        captions.setdefault(s["video_id"], []).append(s["caption"])
    counts = set()
    for video in data["videos"]:
        events = video["events"]
        counts.add(len(events))
        frames = decode(toy / "videos" / f"{video['video_id']}.mp4")
        assert observed_events(frames, len(events)) == [(e["colour"], e["direction"]) for e in events]
        for text in captions[video["video_id"]]:
            _, objects, directions = parse(text)
            assert sorted(objects) == sorted((e["colour"], e["shape"]) for e in events), text
            assert sorted(directions) == sorted(e["direction"] for e in events), text
    assert counts == {1, 2}


def test_test_captions_unique_and_each_names_one_video(toy):
    rows = read_csv(toy / "MSRVTT_JSFUSION_test.csv")
    sentences = [r["sentence"] for r in rows]
    assert len(set(sentences)) == len(sentences)
    events = {v["video_id"]: v["events"] for v in json.loads((toy / "MSRVTT_data.json").read_text())["videos"]}
    combos = [tuple(tuple(e.values()) for e in events[r["video_id"]]) for r in rows]
    assert len(set(combos)) == len(combos)


def test_temporal_pairs_are_exact_reversals_with_opposite_captions(toy):
    pairs = json.loads((toy / "temporal_pairs.json").read_text())
    rows = {r["video_id"]: r["sentence"] for r in read_csv(toy / "MSRVTT_JSFUSION_test.csv")}
    assert len(pairs["pairs"]) == NUM_TEST // 4
    assert {p["kind"] for p in pairs["pairs"]} == {"direction", "order"}
    assert pairs["video_ids"] == [v for p in pairs["pairs"] for v in p["video_ids"]]
    assert len(set(pairs["video_ids"])) == len(pairs["video_ids"])
    for pair in pairs["pairs"]:
        a, b = pair["video_ids"]
        assert pair["captions"] == [rows[a], rows[b]]
        fa, fb = decode(toy / f"videos/{a}.mp4"), decode(toy / f"videos/{b}.mp4")
        # Same frames backwards, up to H.264 noise; forwards they are far apart (the shape is elsewhere).
        assert np.abs(fa - fb[::-1]).mean() < 1.5
        assert np.abs(fa - fb).mean() > 4 * np.abs(fa - fb[::-1]).mean() + 1
        skeleton_a, objects_a, dirs_a = parse(rows[a])
        skeleton_b, objects_b, dirs_b = parse(rows[b])
        # Only direction and order words change: same sentence frame, objects in reverse order,
        # each object's direction flipped.
        assert skeleton_a == skeleton_b
        assert objects_b == objects_a[::-1]
        assert dirs_b == [OPPOSITE[d] for d in dirs_a[::-1]]
        assert len(objects_a) == (1 if pair["kind"] == "direction" else 2)
        if pair["kind"] == "direction":
            words_a, words_b = rows[a].split(), rows[b].split()
            assert len(words_a) == len(words_b) and words_a != words_b


def test_resume_keeps_videos_rewrites_missing_and_refuses_other_parameters(tmp_path):
    out = tmp_path / "toy"
    main(["--output_dir", str(out), "--num_train", "3", "--num_test", "4", "--fps", "5", "--seconds", "1.6",
          "--size", "32", "--workers", "1"])
    kept, removed = out / "videos/video0.mp4", out / "videos/video1.mp4"
    before = decode(removed)
    assert before.shape == (8, 32, 32, 3)
    stamp = kept.stat().st_mtime_ns
    removed.unlink()
    (out / "videos/video2.mp4.part.mp4").write_bytes(b"half a file")
    (out / "MSRVTT_data.json").unlink()
    make_toy_dataset(out, num_train=3, num_test=4, fps=5, seconds=1.6, size=32, workers=1, progress=False)
    assert kept.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(decode(removed), before)
    assert not (out / "videos/video2.mp4.part.mp4").exists()
    assert (out / "MSRVTT_data.json").is_file()
    with pytest.raises(FileExistsError, match=r"made with other settings \(seed 0 there, 1 now\)"):
        make_toy_dataset(out, seed=1, num_train=3, num_test=4, fps=5, seconds=1.6, size=32, progress=False)


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_toy_dataset(tmp_path, size=63)  # yuv420p needs even sides
    with pytest.raises(ValueError, match="frames"):
        make_toy_dataset(tmp_path, fps=2, seconds=1)

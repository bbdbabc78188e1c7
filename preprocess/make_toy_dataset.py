"""The built-in demo dataset: real mp4 clips of moving coloured shapes, captioned, in MSR-VTT's format.

    python -m preprocess.make_toy_dataset --output_dir data/toy [--seed 0] [--num_train 600] [--num_test 100]

Every clip holds one event ("a red circle moves left") or two in sequence ("a red circle moves right,
then a blue square moves up"). Half of the test videos come in time-reversal pairs: the second clip's
frames are the first clip's frames in reverse order, so its caption has the opposite direction(s) and,
for two events, the opposite order. Only temporal modelling separates them; ``temporal_pairs.json``
lists them. ``qa/`` holds questions about each clip's colours, shapes and directions in T2VLP's MSRVTT-QA
layout (main_task_qa.py --datatype msrvtt_qa). Everything is a function of ``--seed``: annotation files are byte-identical and frames
identical between runs. See docs/toy_dataset.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from preprocess.settings import SettingsMismatch, record_settings, write_text_atomically
from preprocess.synthetic import write_video

FORMAT_VERSION = 1
COLOURS = {  # far apart in RGB, all bright against the dark background
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 240),
    "yellow": (235, 215, 40), "purple": (155, 60, 215), "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), image y grows down

# Direction wordings aligned by index across directions, so that a reversed pair's captions, written with
# the same choices, differ only in these words (and in event order).
DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftward"), "right": ("right", "to the right", "rightward"),
    "up": ("up", "upward", "to the top"), "down": ("down", "downward", "to the bottom"),
}
VERBS = (("moves", "moving"), ("slides", "sliding"), ("travels", "travelling"), ("goes", "going"),
         ("drifts", "drifting"), ("glides", "gliding"))
ONE_EVENT = (
    "a {a} {va}", "the {a} {va}", "{A} {va} across the screen", "there is {A} that {va}",
    "{A} is {ga}", "{a} {ga}", "we see {A} {ga}", "{A} {va} on a dark background",
)
TWO_EVENTS = (
    "{A} {va}, then {B} {vb}", "first {A} {va}, then {B} {vb}", "{A} {va} and afterwards {B} {vb}",
    "{B} {vb} after {A} {va}", "{A} {ga} is followed by {B} {gb}", "before {B} {vb}, {A} {va}",
)
CAPTIONS_PER_VIDEO = 10
TWO_EVENT_FRACTION = 0.4


@dataclass(frozen=True)
class Event:
    colour: str
    shape: str
    direction: str
    # Geometry in units of the frame side: path from (x0, y0) to (x1, y1) of the shape's centre, radius.
    x0: float
    y0: float
    x1: float
    y1: float
    radius: float

    @property
    def label(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.direction


@dataclass(frozen=True)
class Clip:
    """What one video shows. ``events`` play in order, each in an equal share of the frames; with
    ``reversed_`` the rendered frames are played backwards (see :meth:`shown_events`)."""

    video_id: str
    split: str
    events: tuple[Event, ...]
    background: tuple[int, int, int]
    texture_seed: int
    reversed_: bool = False

    def shown_events(self) -> tuple[Event, ...]:
        """The events as a viewer sees them: reversed playback reverses their order and directions."""
        if not self.reversed_:
            return self.events
        return tuple(Event(e.colour, e.shape, OPPOSITE[e.direction], e.x1, e.y1, e.x0, e.y0, e.radius)
                     for e in reversed(self.events))


# ------------------------------------------------------------------------------------------------ captions

@dataclass(frozen=True)
class Wording:
    template: int
    verbs: tuple[int, ...]  # one per event
    direction_word: tuple[int, ...]


def caption(events: tuple[Event, ...], wording: Wording) -> str:
    fields = {}
    for slot, event, verb, word in zip("ab", events, wording.verbs, wording.direction_word):
        direction = DIRECTION_WORDS[event.direction][word]
        third, gerund = VERBS[verb]
        fields[slot] = f"{event.colour} {event.shape}"
        fields[slot.upper()] = f"a {event.colour} {event.shape}"
        fields[f"v{slot}"] = f"{third} {direction}"
        fields[f"g{slot}"] = f"{gerund} {direction}"
    templates = ONE_EVENT if len(events) == 1 else TWO_EVENTS
    return templates[wording.template].format(**fields)


def random_wording(rng: np.random.Generator, num_events: int) -> Wording:
    templates = ONE_EVENT if num_events == 1 else TWO_EVENTS
    return Wording(int(rng.integers(len(templates))),
                   tuple(int(v) for v in rng.integers(len(VERBS), size=num_events)),
                   tuple(int(w) for w in rng.integers(3, size=num_events)))


def captions_for(clip: Clip, rng: np.random.Generator, count: int, first: Wording | None = None) -> list[str]:
    """``count`` distinct paraphrases of the clip, ``first``'s wording first when given."""
    events = clip.shown_events()
    out = [caption(events, first)] if first is not None else []
    for _ in range(count * 50):  # many more wordings exist than are asked for
        if len(out) == count:
            break
        text = caption(events, random_wording(rng, len(events)))
        if text not in out:
            out.append(text)
    return out


# ------------------------------------------------------------------------------------------------ sampling

def random_event(rng: np.random.Generator, label: tuple[str, str, str]) -> Event:
    colour, shape, direction = label
    radius = float(rng.uniform(0.13, 0.19))
    lo, hi = radius + 0.02, 1 - radius - 0.02
    # Start in the first quarter of the travel and stop in the last: the shape crosses the frame.
    start, stop = lo + (hi - lo) * rng.uniform(0, 0.25), lo + (hi - lo) * rng.uniform(0.75, 1)
    across = float(rng.uniform(lo, hi))
    dx, dy = STEP[direction]
    if dx:
        (x0, x1), y0 = ((start, stop) if dx > 0 else (stop, start)), across
        y1 = y0
    else:
        (y0, y1), x0 = ((start, stop) if dy > 0 else (stop, start)), across
        x1 = x0
    return Event(colour, shape, direction, float(x0), float(y0), float(x1), float(y1), radius)


def random_label(rng: np.random.Generator) -> tuple[str, str, str]:
    return (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), str(rng.choice(DIRECTIONS)))


def random_labels(rng: np.random.Generator, two: bool) -> tuple[tuple[str, str, str], ...]:
    first = random_label(rng)
    if not two:
        return (first,)
    while True:  # two different objects, so "then" always names a new one
        second = random_label(rng)
        if second[:2] != first[:2]:
            return first, second


def random_clip(rng: np.random.Generator, video_id: str, split: str, labels) -> Clip:
    tint = rng.integers(-8, 9, size=3)
    grey = int(rng.integers(25, 70))
    background = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
    return Clip(video_id, split, tuple(random_event(rng, label) for label in labels), background,
                int(rng.integers(2**31)))


def reverse_labels(labels) -> tuple:
    return tuple((c, s, OPPOSITE[d]) for c, s, d in reversed(labels))


def plan(seed: int, num_train: int, num_test: int) -> tuple[list[Clip], list[Clip], list[tuple[Clip, Clip]]]:
    """The clips of both splits and the test's time-reversal pairs; ids video0.. train, then test.

    Test clips show pairwise different event sequences, so every test caption has one correct video.
    Half of the test videos are reversal pairs, half of those pairs two-event ("A then B" / "B' then A'").
    """
    rng = np.random.default_rng([seed, FORMAT_VERSION])
    train = [random_clip(rng, f"video{i}", "train", random_labels(rng, rng.random() < TWO_EVENT_FRACTION))
             for i in range(num_train)]
    test: list[Clip] = []
    pairs: list[tuple[Clip, Clip]] = []
    taken: set[tuple] = set()
    num_pairs = num_test // 4
    next_id = iter(f"video{i}" for i in range(num_train, num_train + num_test))
    attempts = 0
    while len(test) < num_test:
        attempts += 1
        if attempts > 200 * num_test + 1000:
            raise ValueError(f"cannot draw {num_test} test clips with distinct captions from "
                             f"{len(COLOURS)} colours x {len(SHAPES)} shapes x {len(DIRECTIONS)} directions")
        in_pair = len(pairs) < num_pairs
        two = (len(pairs) % 2 == 1) if in_pair else bool(rng.random() < TWO_EVENT_FRACTION)
        labels = random_labels(rng, two)
        keys = [labels, reverse_labels(labels)] if in_pair else [labels]
        if any(k in taken for k in keys) or (in_pair and keys[0] == keys[1]):
            continue
        taken.update(keys)
        clip = random_clip(rng, next(next_id), "test", labels)
        test.append(clip)
        if in_pair:
            mirror = Clip(next(next_id), "test", clip.events, clip.background, clip.texture_seed, reversed_=True)
            test.append(mirror)
            pairs.append((clip, mirror))
    return train, test, pairs


# ------------------------------------------------------------------------------------------------ pixels

SUPERSAMPLE = 2  # anti-aliased edges: masks are drawn at 2x and averaged


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Coverage of ``shape`` centred at (cx, cy) with half-size r at sample points (x, y)."""
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        side = r * 0.85  # same visual area as the circle, roughly
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":  # pointing up
        top, bottom = cy - 1.1 * r, cy + 0.8 * r
        half_width = (y - top) / (bottom - top) * r * 1.25
        return (y >= top) & (y <= bottom) & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm = r * 0.33
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def background_frame(clip: Clip, size: int) -> np.ndarray:
    """The clip's static backdrop: a dark tint plus faint smooth blotches (not a flat colour, so
    the model cannot rely on a uniform field)."""
    rng = np.random.default_rng(clip.texture_seed)
    coarse = rng.normal(0, 6, size=(5, 5, 3)).astype(np.float32)
    # Bilinear upsampling as two matrix products: weights[i, k] = hat function of knot k at pixel i.
    at = np.linspace(0, 4, size, dtype=np.float32)
    weights = np.maximum(0, 1 - np.abs(at[:, None] - np.arange(5, dtype=np.float32)))
    smooth = np.einsum("yk,klc,xl->yxc", weights, coarse, weights)
    return np.asarray(clip.background, dtype=np.float32) + smooth


def render(clip: Clip, size: int, num_frames: int) -> np.ndarray:
    """(T, size, size, 3) uint8 frames. Event k owns frames [k*T/n, (k+1)*T/n) and moves linearly."""
    base = background_frame(clip, size)
    grid = (np.arange(size * SUPERSAMPLE, dtype=np.float32) + 0.5) / (size * SUPERSAMPLE)
    x, y = np.meshgrid(grid, grid)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    n = len(clip.events)
    bounds = [round(k * num_frames / n) for k in range(n + 1)]
    for k, event in enumerate(clip.events):
        first, last = bounds[k], bounds[k + 1]
        colour = np.asarray(COLOURS[event.colour], dtype=np.float32)
        for t in range(first, last):
            f = (t - first) / max(1, last - first - 1)
            cx, cy = event.x0 + f * (event.x1 - event.x0), event.y0 + f * (event.y1 - event.y0)
            mask = shape_mask(event.shape, x, y, cx, cy, event.radius).astype(np.float32)
            cover = mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
            frames[t] = np.clip(base * (1 - cover) + colour * cover + 0.5, 0, 255).astype(np.uint8)
    return frames[::-1].copy() if clip.reversed_ else frames


def encode_mp4(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) as an H.264 (yuv420p) mp4 in this process with PyAV, with
    the settings of ``preprocess.synthetic.write_video`` (ultrafast, crf 18, GOP 12) but without
    starting an ``ffmpeg`` per video (about 10x faster on these tiny clips). Falls back to that
    function when PyAV is missing. Written under a temporary name and renamed: a file present is whole.
    """
    try:
        import av
    except ImportError:
        return write_video(path, frames, fps)
    rate = Fraction(fps).limit_denominator(1001)
    tmp = path.with_name(path.name + ".part.mp4")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            # One encoder thread: the clips are encoded in parallel by processes already.
            stream.options = {"preset": "ultrafast", "crf": "18", "g": "12", "threads": "1"}
            for index, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode())  # flush
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def _write(job) -> str:
    clip, path, size, num_frames, fps = job
    encode_mp4(path, render(clip, size, num_frames), fps)
    return clip.video_id


# ------------------------------------------------------------------------------------------------ files

def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def annotation_texts(train: list[Clip], test: list[Clip], pairs, seed: int, seconds: float,
                     params: dict) -> tuple[dict[str, str], dict[str, str]]:
    """{file name: content} for the annotation files and {test video id: its test caption}."""
    rng = np.random.default_rng([seed, FORMAT_VERSION, 1])
    # Pair members share one wording so their test captions differ only in direction/order words.
    shared = {}
    for a, b in pairs:
        shared[a.video_id] = shared[b.video_id] = random_wording(rng, len(a.events))
    sentences, videos, test_caption = [], [], {}
    for number, clip in enumerate(train + test):
        first = shared.get(clip.video_id) or (random_wording(rng, len(clip.events)) if clip.split == "test" else None)
        texts = captions_for(clip, rng, CAPTIONS_PER_VIDEO, first)
        if clip.split == "test":
            test_caption[clip.video_id] = texts[0]
        # "events" is ours (MSR-VTT readers ignore it): the ground truth in playing order, for analysis.
        videos.append({"id": number, "video_id": clip.video_id, "category": len(clip.events) - 1,
                       "url": f"toy://{clip.video_id}", "start time": 0.0, "end time": seconds, "split": clip.split,
                       "events": [dict(zip(("colour", "shape", "direction"), e.label)) for e in clip.shown_events()]})
        sentences.extend({"sen_id": len(sentences), "video_id": clip.video_id, "caption": t} for t in texts)
    data = {"info": {"description": "UniVTR toy dataset: moving coloured shapes (preprocess/make_toy_dataset.py)",
                     "contributor": "UniVTR", "version": str(FORMAT_VERSION), "generator": params},
            "videos": videos, "sentences": sentences}
    pair_rows = [{"kind": "direction" if len(a.events) == 1 else "order",
                  "video_ids": [a.video_id, b.video_id],
                  "captions": [test_caption[a.video_id], test_caption[b.video_id]]} for a, b in pairs]
    temporal = {"description": "test videos whose second member is the first one's frames in reverse order; "
                               "the captions differ only in direction and event-order words",
                "video_ids": [v for row in pair_rows for v in row["video_ids"]], "pairs": pair_rows}
    files = {
        "MSRVTT_train.9k.csv": _csv_text(["video_id"], [[c.video_id] for c in train]),
        "MSRVTT_JSFUSION_test.csv": _csv_text(
            ["key", "vid_key", "video_id", "sentence"],
            [[f"ret{i}", f"msr{c.video_id[5:]}", c.video_id, test_caption[c.video_id]] for i, c in enumerate(test)]),
        "MSRVTT_data.json": json.dumps(data, indent=1) + "\n",
        "temporal_pairs.json": json.dumps(temporal, indent=1) + "\n",
    }
    return files, test_caption


# Questions about what a clip shows (T2VLP's MSRVTT-QA layout in qa/), about each event: the asked attribute
# named by the other two; a question another event of the clip would answer too is not asked.
QA_TEMPLATES = {
    "colour": ("what colour is the {shape} moving {way}?", "which colour does the {shape} going {way} have?"),
    "shape": ("what shape is the {colour} object moving {way}?", "which shape moves {way} in {colour}?"),
    "direction": ("which way does the {colour} {shape} move?", "in which direction is the {colour} {shape} going?"),
}
QA_VAL_FRACTION = 0.1  # the last tenth of the training videos: the QA validation split


def qa_questions(clip: Clip, rng: np.random.Generator) -> list[dict]:
    events = clip.shown_events()
    out = []
    for event in events:
        attributes = {"colour": event.colour, "shape": event.shape, "direction": event.direction}
        for asked, templates in QA_TEMPLATES.items():
            named = {k: v for k, v in attributes.items() if k != asked}
            if any(all(getattr(other, k) == v for k, v in named.items()) for other in events if other is not event):
                continue
            way = DIRECTION_WORDS[event.direction][int(rng.integers(3))]
            text = templates[int(rng.integers(len(templates)))].format(way=way, **attributes)
            out.append({"video_id": clip.video_id, "question": text, "answer": attributes[asked], "answer_type": asked})
    return out


def qa_texts(train: list[Clip], test: list[Clip], seed: int) -> dict[str, str]:
    """{file name under qa/: content}: train/val/test.jsonl and train_ans2label.json (answers of train)."""
    rng = np.random.default_rng([seed, FORMAT_VERSION, 2])
    held = max(1, int(len(train) * QA_VAL_FRACTION)) if len(train) > 1 else 0
    splits = {"train": train[:len(train) - held], "val": train[len(train) - held:], "test": test}
    rows = {name: [q for clip in clips for q in qa_questions(clip, rng)] for name, clips in splits.items()}
    for name, questions in rows.items():
        for number, question in enumerate(questions):
            question["question_id"] = f"{name}{number}"
    answers = sorted({q["answer"] for q in rows["train"]})
    files = {f"{name}.jsonl": "".join(json.dumps(q) + "\n" for q in questions) for name, questions in rows.items()}
    files["train_ans2label.json"] = json.dumps({a: i for i, a in enumerate(answers)}, indent=1) + "\n"
    return files


def readme_text(params: dict, train: list[Clip], test: list[Clip], pairs) -> str:
    two = sum(len(c.events) == 2 for c in train + test)
    return f"""UniVTR toy dataset (generated by preprocess/make_toy_dataset.py; see docs/toy_dataset.md)

{len(train)} training and {len(test)} test videos, {params['size']}x{params['size']} pixels, {params['num_frames']} frames at
{params['fps']} fps (H.264 mp4 in videos/). Each shows one or two coloured shapes ({', '.join(SHAPES)};
{', '.join(COLOURS)}) moving {', '.join(DIRECTIONS)} over a dark, faintly textured background;
{two} videos hold two events in sequence. Captions name colour, shape, direction and order.

MSR-VTT 1k-A layout, read with --datatype msrvtt --data_path <this folder> --features_path <this folder>/videos:
  MSRVTT_train.9k.csv       training video ids (header video_id)
  MSRVTT_JSFUSION_test.csv  one caption per test video (header key,vid_key,video_id,sentence)
  MSRVTT_data.json          {CAPTIONS_PER_VIDEO} captions for every video, split field train/test
  temporal_pairs.json       {len(pairs)} test pairs ({2 * len(pairs)} videos): a clip and its exact time reversal,
                            told apart only by temporal order
  toy_config.json           the generator's parameters (checked when the folder is reused)

Do not train with horizontal-flip augmentation (--train_augment): it swaps left and right.
Regenerate: python -m preprocess.make_toy_dataset --output_dir <folder> --seed {params['seed']} \\
  --num_train {params['num_train']} --num_test {params['num_test']} --size {params['size']} --fps {params['fps']} --seconds {params['seconds']}
"""


def make_toy_dataset(output_dir: str | os.PathLike, seed: int = 0, num_train: int = 600, num_test: int = 100,
                     size: int = 64, fps: float = 10, seconds: float = 2.4, workers: int | None = None,
                     progress: bool = True) -> Path:
    """Generate (or complete) the toy dataset in ``output_dir`` and return that folder.

    Videos already on disk are kept (they are written atomically, so any present file is whole); a
    folder made with other parameters is refused rather than silently mixed.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and at least 16, got {size}")
    num_frames = int(round(fps * seconds))
    if num_frames < 4:
        raise ValueError(f"fps x seconds gives {num_frames} frames; need at least 4")
    if num_train < 1 or num_test < 2:
        raise ValueError("need at least 1 training and 2 test videos")
    out = Path(output_dir)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    params = {"format_version": FORMAT_VERSION, "seed": seed, "num_train": num_train, "num_test": num_test,
              "size": size, "fps": fps, "seconds": seconds, "num_frames": num_frames}
    # First, so a resumed run is checked too; a folder made with other parameters raises SettingsMismatch.
    record_settings(out / "toy_config.json", params, out, "delete it or choose another --output_dir")

    train, test, pairs = plan(seed, num_train, num_test)
    for stale in videos_dir.glob("*.part.mp4"):  # left by a killed encoder
        stale.unlink()
    jobs = [(c, videos_dir / f"{c.video_id}.mp4", size, num_frames, fps) for c in train + test
            if not (videos_dir / f"{c.video_id}.mp4").is_file()]
    if jobs:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="toy videos", unit="video", disable=not progress)
        workers = workers or min(len(jobs), os.cpu_count() or 1)
        if workers > 1:
            with Pool(workers) as pool:
                for _ in pool.imap_unordered(_write, jobs, chunksize=4):
                    bar.update()
        else:
            for job in jobs:
                _write(job)
                bar.update()
        bar.close()

    files, _ = annotation_texts(train, test, pairs, seed, seconds, params)
    files["README.txt"] = readme_text(params, train, test, pairs)
    (out / "qa").mkdir(exist_ok=True)  # question answering (main_task_qa.py --datatype msrvtt_qa --data_path qa)
    files.update({f"qa/{name}": text for name, text in qa_texts(train, test, seed).items()})
    for name, text in files.items():  # last: their presence means the videos are all there
        write_text_atomically(out / name, text)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder for the annotation files and videos/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=600, help="training videos")
    parser.add_argument("--num_test", type=int, default=100, help="test videos (chance R@1 = 1 / this)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=2.4, help="clip length")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    parser.add_argument("--other_folder_hint", default="choose another --output_dir",
                        help="how the one-line error for a folder made with other parameters says to pick another "
                             "folder (scripts/demo.sh names its DATA_DIR)")
    args = parser.parse_args(argv)
    try:
        out = make_toy_dataset(args.output_dir, seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                               size=args.size, fps=args.fps, seconds=args.seconds, workers=args.workers)
    except SettingsMismatch as error:
        print(f"error: {error.where} was generated with other settings ({error.difference}); delete it or "
              f"{args.other_folder_hint}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"toy dataset ready in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

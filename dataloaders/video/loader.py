"""VideoClipLoader: path -> (normalised frames, mask), index-first, with per-file backend fallback.
For the training engine's DataLoaders it hands over uint8 frames (or, ``--jpeg_decode device``, the
stored JPEG files) instead, converted on the device by ``handover.finish_on_device``."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from .backends import VideoInfo, candidate_backends, check_file, codec_failure, open_reader
from .errors import EmptyWindowError, VideoDecodeError, VideoNotFoundError
from .jpeg_device import pack, resolve_jpeg_decode
from .sampling import MODES, PADDED_FRAMES, _window, padded_slot_sources, sample_indices
from .transforms import OUTPUTS, PIXELS_KEY, AugmentConfig, eval_plan, eval_transform, train_plan, train_transform


def with_reader(path, backends: list[str], use, threads: int = 1, lmdb_path=None):
    """Return ``use(reader)`` from the first backend in ``backends`` that can open and decode ``path``.
    A missing or empty file fails at once; otherwise every backend's reason is kept for the error.
    A single file backend that fails where another installed backend decodes the file raises
    UnsupportedCodecError, which names the codec and the backends that can."""
    if backends != ["lmdb"]:
        check_file(path)  # missing and 0-byte files get their precise reason, not one per backend
    reasons = []
    for name in backends:
        try:
            with open_reader(path, name, threads=threads, lmdb_path=lmdb_path) as reader:
                return use(reader)
        except (VideoNotFoundError, EmptyWindowError):
            raise  # another backend would not do better
        except VideoDecodeError as exc:
            if len(backends) == 1:
                unsupported = None if name == "lmdb" else codec_failure(path, name, exc, threads)
                if unsupported is None:
                    raise
                raise unsupported from exc
            reasons.append(exc.reason)
    raise VideoDecodeError(path, "no backend could read it: " + "; ".join(reasons))


def probe(path, backend: str = "auto", lmdb_path=None, threads: int = 1) -> VideoInfo:
    """Frame count, fps and size of a video (or, for the lmdb backend, of its stored frames)."""
    return with_reader(path, candidate_backends(backend, lmdb_path), lambda r: r.info(), threads, lmdb_path)


def probe_duration(path, backend: str = "auto", lmdb_path=None) -> float | None:
    """Seconds of a video as the loader sees it (frame count / fps from the container header, or from
    the LMDB's metadata; nothing is decoded), or None when it cannot be opened or has no frame rate."""
    try:
        return with_reader(path, candidate_backends(backend, lmdb_path),
                           lambda r: r.num_frames / r.fps if r.fps > 0 else None, lmdb_path=lmdb_path)
    except Exception:  # VideoDecodeError or a decoder crash: an unreadable video is not a window problem
        return None


class VideoClipLoader:
    """Loads one clip for a model: ``loader(path, start, end, rng) -> (video, video_mask)``.

    ``video`` is float32 (max_frames, 3, S, S), CLIP mean/std normalised; rows past the real frames
    are 0 and ``video_mask`` (max_frames,) int64 marks real frames with 1. Failures raise
    VideoDecodeError; a clip of zeros is never returned in place of a video.

    ``train_mode`` says whether the loader feeds training: it moves the ``stride`` window to a random
    position and lets ``train_augment`` apply. None means "training iff train_augment is set".

    ``padded_frames`` other than "masked" fills the slots of a short clip with its own frames (copies of
    the last one, DGL's loader; or each frame repeated in time order, HMMC's) under an all-ones mask, for
    parity with code whose models never read the mask (``sampling.padded_slot_sources``).

    ``output="uint8"`` returns the frames as uint8 0..255 (padding 0) for normalisation on the device;
    ``jpeg_decode="device"`` (lmdb backend, one view) returns the clip's stored JPEG files and its
    transform as one ``bytes`` object (``jpeg_device.pack``) for decoding on the device. Either way the
    dataset adds :meth:`batch_fields` to each item, which ``handover.finish_on_device`` reads.
    """

    def __init__(self, max_frames: int = 12, image_size: int = 224, mode: str = "clip4clip",
                 backend: str = "auto", feature_framerate: int = 1, slice_framepos: int = 2,
                 frame_order: int = 0, train_mode: bool | None = None, train_augment: bool = False,
                 lmdb_path=None, stride: int = 4, threads: int = 1,
                 augment: AugmentConfig = AugmentConfig(), normalize: str = "clip",
                 test_views: tuple[int, int] = (1, 1), output: str = "float32", jpeg_decode: str = "cpu",
                 padded_frames: str = "masked"):
        if mode not in MODES:
            raise ValueError(f"unknown sample mode {mode!r}; choose one of {', '.join(MODES)}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown frame output {output!r}; choose one of {', '.join(OUTPUTS)}")
        if padded_frames not in PADDED_FRAMES:
            raise ValueError(f"unknown --padded_frames {padded_frames!r}; choose one of {', '.join(PADDED_FRAMES)}")
        if jpeg_decode not in ("cpu", "device"):
            raise ValueError(f"unknown JPEG decoding {jpeg_decode!r}; choose cpu or device")
        if backend == "lmdb" and lmdb_path is None:
            raise ValueError("--video_backend lmdb needs --lmdb_path (build it with preprocess/frames_to_lmdb.py)")
        self.max_frames = int(max_frames)
        self.image_size = int(image_size)
        self.mode = mode
        self.backend = backend
        self.lmdb_path = lmdb_path
        self.backends = candidate_backends(backend, lmdb_path)  # fail at construction if not installed
        self.train_mode = bool(train_augment) if train_mode is None else bool(train_mode)
        self.train_augment = bool(train_augment) and self.train_mode
        self.augment = augment
        self.statistics = normalize  # "clip" or "imagenet" mean/std (--normalize)
        # Evaluation only: (temporal segments, spatial crops) per video; more than one view gives
        # (views, max_frames, 3, S, S) clips, which the heads that accept views average (SimVTP).
        self.test_views = (1, 1) if self.train_mode else tuple(int(v) for v in test_views)
        self.threads = int(threads)
        self.output = output
        self.padded_frames = padded_frames
        self.packed = jpeg_decode == "device" and self.backends == ["lmdb"] and self.test_views == (1, 1)
        self.sampling = dict(feature_framerate=int(feature_framerate), slice_framepos=int(slice_framepos),
                             frame_order=int(frame_order), stride=int(stride), train=self.train_mode)

    @classmethod
    def from_args(cls, args, train: bool, device_side: bool = False) -> "VideoClipLoader":
        """The training or evaluation loader described by the flags of ``add_video_args``.
        ``device_side``: its clips go through ``engine.evaluate.to_device`` (the engine's datasets), so
        ``--loader_frames`` and ``--jpeg_decode`` apply; otherwise it returns normalised float32."""
        get = lambda name, default: getattr(args, name, default)  # noqa: E731
        views = (get("test_num_segment", 1), get("test_num_crop", 1))
        lmdb = get("video_backend", "auto") == "lmdb" or (get("video_backend", "auto") == "auto"
                                                           and get("lmdb_path", None) is not None)
        jpeg = resolve_jpeg_decode(get("jpeg_decode", "cpu") if device_side else "cpu", get("device", "auto"), lmdb,
                                   (1, 1) if train else views)
        return cls(
            max_frames=get("max_frames", 12),
            image_size=get("image_resolution", 224),
            mode=get("sample_mode", "clip4clip") if train else get("eval_sample_mode", "clip4clip"),
            backend=get("video_backend", "auto"),
            feature_framerate=get("feature_framerate", 1),
            slice_framepos=get("slice_framepos", 2),
            frame_order=get("train_frame_order", 0) if train else get("eval_frame_order", 0),
            train_mode=bool(train),
            train_augment=bool(train and get("train_augment", False)),
            lmdb_path=get("lmdb_path", None),
            stride=get("frame_stride", 4),
            threads=get("decode_threads", 1),
            normalize=get("normalize", "clip"),
            test_views=views,
            output=get("loader_frames", "uint8") if device_side else "float32",
            jpeg_decode=jpeg,
            padded_frames=get("padded_frames", "masked"),
        )

    def batch_fields(self) -> dict:
        """Fields a dataset adds to each item beside ``video``: how the frames were handed over."""
        if self.packed:
            return {PIXELS_KEY: f"jpeg/{self.statistics}"}
        return {PIXELS_KEY: f"uint8/{self.statistics}"} if self.output == "uint8" else {}

    def indices(self, num_frames: int, fps: float, start=None, end=None, rng=None) -> list[int]:
        return sample_indices(num_frames, fps, self.max_frames, self.mode, start=start, end=end,
                              rng=rng, **self.sampling)

    def __call__(self, path, start=None, end=None, rng: np.random.Generator | None = None):
        if rng is None and (self.train_augment or self.mode == "rand" or self.sampling["frame_order"] == 2
                            or (self.mode == "stride" and self.train_mode)):
            rng = np.random.default_rng()

        def load(reader):
            idx = self.indices(reader.num_frames, reader.fps, start, end, rng)
            if not idx:
                raise EmptyWindowError(path, f"no frames in the window start={start} end={end} s of a "
                                             f"{reader.num_frames}-frame {reader.fps:g} fps video")
            if self.packed:  # the JPEG files as stored, decoded later on the device
                return reader.get_encoded(idx), reader.info()
            if self.test_views != (1, 1):
                windows = self._segments(idx, reader.num_frames, reader.fps, start, end)
                wanted = sorted({i for window in windows for i in window})
                decoded, position = reader.get(wanted), {f: k for k, f in enumerate(wanted)}
                return [decoded[[position[i] for i in window]] for window in windows]
            return reader.get(idx)

        frames = with_reader(path, self.backends, load, self.threads, self.lmdb_path)
        if self.packed:
            return self._packed(*frames, rng)
        if self.test_views != (1, 1):
            crops = self.test_views[1]
            views = [self._padded(eval_transform(window, self.image_size, self.statistics, k / max(1, crops - 1)
                                                 if crops > 1 else 0.5, self.output))
                     for window in frames for k in range(crops)]
            return torch.stack([v for v, _ in views]), torch.stack([m for _, m in views])
        if self.train_augment:
            clip = train_transform(frames, self.image_size, rng, self.augment, self.statistics, self.output)
        else:
            clip = eval_transform(frames, self.image_size, self.statistics, output=self.output)
        return self._padded(clip)

    def _packed(self, jpegs: list[bytes], info, rng):
        """The stored JPEG files and the clip's plan, drawn as the transforms draw it, as one bytes blob."""
        size = self.image_size
        plan = (train_plan(info.height, info.width, size, rng, self.augment) if self.train_augment
                else eval_plan(info.height, info.width, size))
        sources = padded_slot_sources(len(jpegs), self.max_frames, self.padded_frames)
        return pack([jpegs[i] for i in sources], plan), self._mask(len(sources))

    def _mask(self, count: int) -> torch.Tensor:
        mask = torch.zeros(self.max_frames, dtype=torch.long)
        mask[:count] = 1
        return mask

    def _padded(self, clip):
        if self.padded_frames != "masked":
            clip = clip[padded_slot_sources(len(clip), self.max_frames, self.padded_frames)]
        # Zeros only pad a short clip up to max_frames (mask 0 there); a failed decode raised above.
        video = torch.zeros(self.max_frames, 3, self.image_size, self.image_size, dtype=clip.dtype)
        video[:len(clip)] = clip
        return video, self._mask(len(clip))

    def _segments(self, idx: list[int], num_frames: int, fps: float, start, end) -> list[list[int]]:
        """The sampled pattern ``idx`` moved to ``test_num_segment`` evenly spaced places in the window
        (VideoMAE's test segments; a pattern that fills the window stays where it is)."""
        segments = self.test_views[0]
        if segments == 1:
            return [idx]
        lo, hi = _window(num_frames, fps, start, end)
        first, span = min(idx), max(idx) - min(idx)
        slack = max(0, hi - 1 - span - lo)
        return [[i - first + lo + int(k * slack / (segments - 1)) for i in idx] for k in range(segments)]

    def __repr__(self) -> str:
        return (f"VideoClipLoader(max_frames={self.max_frames}, image_size={self.image_size}, mode={self.mode!r}, "
                f"backend={self.backend!r}, train_mode={self.train_mode}, train_augment={self.train_augment}, "
                f"{', '.join(f'{k}={v}' for k, v in self.sampling.items() if k != 'train')})")


def add_video_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Video flags, with CLIP4Clip's names where CLIP4Clip has the option. A flag the parser already
    defines (for example --max_frames from a dataset's own argument group) is left as it is."""
    group = parser.add_argument_group("video decoding and frame sampling")
    existing = set(parser._option_string_actions)

    def add(flag, **kwargs):
        if flag not in existing:
            group.add_argument(flag, **kwargs)

    add("--video_backend", default="auto", choices=["auto", "decord", "cv2", "pyav", "torchcodec", "lmdb"],
        help="decoder; auto = fastest installed, falling back per file (lmdb: frames from --lmdb_path)")
    add("--max_frames", type=int, default=12, help="frames per clip (padded and masked when shorter)")
    add("--padded_frames", default="masked", choices=list(PADDED_FRAMES),
        help="slots of a clip shorter than --max_frames: masked = zeros under video mask 0, hidden from every "
             "attention, mean and top-k (default); for parity, a clip's own frames under an all-ones mask, "
             "read by the model as real ones: last_frame = copies of the last frame (DGL's loader), "
             "stretch = each frame repeated in time order (HMMC's frame pick); see docs/reproduce.md")
    add("--feature_framerate", type=int, default=1, help="clip4clip mode: frames taken per second")
    add("--slice_framepos", type=int, default=2, choices=[0, 1, 2],
        help="clip4clip mode, more than max_frames candidates: 0 head, 1 tail, 2 uniform")
    add("--train_frame_order", type=int, default=0, choices=[0, 1, 2], help="0 normal, 1 reverse, 2 shuffle")
    add("--eval_frame_order", type=int, default=0, choices=[0, 1, 2], help="0 normal, 1 reverse, 2 shuffle")
    add("--image_resolution", type=int, default=224, help="frame side after resize and crop")
    add("--sample_mode", default="clip4clip", choices=list(MODES), help="training frame sampling")
    add("--eval_sample_mode", default="clip4clip", choices=list(MODES), help="evaluation frame sampling")
    add("--frame_stride", type=int, default=4, help="stride mode: frames between samples")
    add("--train_augment", action="store_true",
        help="random resized crop, flip and colour jitter, the same for every frame of a clip")
    add("--lmdb_path", default=None, help="frame LMDB from preprocess/frames_to_lmdb.py")
    add("--decode_threads", type=int, default=1, help="decoder threads per DataLoader worker")
    add("--normalize", default="clip", choices=["clip", "imagenet"],
        help="pixel mean/std: CLIP's, or ImageNet's (VideoMAE / SimVTP)")
    add("--test_num_segment", type=int, default=1,
        help="evaluation views: temporal segments per video, averaged by the model (SimVTP: 3; heads that "
             "accept views only)")
    add("--test_num_crop", type=int, default=1, help="evaluation views: spatial crops along the long side (SimVTP: 3)")
    add("--loader_frames", default="uint8", choices=list(OUTPUTS),
        help="what DataLoader workers hand to the training/evaluation step: uint8 frames, converted and "
             "normalised on the device (a quarter of the bytes), or float32 frames normalised in the workers")
    add("--jpeg_decode", default="cpu", choices=["cpu", "device"],
        help="frame LMDB: decode its JPEG frames in the workers (cpu), or on the GPU a batch at a time "
             "(device: nvJPEG through torchvision; falls back to the workers without CUDA)")
    return parser

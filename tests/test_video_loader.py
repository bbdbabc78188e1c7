"""VideoClipLoader end to end: frames chosen, CLIP preprocessing, padding, augmentation, flags."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dataloaders.video import CLIP_MEAN, CLIP_STD, VideoClipLoader, add_video_args, sample_indices
from dataloaders.video.transforms import eval_transform, train_transform
from preprocess.synthetic import gradient_frames

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (T, 3, S, S) float -> (T, S, S, 3) uint8."""
    return ((video * STD + MEAN) * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def identify(decoded, originals):
    a = decoded.reshape(len(decoded), 1, -1).astype(np.int16)
    b = originals.reshape(1, len(originals), -1).astype(np.int16)
    return np.abs(a - b).mean(-1).argmin(1).tolist()


@pytest.fixture
def square_clip(make_video):
    """21 frames at 5 fps, 64x64: a 64 px loader neither resizes nor crops, and the bar moves 3 px a frame,
    so every frame stays identifiable."""
    return make_video("sq.mp4", num_frames=21, fps=5, size=(64, 64), seed=5), gradient_frames(21, 64, 64, seed=5)


@pytest.mark.parametrize("backend", ["auto", "decord", "cv2", "pyav"])
def test_clip4clip_frames_padding_and_mask(backend, square_clip):
    path, originals = square_clip
    loader = VideoClipLoader(max_frames=6, image_size=64, mode="clip4clip", backend=backend)
    video, mask = loader(path)
    assert video.shape == (6, 3, 64, 64) and video.dtype == torch.float32
    assert mask.dtype == torch.long and mask.tolist() == [1, 1, 1, 1, 1, 0]
    # 4.2 s at 5 fps: one frame per second, seconds 0..5 inclusive -> 0, 5, 10, 15, 20 (25 does not exist).
    assert identify(to_uint8(video[:5]), originals) == [0, 5, 10, 15, 20]
    # Padding rows are exactly zero; real rows are not.
    assert torch.count_nonzero(video[5]) == 0
    assert all(torch.count_nonzero(video[i]) > 0 for i in range(5))


def test_windows_and_uniform_mode(square_clip):
    path, originals = square_clip
    loader = VideoClipLoader(max_frames=12, image_size=64, mode="clip4clip")
    video, mask = loader(path, start=1, end=2)
    assert mask.sum() == 2 and identify(to_uint8(video[:2]), originals) == [5, 10]
    uniform = VideoClipLoader(max_frames=5, image_size=64, mode="uniform")
    video, mask = uniform(path)
    assert mask.sum() == 5 and identify(to_uint8(video), originals) == sample_indices(21, 5, 5, "uniform")


def test_rand_mode_reproducible_with_rng(square_clip):
    path, originals = square_clip
    loader = VideoClipLoader(max_frames=4, image_size=64, mode="rand")
    first, _ = loader(path, rng=np.random.default_rng(11))
    again, _ = loader(path, rng=np.random.default_rng(11))
    assert torch.equal(first, again)
    expected = sample_indices(21, 5, 4, "rand", rng=np.random.default_rng(11))
    assert identify(to_uint8(first), originals) == expected


def test_eval_transform_matches_clip_pil_pipeline():
    """Resize short side bicubic (PIL), centre crop, ToTensor, Normalize, as CLIP's preprocess does."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 90, 160, 3), dtype=np.uint8)
    # Smooth content, as in real video (pure noise would exaggerate the resamplers' rounding).
    frames = np.asarray(Image.fromarray(frames.reshape(180, 160, 3)).filter(ImageFilter.GaussianBlur(2)))
    frames = frames.reshape(2, 90, 160, 3)
    size = 56
    expected = []
    for frame in frames:
        image = Image.fromarray(frame)
        w, h = image.size
        image = image.resize((int(size * w / h), size), Image.BICUBIC)
        left, top = int(round((image.width - size) / 2)), int(round((image.height - size) / 2))
        image = image.crop((left, top, left + size, top + size))
        expected.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    expected = (torch.stack(expected) - MEAN) / STD
    got = eval_transform(frames, size)
    assert got.shape == expected.shape
    # One grey level of difference at most (1/255/std ~ 0.015).
    assert (got - expected).abs().max() < 0.02


def test_augmentation_is_shared_by_all_frames_of_a_clip():
    rng = np.random.default_rng(1)
    frame = np.asarray(Image.fromarray(rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)).resize((160, 96)))
    clip = np.stack([frame] * 4)
    outputs = []
    for seed in range(6):
        out = train_transform(clip, 64, np.random.default_rng(seed))
        assert out.shape == (4, 3, 64, 64)
        # Identical input frames stay identical: crop, flip and jitter were drawn once for the clip.
        assert all(torch.equal(out[0], out[i]) for i in range(1, 4))
        outputs.append(out[0])
    # And the augmentation is random from clip to clip.
    assert len({o.sum().item() for o in outputs}) == len(outputs)
    assert torch.equal(train_transform(clip, 64, np.random.default_rng(3)), outputs[3].expand(4, 3, 64, 64))


def test_augmentation_flip_and_crop_geometry():
    # A left-bright frame: after a flip (flip_p=1) and no crop/jitter, the bright half is on the right.
    from dataloaders.video import AugmentConfig
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, :32] = 200
    config = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip_p=1.0, brightness=0, contrast=0, saturation=0)
    out = to_uint8(train_transform(np.stack([frame, frame]), 64, np.random.default_rng(0), config))
    assert out[:, :, 40:, :].mean() > 190 and out[:, :, :24, :].mean() < 10


def test_loader_with_augmentation(square_clip):
    path, _ = square_clip
    loader = VideoClipLoader(max_frames=8, image_size=32, mode="uniform", train_augment=True)
    assert loader.train_mode and loader.train_augment
    a, mask = loader(path, rng=np.random.default_rng(5))
    b, _ = loader(path, rng=np.random.default_rng(5))
    c, _ = loader(path, rng=np.random.default_rng(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and mask.sum() == 8


def test_add_video_args_and_from_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_frames", type=int, default=64)  # a dataset group already defines it
    add_video_args(parser)
    args = parser.parse_args(["--sample_mode", "rand", "--train_augment", "--train_frame_order", "2",
                              "--video_backend", "cv2", "--image_resolution", "112"])
    train = VideoClipLoader.from_args(args, train=True)
    test = VideoClipLoader.from_args(args, train=False)
    assert (train.mode, train.train_augment, train.sampling["frame_order"]) == ("rand", True, 2)
    assert (test.mode, test.train_augment, test.sampling["frame_order"]) == ("clip4clip", False, 0)
    assert train.max_frames == 64 and train.image_size == 112 and train.backends == ["cv2"]
    defaults = add_video_args(argparse.ArgumentParser()).parse_args([])
    assert (defaults.max_frames, defaults.feature_framerate, defaults.slice_framepos, defaults.video_backend) == (
        12, 1, 2, "auto")


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="needs --lmdb_path"):
        VideoClipLoader(backend="lmdb")
    with pytest.raises(ValueError, match="unknown sample mode"):
        VideoClipLoader(mode="middle")
    with pytest.raises(ValueError, match="unknown video backend"):
        VideoClipLoader(backend="ffmpeg")

"""sample_indices: CLIP4Clip parity and the properties of the other modes."""
import itertools
import math

import numpy as np
import pytest

from dataloaders.video import sample_indices


def clip4clip_reference(frame_count, fps, max_frames, start=None, end=None, framerate=1, slice_pos=2):
    """CLIP4Clip's extractor loop and dataset slicing, restated plainly from CLIP4Clip's code:
    seek to each second, read ``framerate`` frames spaced int(fps)//framerate apart, stop at the first
    frame that does not exist, then cut to max_frames."""
    per_sec = int(fps)
    seconds = math.ceil(frame_count / per_sec)
    sec, last = 0, seconds
    if start is not None:
        sec, last = start, min(end, seconds)
    spacing = per_sec // framerate or 1
    offsets = list(range(0, per_sec, spacing))[:framerate]
    read, exhausted = [], False
    while sec < last + 1 and not exhausted:  # the loop runs over arange(start, end + 1)
        for off in offsets:
            frame = int(sec * per_sec) + off
            if frame >= frame_count:
                exhausted = True
                break
            read.append(frame)
        sec += 1
    if len(read) <= max_frames:
        return read
    if slice_pos == 0:
        return read[:max_frames]
    if slice_pos == 1:
        return read[len(read) - max_frames:]
    if max_frames == 1:
        return read[:1]
    # numpy's linspace: k * step in float64, last point exactly the end, truncated to int.
    step = (len(read) - 1) / (max_frames - 1)
    return [read[int(k * step)] for k in range(max_frames - 1)] + [read[-1]]


FPS = [23.976, 25, 29.97, 30, 60]
DURATIONS = [0.5, 1, 1.04, 2.9, 7, 12.3, 31, 47.7, 65]


@pytest.mark.parametrize("fps", FPS)
def test_clip4clip_matches_reference_whole_video(fps):
    checked = 0
    for duration, max_frames, slice_pos, rate in itertools.product(DURATIONS, [1, 12, 64], [0, 1, 2], [1, 2, 5]):
        for frame_count in {max(1, round(duration * fps) + d) for d in (-1, 0, 1)}:
            got = sample_indices(frame_count, fps, max_frames, "clip4clip", feature_framerate=rate,
                                 slice_framepos=slice_pos)
            want = clip4clip_reference(frame_count, fps, max_frames, framerate=rate, slice_pos=slice_pos)
            assert got == want, (frame_count, fps, max_frames, slice_pos, rate)
            checked += 1
    assert checked > 400


@pytest.mark.parametrize("fps", FPS)
def test_clip4clip_matches_reference_with_windows(fps):
    windows = [(0, 0), (0, 5), (2, 7), (3, 3), (1.5, 4), (3.5, 9.5), (10, 31), (20, 200), (60, 64)]
    for duration, (start, end), max_frames in itertools.product(DURATIONS, windows, [12, 64]):
        frame_count = max(1, round(duration * fps))
        got = sample_indices(frame_count, fps, max_frames, "clip4clip", start=start, end=end)
        want = clip4clip_reference(frame_count, fps, max_frames, start=start, end=end)
        assert got == want, (frame_count, fps, start, end, max_frames)


def test_clip4clip_known_values():
    # 29.97 fps truncates to 29: a 10 s clip (300 frames) gives one frame per second at k * 29,
    # seconds 0..10 inclusive (11 candidates, the last is frame 290), then linspace(0, 10, 4) = 0, 3, 6, 10.
    assert sample_indices(300, 29.97, 20, "clip4clip") == [k * 29 for k in range(11)]
    assert sample_indices(300, 29.97, 4, "clip4clip") == [0, 87, 174, 290]
    assert sample_indices(300, 29.97, 4, "clip4clip", slice_framepos=0) == [0, 29, 58, 87]
    assert sample_indices(300, 29.97, 4, "clip4clip", slice_framepos=1) == [203, 232, 261, 290]
    # Two frames per second at stride 15 of 30 fps.
    assert sample_indices(90, 30, 12, "clip4clip", feature_framerate=2) == [0, 15, 30, 45, 60, 75]
    # A window of whole seconds 2..4 inclusive; a fractional start keeps CLIP4Clip's half-second steps.
    assert sample_indices(300, 25, 12, "clip4clip", start=2, end=4) == [50, 75, 100]
    assert sample_indices(300, 25, 12, "clip4clip", start=1.5, end=3) == [37, 62, 87]


def test_frame_order_reverse_and_shuffle():
    normal = sample_indices(750, 25, 12, "clip4clip")
    assert sample_indices(750, 25, 12, "clip4clip", frame_order=1) == normal[::-1]
    shuffled = sample_indices(750, 25, 12, "clip4clip", frame_order=2, rng=np.random.default_rng(3))
    assert sorted(shuffled) == normal and shuffled != normal
    assert shuffled == sample_indices(750, 25, 12, "clip4clip", frame_order=2, rng=np.random.default_rng(3))


def _segments(n, m):
    k = min(n, m)
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


@pytest.mark.parametrize("n,m", [(1, 12), (5, 12), (12, 12), (13, 12), (100, 12), (901, 12), (1000, 64), (63, 64)])
def test_uniform_is_segment_centres(n, m):
    got = sample_indices(n, 30, m, "uniform")
    assert got == [(a + b - 1) // 2 for a, b in _segments(n, m)]
    assert len(got) == min(n, m) and got == sorted(set(got))


def test_uniform_known_values():
    # X-Pool's rule on 300 frames, 12 segments of 25: centres at 12, 37, ...
    assert sample_indices(300, 30, 12, "uniform") == [12 + 25 * k for k in range(12)]


@pytest.mark.parametrize("n,m", [(5, 12), (100, 12), (901, 12), (1000, 64)])
def test_rand_one_frame_per_segment_and_reproducible(n, m):
    draws = [sample_indices(n, 30, m, "rand", rng=np.random.default_rng(seed)) for seed in range(40)]
    for got in draws:
        assert len(got) == min(n, m)
        for idx, (a, b) in zip(got, _segments(n, m)):
            assert a <= idx < b
    assert draws[0] == sample_indices(n, 30, m, "rand", rng=np.random.default_rng(0))
    if n > m:
        assert len({tuple(d) for d in draws}) > 1
        # Over many draws every position of the first segment gets picked.
        a, b = _segments(n, m)[0]
        if b - a <= 10:
            assert {d[0] for d in draws} == set(range(a, b))


def test_stride_contiguous_centred_at_eval_random_in_training():
    got = sample_indices(300, 30, 16, "stride", stride=4)
    assert np.all(np.diff(got) == 4) and len(got) == 16
    span = 15 * 4 + 1
    assert got[0] == (300 - span) // 2
    starts = {sample_indices(300, 30, 16, "stride", stride=4, train=True, rng=np.random.default_rng(s))[0]
              for s in range(30)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 300 - span
    assert (sample_indices(300, 30, 16, "stride", train=True, rng=np.random.default_rng(9))
            == sample_indices(300, 30, 16, "stride", train=True, rng=np.random.default_rng(9)))


def test_stride_shrinks_for_short_videos():
    got = sample_indices(40, 30, 16, "stride", stride=4)  # 61 frames needed at stride 4
    assert len(got) == 16 and np.all(np.diff(got) == 2) and got[-1] < 40
    assert sample_indices(10, 30, 16, "stride") == list(range(10))


def test_head():
    assert sample_indices(300, 30, 12, "head") == list(range(12))
    assert sample_indices(5, 30, 12, "head") == list(range(5))
    assert sample_indices(300, 30, 12, "head", start=2, end=3) == list(range(60, 72))


@pytest.mark.parametrize("mode", ["uniform", "rand", "stride", "head"])
def test_windows_restrict_other_modes(mode):
    fps = 29.97
    for start, end in [(0, 1), (2, 7), (10.5, 11.2), (3, 3)]:
        got = sample_indices(900, fps, 12, mode, start=start, end=end, rng=np.random.default_rng(0))
        lo, hi = math.floor(start * fps), max(math.ceil(end * fps), math.floor(start * fps) + 1)
        assert got and all(lo <= i < hi for i in got), (start, end, got)


@pytest.mark.parametrize("mode", ["clip4clip", "uniform", "rand", "stride", "head"])
def test_empty_inputs_give_no_indices(mode):
    assert sample_indices(0, 25, 12, mode, rng=np.random.default_rng(0)) == []
    assert sample_indices(100, 25, 12, mode, start=10, end=12, rng=np.random.default_rng(0)) == []


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown sample mode"):
        sample_indices(100, 25, 12, "middle")
    with pytest.raises(ValueError, match="before its start"):
        sample_indices(100, 25, 12, "uniform", start=3, end=2)
    with pytest.raises(ValueError, match="frame_order"):
        sample_indices(100, 25, 12, "uniform", frame_order=3)

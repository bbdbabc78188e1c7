"""Bad videos raise a typed error with the path and a reason; no backend hands back zeros instead."""
import os
import pickle
import subprocess

import numpy as np
import pytest

from dataloaders.video import (
    EmptyVideoError, EmptyWindowError, VideoClipLoader, VideoDecodeError, VideoNotFoundError, probe)
from dataloaders.video import backends as backends_module
from preprocess.synthetic import ffmpeg_binary


@pytest.fixture
def bad_files(tmp_path, make_video):
    good = make_video("good.mp4", num_frames=40)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # moov atom at the end is lost
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    # Index at the front (faststart), so the file opens and only the later frames are gone.
    faststart = tmp_path / "faststart.mp4"
    subprocess.run([ffmpeg_binary(), "-y", "-loglevel", "error", "-i", str(good), "-c", "copy",
                    "-movflags", "+faststart", str(faststart)], check=True)
    cut = tmp_path / "cut_faststart.mp4"
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    return {"missing": tmp_path / "missing.mp4", "empty": empty, "truncated": truncated,
            "garbage": garbage, "cut_faststart": cut}


@pytest.mark.parametrize("backend", ["auto", "decord", "cv2", "pyav"])
@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "cut_faststart"])
def test_bad_video_raises_with_path_and_reason(bad_files, backend, kind):
    path = bad_files[kind]
    # uniform sampling reaches the end of the clip, where a cut file has no data.
    loader = VideoClipLoader(max_frames=8, image_size=32, mode="uniform", backend=backend)
    with pytest.raises(VideoDecodeError) as info:
        loader(path)
    err = info.value
    assert err.path == str(path) and err.reason
    assert str(err) == f"{path}: {err.reason}"
    if kind == "missing":
        assert isinstance(err, VideoNotFoundError) and "not found" in err.reason
    if kind == "empty":
        assert isinstance(err, EmptyVideoError) and "0 bytes" in err.reason


def test_probe_raises_for_unopenable_files(bad_files):
    for kind in ["missing", "empty", "truncated", "garbage"]:
        with pytest.raises(VideoDecodeError):
            probe(bad_files[kind])
    # probe reads headers only: a file cut after its index still opens (verify_videos decodes to find it).
    assert probe(bad_files["cut_faststart"]).num_frames == 40


def test_error_survives_pickling_for_dataloader_workers():
    err = pickle.loads(pickle.dumps(VideoNotFoundError("a/b.mp4", "file not found")))
    assert isinstance(err, VideoNotFoundError) and (err.path, err.reason) == ("a/b.mp4", "file not found")
    assert str(err) == "a/b.mp4: file not found"


def test_auto_falls_back_per_file(monkeypatch, make_video):
    """When the first backend cannot open a file, auto reads it with the next one."""
    class Broken(backends_module.Reader):
        name = "broken"

        def __init__(self, path, threads=1):
            super().__init__(path)
            raise self.fail("cannot open: simulated failure")

    monkeypatch.setattr(backends_module, "AUTO_ORDER", ("decord", "cv2"))
    monkeypatch.setitem(backends_module._READERS, "decord", Broken)
    loader = VideoClipLoader(max_frames=4, image_size=32, mode="uniform", backend="auto")
    video, mask = loader(make_video("fine.mp4", num_frames=20))
    assert mask.tolist() == [1, 1, 1, 1] and video.abs().sum() > 0
    # With only the broken backend named explicitly, its own error comes through.
    with pytest.raises(VideoDecodeError, match="simulated failure"):
        VideoClipLoader(max_frames=4, image_size=32, backend="decord")(make_video("fine2.mp4"))


def test_empty_window_is_an_error_not_an_empty_clip(make_video):
    path = make_video("short.mp4", num_frames=25, fps=25)
    with pytest.raises(EmptyWindowError, match="no frames in the window") as info:
        VideoClipLoader(mode="uniform", image_size=32)(path, start=5, end=8)
    assert "no backend" not in info.value.reason  # not retried with every backend


def test_unreadable_directory_entry(tmp_path):
    folder = tmp_path / "a_directory.mp4"
    folder.mkdir()
    with pytest.raises(VideoDecodeError) as info:
        VideoClipLoader(image_size=32)(folder)
    assert info.value.path == str(folder)
    assert os.path.isdir(info.value.path)

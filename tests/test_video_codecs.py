"""A backend that cannot decode a file's codec says so (codec, backend, who can) instead of calling the
file truncated, and auto moves on to a backend that can. AV1 is the case met in practice: decord's and
OpenCV's FFmpeg builds have no AV1 decoder, PyAV's has."""
import importlib.util
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dataloaders.video import (
    UnsupportedCodecError, VideoClipLoader, VideoDecodeError, open_reader, probe, sample_indices)
from dataloaders.video import backends as backends_module
from dataloaders.video.backends import codec_name
from dataloaders.video.transforms import eval_transform
from preprocess.synthetic import ffmpeg_binary, gradient_frames, write_sample

ROOT = Path(__file__).resolve().parents[1]
FRAMES = gradient_frames(20, 64, 128, seed=6)  # the bar moves 6 px a frame: every frame identifiable


def identify(decoded, originals):
    a = decoded.reshape(len(decoded), 1, -1).astype(np.int16)
    b = originals.reshape(1, len(originals), -1).astype(np.int16)
    return np.abs(a - b).mean(-1).argmin(1).tolist()


@pytest.fixture(scope="module")
def av1_clip(tmp_path_factory):
    path = write_sample(tmp_path_factory.mktemp("av1") / "clip", FRAMES, 10, "AV1 (mp4)")
    if path is None:
        pytest.skip("the installed ffmpeg has no AV1 encoder (libaom-av1, libsvtav1, librav1e)")
    return path


def test_pyav_decodes_av1(av1_clip):
    assert codec_name(av1_clip) == "av1"
    # Not starting at frame 0: the decoder then opens while frames before the first wanted one are being
    # skipped, which must not make libdav1d drop the wanted non-reference frames.
    for wanted in [[17], [2, 7, 12, 17], [19, 3, 13, 3]]:
        with open_reader(av1_clip, "pyav") as reader:
            assert identify(reader.get(wanted), FRAMES) == wanted


@pytest.mark.parametrize("backend", ["cv2", "decord"])
def test_backend_without_the_codec_names_it_and_who_can(av1_clip, backend):
    loader = VideoClipLoader(max_frames=4, image_size=32, mode="uniform", backend=backend)
    with pytest.raises(UnsupportedCodecError) as info:
        loader(av1_clip)
    err = info.value
    assert (err.path, err.codec, err.backend) == (str(av1_clip), "av1", backend)
    assert "pyav" in err.decoders and backend not in err.decoders
    assert "truncated" not in err.reason
    assert f"{backend} cannot decode this file's av1 video (unsupported codec); " in err.reason
    assert "use --video_backend auto or pyav" in err.reason
    # It reaches the main process from a DataLoader worker intact.
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, UnsupportedCodecError) and str(copy) == str(err)
    assert (copy.codec, copy.backend, copy.decoders) == (err.codec, err.backend, err.decoders)


def test_auto_moves_on_to_a_backend_that_decodes_the_codec(av1_clip, monkeypatch):
    monkeypatch.setattr(backends_module, "AUTO_ORDER", ("cv2", "decord", "pyav"))
    loader = VideoClipLoader(max_frames=4, image_size=128, mode="uniform", backend="auto")
    assert loader.backends == ["cv2", "decord", "pyav"]
    video, mask = loader(av1_clip)
    assert mask.tolist() == [1, 1, 1, 1]
    expected = eval_transform(FRAMES[sample_indices(20, 10, 4, "uniform")], 128)
    assert (video - expected).abs().mean() < 0.05  # the right frames, decoded by PyAV
    assert probe(av1_clip, "auto").num_frames == 20


def test_damaged_file_is_not_blamed_on_the_codec(tmp_path, make_video):
    """Frames no backend can decode, and a file cut after frame 0, keep their own reason."""
    good = make_video("good.mp4", num_frames=40)
    faststart = tmp_path / "faststart.mp4"
    subprocess.run([ffmpeg_binary(), "-y", "-loglevel", "error", "-i", str(good), "-c", "copy", "-movflags",
                    "+faststart", str(faststart)], check=True)
    data = bytearray(faststart.read_bytes())
    start = data.index(b"mdat") + 4
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(bytes(data[:start]) + bytes(len(data) - start))  # the index intact, every frame zeros
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    for path in [zeroed, cut]:
        for backend in ["cv2", "pyav", "decord"]:
            loader = VideoClipLoader(max_frames=8, image_size=32, mode="uniform", backend=backend)
            with pytest.raises(VideoDecodeError) as info:
                loader(path)
            assert not isinstance(info.value, UnsupportedCodecError), (path.name, backend, info.value.reason)
            assert "unsupported codec" not in info.value.reason


def test_codec_matrix_script_measures_each_backend(capsys):
    """benchmarks/codec_matrix.py (the table in docs/video.md) on its H.264 rows, plain and rotated."""
    spec = importlib.util.spec_from_file_location("codec_matrix", ROOT / "benchmarks" / "codec_matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    assert matrix.main(["--frames", "8", "--only", "H.264"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(rows) == {"H.264 (mp4)", "H.264 yuv444 (mp4)", matrix.ROTATED}
    for row in rows.values():
        for column in ["ffmpeg", "pyav", "decord", "cv2"]:
            assert row[column].startswith("ok (Δ "), (row["codec (container)"], column, row[column])
        assert row["torchcodec"].startswith("ok") or row["torchcodec"] == "not installed"
        assert row["auto"] == "pyav"

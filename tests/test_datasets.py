"""Annotation files in each benchmark's real format -> records, items, pairs, paragraphs, windows."""
import csv
import hashlib
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from dataloaders import DataError, build_dataset, list_datasets, load_records, selection_rule
from dataloaders.video import VideoDecodeError
from main_task_retrieval import get_args


class FakeLoader:
    """Stands in for VideoClipLoader where only dataset logic is under test: a (2, 3, 4, 4) clip whose
    value identifies the file; paths containing "broken" raise like a corrupt file."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, start=None, end=None, rng=None):
        self.calls.append((path, start, end))
        if "broken" in Path(path).name:
            raise VideoDecodeError(path, "moov atom not found")
        value = int(hashlib.sha1(Path(path).stem.encode()).hexdigest()[:4], 16) / 65535
        return torch.full((2, 3, 4, 4), value), torch.ones(2, dtype=torch.long)


def touch(folder: Path, *names: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def args_for(tmp_path, datatype, *extra):
    return get_args(["--datatype", datatype, "--data_path", str(tmp_path / "ann"), "--features_path",
                     str(tmp_path / "videos"), "--output_dir", str(tmp_path / "out"), *map(str, extra)])


def write_csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_registry_lists_every_benchmark():
    assert set(list_datasets()) == {"msrvtt", "msvd", "lsmdc", "didemo", "activitynet", "vatex", "webvid", "csv", "jsonl",
                                    "activity", "chvtt", "webdataset", "frozen", "msrvtt_qa", "msvd_qa"}


def test_clip4clip_datatype_alias_resolves_to_the_same_parser():
    from dataloaders.datasets import get_parser

    assert get_parser("activity") is get_parser("activitynet")
    assert get_parser("activity").name == "activitynet"


# ------------------------------------------------------------------------------------------------ MSR-VTT

def msrvtt_files(tmp_path, train_ids=("video0", "video1", "video2", "video3"), captions_per_video=3):
    ann = tmp_path / "ann"
    test_ids = ["video7", "video8"]
    all_ids = [f"video{i}" for i in range(9)]
    write_csv(ann / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in train_ids])
    write_csv(ann / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
              [[f"ret{i}", f"msr{v[5:]}", v, f"test sentence for {v}"] for i, v in enumerate(test_ids)])
    split = {**{v: "train" for v in all_ids[:5]}, "video5": "validate", "video6": "validate", "video7": "test", "video8": "test"}
    data = {"info": {"year": 2016},
            "videos": [{"id": i, "video_id": v, "category": 0, "url": f"https://www.youtube.com/watch?v=x{i}",
                        "start time": 0.0, "end time": 10.0, "split": split[v]} for i, v in enumerate(all_ids)],
            "sentences": [{"sen_id": n, "video_id": v, "caption": f"{v} caption {c}"}
                          for n, (v, c) in enumerate((v, c) for v in all_ids for c in range(captions_per_video))]}
    (ann / "MSRVTT_data.json").write_text(json.dumps(data))
    touch(tmp_path / "videos", *(f"{v}.mp4" for v in all_ids if v != "video2"), "video2.webm")
    return ann


def test_msrvtt_expanded_pairs_and_webm_fallback(tmp_path):
    msrvtt_files(tmp_path)
    loader = FakeLoader()
    train = build_dataset(args_for(tmp_path, "msrvtt", "--expand_msrvtt_sentences"), "train", video_loader=loader)
    assert (train.num_videos, train.num_captions, len(train)) == (4, 12, 12)
    pairs = {(train[i]["video_index"], train[i]["caption_index"]) for i in range(len(train))}
    assert len(pairs) == 12
    assert train.records[2].video_path.endswith("video2.webm")
    item = train[0]
    assert set(item) == {"text_ids", "text_mask", "video", "video_mask", "video_index", "caption_index", "decode_failures"}
    assert item["text_ids"].shape == (32,) and item["text_mask"].sum() > 2


def test_msrvtt_one_random_caption_per_video_per_epoch(tmp_path):
    msrvtt_files(tmp_path, captions_per_video=20)
    train = build_dataset(args_for(tmp_path, "msrvtt"), "train", video_loader=FakeLoader())
    assert len(train) == 4 and train.num_captions == 80

    def epoch_captions(epoch):
        train.set_epoch(epoch)
        return [train[i]["caption_index"] for i in range(len(train))]

    first = epoch_captions(0)
    assert first == epoch_captions(0)  # reproducible from (seed, epoch)
    assert [train.caption_to_video[c].item() for c in first] == [0, 1, 2, 3]
    assert any(epoch_captions(e) != first for e in range(1, 4))
    other_seed = build_dataset(args_for(tmp_path, "msrvtt", "--seed", 7), "train", video_loader=FakeLoader())
    assert [other_seed[i]["caption_index"] for i in range(4)] != first or epoch_captions(1) != first


def test_msrvtt_1k_test_is_square_and_has_no_val(tmp_path):
    msrvtt_files(tmp_path)
    args = args_for(tmp_path, "msrvtt")
    test = build_dataset(args, "test", video_loader=FakeLoader())
    assert (test.num_videos, test.num_captions, test.multi_caption) == (2, 2, False)
    assert test.captions == ["test sentence for video7", "test sentence for video8"]
    with pytest.raises(DataError, match="val_from_train"):
        build_dataset(args, "val", video_loader=FakeLoader())
    assert selection_rule(args).split is None and "final" in selection_rule(args).description


def test_msrvtt_full_protocol_multi_caption_cut_points(tmp_path):
    msrvtt_files(tmp_path)
    args = args_for(tmp_path, "msrvtt", "--msrvtt_protocol", "full")
    test = build_dataset(args, "test", video_loader=FakeLoader())
    assert (test.num_videos, test.num_captions, test.multi_caption) == (2, 6, True)
    assert test.cut_off_points == [2, 5]
    assert test.caption_to_video.tolist() == [0, 0, 0, 1, 1, 1]
    assert build_dataset(args, "val", video_loader=FakeLoader()).num_videos == 2
    assert build_dataset(args, "train", video_loader=FakeLoader()).num_videos == 5
    assert selection_rule(args).split == "val"


def test_msrvtt_val_from_train_is_deterministic_and_disjoint(tmp_path):
    ids = [f"video{i}" for i in range(5)]
    msrvtt_files(tmp_path, train_ids=ids)
    args = args_for(tmp_path, "msrvtt", "--val_from_train", 2, "--expand_msrvtt_sentences")
    val = [r.video_id for r in load_records(args, "val")]
    train = [r.video_id for r in load_records(args, "train")]
    expected = sorted(ids, key=lambda v: hashlib.sha1(v.encode()).hexdigest())[:2]
    assert sorted(val) == sorted(expected) and not set(val) & set(train) and len(train) == 3
    assert build_dataset(args, "train", video_loader=FakeLoader()).num_captions == 9
    rule = selection_rule(args)
    assert rule.split == "val" and "SHA-1" in rule.description
    # unset: every training video stays
    assert len(load_records(args_for(tmp_path, "msrvtt"), "train")) == 5
    assert selection_rule(args_for(tmp_path, "msrvtt", "--select_on_test")).split == "test"


def test_msrvtt_missing_annotation_names_the_files(tmp_path):
    (tmp_path / "ann").mkdir()
    with pytest.raises(DataError) as error:
        build_dataset(args_for(tmp_path, "msrvtt"), "train", video_loader=FakeLoader())
    message = str(error.value)
    assert "MSRVTT_train.9k.csv" in message and "MSRVTT_data.json" in message and "\n" not in message


def test_msrvtt_coco_style_json_is_recognised(tmp_path):
    ann = msrvtt_files(tmp_path)
    coco = {"info": {}, "images": [{"id": "video0"}], "annotations": [{"image_id": "video0", "caption": "x"}]}
    (ann / "MSRVTT_data.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="COCO-style.*MSR_VTT.json"):
        build_dataset(args_for(tmp_path, "msrvtt"), "train", video_loader=FakeLoader())


def test_missing_videos_are_counted_listed_and_excluded(tmp_path, caplog):
    ids = [f"video{i}" for i in range(30)]
    msrvtt_files(tmp_path, train_ids=ids)
    for i in range(5, 30):  # keep video0..video4 on disk only
        for ext in (".mp4", ".webm"):
            (tmp_path / "videos" / f"video{i}{ext}").unlink(missing_ok=True)
    json_path = tmp_path / "ann" / "MSRVTT_data.json"
    data = json.loads(json_path.read_text())
    data["sentences"] += [{"sen_id": 1000 + i, "video_id": v, "caption": "c"} for i, v in enumerate(ids[9:])]
    json_path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        train = build_dataset(args_for(tmp_path, "msrvtt"), "train", video_loader=FakeLoader())
    assert train.num_videos == 5 and len(train.missing_videos) == 25
    report = tmp_path / "out" / "missing_videos_msrvtt_train.txt"
    assert len(report.read_text().splitlines()) == 25
    shown = [line for line in caplog.text.splitlines() if line.strip().startswith("video")]
    assert len(shown) == 20 and "25 of 30" in caplog.text and "and 5 more" in caplog.text
    touch(tmp_path / "nothing")
    with pytest.raises(DataError, match="none of the"):
        build_dataset(get_args(["--data_path", str(tmp_path / "ann"), "--features_path", str(tmp_path / "nothing"),
                                "--output_dir", str(tmp_path / "out")]), "train", video_loader=FakeLoader())


# ------------------------------------------------------------------------------------------------ MSVD

def test_msvd_token_lists_and_multi_caption_test(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    captions = {"-4wsuPCjDBc_5_15": [["a", "man", "cooks"], ["someone", "is", "cooking"]],
                "abc_1_2": [["a", "dog", "runs"]],
                "xyz_3_9": [["a", "cat"], ["a", "kitten"], ["cat", "sleeps"]]}
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (ann / "train_list.txt").write_text("-4wsuPCjDBc_5_15\nabc_1_2\n")
    (ann / "val_list.txt").write_text("abc_1_2\n")
    (ann / "test_list.txt").write_text("xyz_3_9\n-4wsuPCjDBc_5_15\n")
    touch(tmp_path / "videos", "-4wsuPCjDBc_5_15.avi", "abc_1_2.avi", "sub/xyz_3_9.mp4")
    args = args_for(tmp_path, "msvd")
    train = build_dataset(args, "train", video_loader=FakeLoader())
    assert len(train) == 3 and train.captions[0] == "a man cooks"
    test = build_dataset(args, "test", video_loader=FakeLoader())
    assert test.multi_caption and test.cut_off_points == [2, 4]
    assert test.records[0].video_path.endswith("sub/xyz_3_9.mp4")
    assert selection_rule(args).split == "val"
    with pytest.raises(DataError, match="own validation split"):
        load_records(args_for(tmp_path, "msvd", "--val_from_train", 1), "train")


# ------------------------------------------------------------------------------------------------ LSMDC

def lsmdc_line(clip, sentence):
    return "\t".join([clip, "00.00.01.000", "00.00.03.000", "00.00.01.000", "00.00.03.000", sentence]) + "\n"


def test_lsmdc_six_fields_grouping_and_nested_videos(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    a, b, c = ("3086_UGLY_TRUTH_00.23.23.000-00.23.28.886", "3086_UGLY_TRUTH_00.24.00.000-00.24.05.000",
               "1010_TITANIC_00.01.00.000-00.01.04.000")
    (ann / "LSMDC16_annos_training.csv").write_text(lsmdc_line(a, "SOMEONE smiles.") + lsmdc_line(b, "He sits.")
                                                    + lsmdc_line(a, "She laughs, \"ha\"."))
    (ann / "LSMDC16_annos_val.csv").write_text(lsmdc_line(c, "A ship."))
    (ann / "LSMDC16_challenge_1000_publictect.csv").write_text(lsmdc_line(b, "He sits.") + lsmdc_line(c, "A ship."))
    touch(tmp_path / "videos", f"3086_UGLY_TRUTH/{a}.avi", f"3086_UGLY_TRUTH/{b}.avi", f"1010_TITANIC/{c}.avi")
    args = args_for(tmp_path, "lsmdc")
    train = build_dataset(args, "train", video_loader=FakeLoader())
    assert (train.num_videos, len(train)) == (2, 3)
    assert train.records[0].captions == ["SOMEONE smiles.", "She laughs, \"ha\"."]
    test = build_dataset(args, "test", video_loader=FakeLoader())
    assert (test.num_videos, test.num_captions, test.multi_caption) == (2, 2, False)
    (ann / "LSMDC16_annos_val.csv").write_text(lsmdc_line(c, "A ship.") + "only\tfour\tfields\there\n")
    with pytest.raises(DataError, match=r"LSMDC16_annos_val.csv:2 has 4 tab-separated fields"):
        build_dataset(args, "val", video_loader=FakeLoader())


# ------------------------------------------------------------------------------------------------ DiDeMo

def test_didemo_paragraphs_and_windows(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    moments = [{"video": "v1.mov", "description": "a man enters ", "times": [[0, 0], [1, 1], [0, 1], [1, 1]],
                "annotation_id": 1},
               {"video": "v2.mp4", "description": "a car", "times": [[2, 3]]},
               {"video": "v1.mov", "description": "he sits", "times": [[4, 5], [4, 4]]}]
    for split in ("train", "val", "test"):
        (ann / f"{split}_data.json").write_text(json.dumps(moments))
    (ann / "test_list.txt").write_text("v2.mp4\n")
    touch(tmp_path / "videos", "v1.mov", "v2.mp4")
    args = args_for(tmp_path, "didemo")
    train = build_dataset(args, "train", video_loader=FakeLoader())
    assert train.paragraph and (train.num_videos, train.num_captions, len(train)) == (2, 2, 2)
    assert train.captions[0] == "a man enters he sits"
    # mean start 0.5 segments -> 2.5 s; mean end 0.75 -> (0.75 + 1) * 5 = 8.75 s
    assert train.records[0].caption_windows == [(2.5, 8.75), (20.0, 27.5)]
    assert (train.records[0].start, train.records[0].end) == (None, None)
    assert [r.video_id for r in build_dataset(args, "test", video_loader=FakeLoader()).records] == ["v2.mp4"]


# ------------------------------------------------------------------------------------------------ ActivityNet

def test_activitynet_v_prefix_paragraph_and_no_val(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    train = {"v_abc": {"duration": 20.5, "timestamps": [[0, 5.5], [6, 20]], "sentences": ["A person runs.", " Then stops."]},
             "v_def": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["Cooking."]},
             "v_ghi": {"duration": 10, "timestamps": [[1, 2]], "sentences": ["Not listed."]}}
    (ann / "train.json").write_text(json.dumps(train))
    (ann / "train_ids.json").write_text(json.dumps(["v_abc", "v_def"]))
    (ann / "val_1.json").write_text(json.dumps({"v_def": train["v_def"]}))
    touch(tmp_path / "videos", "abc.mp4", "def.mkv", "ghi.mp4")
    args = args_for(tmp_path, "activitynet")
    ds = build_dataset(args, "train", video_loader=FakeLoader())
    assert [r.video_id for r in ds.records] == ["abc", "def"]
    assert ds.captions[0] == "A person runs. Then stops." and ds.records[0].caption_windows == [(0.0, 5.5), (6.0, 20.0)]
    assert ds.records[1].video_path.endswith("def.mkv")
    assert build_dataset(args, "test", video_loader=FakeLoader()).num_videos == 1
    with pytest.raises(DataError, match="no val split"):
        load_records(args, "val")
    carved = args_for(tmp_path, "activitynet", "--val_from_train", 1)
    assert len(load_records(carved, "val")) == 1 and selection_rule(carved).split == "val"


# ------------------------------------------------------------------------------------------------ VATEX

def vatex_files(tmp_path, layout):
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    items = [{"videoID": f"yt{i}_000010_000020", "enCap": [f"english {i} a", f"english {i} b"],
              "chCap": [f"中文 {i} 甲", f"中文 {i} 乙"]} for i in range(3)]
    if layout == "official":
        (ann / "vatex_training_v1.0.json").write_text(json.dumps(items[:2]))
        (ann / "vatex_validation_v1.0.json").write_text("\n".join(json.dumps(x) for x in items[2:]))  # JSON lines
    elif layout == "clip2video":
        (ann / "vatex_data.json").write_text(json.dumps({x["videoID"]: x for x in items}))
    else:
        (ann / "ref_captions.json").write_text(json.dumps({x["videoID"]: x["enCap"] for x in items}))
    (ann / "train_list.txt").write_text("yt0_000010_000020\nyt1_000010_000020\n")
    (ann / "val_list.txt").write_text("yt1_000010_000020\n")
    (ann / "test_list.txt").write_text("yt2_000010_000020\nyt0_000010_000020\n")
    touch(tmp_path / "videos", *(f"{x['videoID']}.mp4" for x in items))


@pytest.mark.parametrize("layout", ["official", "clip2video"])
def test_vatex_language_picks_the_right_field(tmp_path, layout):
    # Regression: an earlier loader read enCap for --language chinese.
    vatex_files(tmp_path, layout)
    english = build_dataset(args_for(tmp_path, "vatex"), "train", video_loader=FakeLoader())
    chinese = build_dataset(args_for(tmp_path, "vatex", "--language", "chinese"), "train", video_loader=FakeLoader())
    assert english.captions[:2] == ["english 0 a", "english 0 b"]
    assert chinese.captions[:2] == ["中文 0 甲", "中文 0 乙"]
    test = build_dataset(args_for(tmp_path, "vatex", "--language", "chinese"), "test", video_loader=FakeLoader())
    assert test.multi_caption and test.captions[0] == "中文 2 甲" and test.cut_off_points == [1, 3]


def test_vatex_english_only_file_refuses_chinese(tmp_path):
    vatex_files(tmp_path, "ref")
    assert build_dataset(args_for(tmp_path, "vatex"), "val", video_loader=FakeLoader()).num_captions == 2
    with pytest.raises(DataError, match="English captions only"):
        load_records(args_for(tmp_path, "vatex", "--language", "chinese"), "train")


# ------------------------------------------------------------------------------------------------ WebVid

def test_webvid_page_dir_layout(tmp_path):
    ann = tmp_path / "ann"
    write_csv(ann / "results_2M_train.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"],
              [["1001", "https://x/1001.mp4", "PT00H00M10S", "006001_006050", "Aerial view of a lake"],
               ["1002", "https://x/1002.mp4", "PT00H00M12S", "006051_006100", "Close up of 0012 leaves"]])
    touch(tmp_path / "videos" / "videos", "006001_006050/1001.mp4", "006051_006100/1002.mp4")
    args = args_for(tmp_path, "webvid")
    ds = build_dataset(args, "train", video_loader=FakeLoader())
    assert ds.captions == ["Aerial view of a lake", "Close up of 0012 leaves"]
    assert ds.records[1].video_path.endswith("videos/006051_006100/1002.mp4")
    with pytest.raises(DataError, match="no test split"):
        load_records(args, "test")
    assert selection_rule(args).split is None  # results_2M_val.csv is absent


# ------------------------------------------------------------------------------------------------ generic

def test_generic_csv_and_jsonl(tmp_path):
    ann = tmp_path / "ann"
    write_csv(ann / "train.csv", ["video_path", "caption", "start", "end"],
              [["a.mp4", "first", "", ""], ["a.mp4", "second", "", ""], ["b.mp4", "window", "1.5", "4"]])
    touch(tmp_path / "videos", "a.mp4", "b.mp4")
    ds = build_dataset(args_for(tmp_path, "csv"), "train", video_loader=FakeLoader())
    assert (ds.num_videos, ds.num_captions) == (2, 3)
    assert (ds.records[1].start, ds.records[1].end) == (1.5, 4.0)
    ds[2]
    assert ds.video_loader.calls[-1][1:] == (1.5, 4.0)
    lines = [{"video_path": "a.mp4", "caption": ["x", "y"]}, {"video_path": "b.mp4", "caption": "z", "start": 0, "end": 2}]
    (ann / "test.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    test = build_dataset(args_for(tmp_path, "jsonl"), "test", video_loader=FakeLoader())
    assert test.multi_caption and test.captions == ["x", "y", "z"]
    assert selection_rule(args_for(tmp_path, "jsonl")).split is None
    with pytest.raises(DataError, match="train.jsonl"):
        load_records(args_for(tmp_path, "jsonl"), "train")


# ------------------------------------------------------------------------------------------------ decoding

def test_broken_training_video_is_replaced_not_zeroed(tmp_path, caplog):
    ann = tmp_path / "ann"
    write_csv(ann / "train.csv", ["video_path", "caption"],
              [["a.mp4", "a1"], ["a.mp4", "a2"], ["broken.mp4", "b1"], ["c.mp4", "c1"]])
    touch(tmp_path / "videos", "a.mp4", "broken.mp4", "c.mp4")
    ds = build_dataset(args_for(tmp_path, "csv", "--max_decode_failures", 1), "train", video_loader=FakeLoader())
    with caplog.at_level(logging.WARNING):
        item = ds[2]
        again = ds[2]
    assert item["video_index"] == 2 and item["caption_index"] == 3  # the next item, deterministically
    assert again["caption_index"] == 3 and item["video"].abs().sum() > 0
    assert caplog.text.count("moov atom not found") == 1 and "broken.mp4" in caplog.text
    assert list(ds.failed_videos) == [1] and item["decode_failures"] == "1" and ds[0]["decode_failures"] == ""
    # The item reports the failure; the limit is enforced over every worker and rank by the training
    # loop (DecodeFailureBudget), in the main process.
    from dataloaders.base import DecodeFailureBudget

    strict = build_dataset(args_for(tmp_path, "csv", "--max_decode_failures", 0), "train", video_loader=FakeLoader())
    budget = DecodeFailureBudget(strict, str(tmp_path / "videos"))
    budget.add([strict[2]["decode_failures"], strict[0]["decode_failures"]])
    with pytest.raises(DataError, match="1 of 3 videos failed to decode .* limit of 0 .*dataloaders.verify_videos"):
        budget.check()


def test_broken_test_video_stops_evaluation(tmp_path):
    ann = tmp_path / "ann"
    write_csv(ann / "test.csv", ["video_path", "caption"], [["a.mp4", "a"], ["broken.mp4", "b"]])
    touch(tmp_path / "videos", "a.mp4", "broken.mp4")
    videos = build_dataset(args_for(tmp_path, "csv"), "test", video_loader=FakeLoader()).video_dataset()
    assert videos[0]["video_index"] == 0
    with pytest.raises(DataError, match="cannot decode .*broken.mp4"):
        videos[1]


def test_eval_views_hold_each_caption_and_video_once(tmp_path):
    msrvtt_files(tmp_path)
    loader = FakeLoader()
    test = build_dataset(args_for(tmp_path, "msrvtt", "--msrvtt_protocol", "full"), "test", video_loader=loader)
    texts, videos = test.text_dataset(), test.video_dataset()
    assert len(texts) == 6 and len(videos) == 2
    assert [texts[i]["caption_index"] for i in range(6)] == list(range(6))
    assert [videos[i]["video_index"] for i in range(2)] == [0, 1] and len(loader.calls) == 2


def test_real_mp4s_through_the_real_video_loader(tmp_path, make_video):
    msrvtt_files(tmp_path)
    for i in range(9):
        for ext in (".mp4", ".webm"):
            (tmp_path / "videos" / f"video{i}{ext}").unlink(missing_ok=True)
    for i in (0, 1, 3, 7, 8):
        make_video(f"video{i}.mp4", num_frames=12, fps=4, seed=i, directory=tmp_path / "videos")
    (tmp_path / "videos" / "video2.mp4").write_bytes(b"not a video")
    args = args_for(tmp_path, "msrvtt", "--max_frames", 4, "--image_resolution", 32, "--expand_msrvtt_sentences",
                    "--max_decode_failures", 1)
    train = build_dataset(args, "train")
    assert train.num_videos == 4
    item = train[6]  # video2's first caption -> broken file -> the next video's item
    assert item["video_index"] == 3 and item["video"].shape == (4, 3, 32, 32)
    assert item["video_mask"].tolist() == [1, 1, 1, 0]  # 12 frames at 4 fps = 3 s -> 3 frames at 1 fps
    assert 2 in train.failed_videos
    test = build_dataset(args, "test")
    clip = test.video_dataset()[1]
    assert clip["video"].shape == (4, 3, 32, 32) and clip["video"].abs().sum() > 0


def test_chvtt_json_lines_give_title_captions_in_either_language(tmp_path):
    from argparse import Namespace

    from dataloaders import DataError
    from dataloaders.datasets import get_parser

    (tmp_path / "chvtt_train.json").write_text('{"docid": 7, "title": "小狗接飞盘", "title_eng": "a dog catches a frisbee"}\n'
                                               '\n{"docid": "x9", "title": "做饭", "title_eng": "cooking"}\n')
    args = Namespace(datatype="chvtt", data_path=str(tmp_path), features_path=str(tmp_path / "v"), train_csv=None,
                     language="english")
    records = get_parser("chvtt")(args).records("train")
    assert [(r.video_id, r.captions, Path(r.video_path).name) for r in records] == [
        ("7", ["a dog catches a frisbee"], "7.mp4"), ("x9", ["cooking"], "x9.mp4")]
    args.language = "chinese"
    assert [r.captions for r in get_parser("chvtt")(args).records("train")] == [["小狗接飞盘"], ["做饭"]]
    (tmp_path / "chvtt_train.json").write_text('{"docid": 7, "title": "t"}\n')
    args.language = "english"
    with pytest.raises(DataError, match="chvtt_train.json line 1: expected docid and title_eng"):
        get_parser("chvtt")(args).records("train")

import pytest

import main_task_retrieval
from engine.options import build_parser


def test_clip4clip_flag_names_and_defaults():
    args = main_task_retrieval.get_args([])
    for name, value in {"datatype": "msrvtt", "max_words": 32, "max_frames": 12, "feature_framerate": 1,
                        "slice_framepos": 2, "expand_msrvtt_sentences": False, "language": "english",
                        "val_from_train": None, "select_on_test": False, "legacy_metrics": False,
                        "dsl": False, "qb_norm": False}.items():
        assert getattr(args, name) == value, name
    for flag in ("--data_path", "--features_path", "--train_csv", "--val_csv", "--video_backend", "--lmdb_path"):
        assert flag in build_parser()._option_string_actions


def test_config_file_then_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("datatype: msvd\nmax_words: 64\nexpand_msrvtt_sentences: true\nqb_norm_betas: [0.5, 2]\n"
                      "data_path: /data/msvd\nfeatures_path: null\n")
    args = main_task_retrieval.get_args(["--config", str(config), "--max_words", "16"])
    assert (args.datatype, args.max_words, args.expand_msrvtt_sentences) == ("msvd", 16, True)
    assert args.qb_norm_betas == [0.5, 2.0] and args.data_path == "/data/msvd" and args.features_path is None
    assert main_task_retrieval.get_args(["--config", str(config)]).max_words == 64


@pytest.mark.parametrize("body, message", [
    ("datatype: msvd\nmax_wrods: 64\n", "unknown key 'max_wrods'"),
    ("datatype: nope\n", "invalid choice: 'nope'"),
    ("dsl: 1\n", "dsl is a switch"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_config_is_an_error_naming_the_problem(tmp_path, capsys, body, message):
    config = tmp_path / "bad.yaml"
    config.write_text(body)
    with pytest.raises(SystemExit) as exit_info:
        main_task_retrieval.get_args(["--config", str(config)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and f"{config}:" in err and message in err


def test_unknown_datatype_is_refused(capsys):
    with pytest.raises(SystemExit):
        main_task_retrieval.get_args(["--datatype", "unknown"])
    assert "invalid choice: 'unknown'" in capsys.readouterr().err


def test_every_dataset_config_parses():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "datasets").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"msrvtt", "msvd", "lsmdc", "didemo", "activitynet", "vatex"}
    for config in configs:
        args = main_task_retrieval.get_args(["--config", str(config)])
        assert args.datatype == config.stem
        assert args.max_words == (64 if config.stem in ("didemo", "activitynet") else 32)

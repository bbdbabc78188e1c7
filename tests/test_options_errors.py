"""Flag and --config errors are one line on stderr (``error: ...``, no usage block) with exit code 2;
config problems name the file, the line and the key, flag typos the closest flag."""
import pytest

from engine.options import build_parser, parse_args


def error_line(capsys, argv, parse=parse_args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith("error: ")
    return err.strip()


def config_error(tmp_path, capsys, body: str) -> tuple[str, str]:
    config = tmp_path / "x.yaml"
    config.write_text(body)
    return str(config), error_line(capsys, ["--config", str(config)])


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path, line = config_error(tmp_path, capsys, "datatype: msvd\nmax_words: 64\nepochs: 5: 6\n")
    assert line.startswith(f"error: {path}:3: YAML syntax error: mapping values are not allowed here")


def test_unclosed_bracket_names_where_it_opened(tmp_path, capsys):
    path, line = config_error(tmp_path, capsys, "datatype: msvd\nepochs: [1\nlr: 3\n")
    assert line.startswith(f"error: {path}:3: YAML syntax error: ") and "from line 2" in line


def test_bad_value_names_file_line_and_key(tmp_path, capsys):
    path, line = config_error(tmp_path, capsys, "datatype: msvd\n\nmax_words: 64\n# a comment\nepochs: two\n")
    assert line == f"error: {path}:5: epochs: invalid int value: 'two'"
    path, line = config_error(tmp_path, capsys, "datatype: nope\n")
    assert line.startswith(f"error: {path}:1: datatype: invalid choice: 'nope'")
    path, line = config_error(tmp_path, capsys, "datatype: msvd\nmax_words: [1, 2]\n")
    assert line == f"error: {path}:2: max_words: unexpected value 2"


def test_unknown_key_names_line_and_closest_flag(tmp_path, capsys):
    path, line = config_error(tmp_path, capsys, "datatype: msvd\nmax_wrods: 64\n")
    assert line == f"error: {path}:2: unknown key 'max_wrods'; did you mean max_words?"
    path, line = config_error(tmp_path, capsys, "zzzqqq: 1\n")
    assert line == f"error: {path}:1: unknown key 'zzzqqq'; see --help"


def test_config_values_starting_with_a_dash_and_repeatable_flags(tmp_path):
    subsets = tmp_path / "s.json"
    config = tmp_path / "ok.yaml"
    config.write_text(f"freeze_layer_num: -1\neval_query_subset: [a={subsets}, b={subsets}]\n")
    args = parse_args(["--config", str(config), "--eval_query_subset", f"c={subsets}"])
    assert args.freeze_layer_num == -1
    assert [name for name, _ in args.eval_query_subset] == ["a", "b", "c"]


def test_flag_typo_is_one_line_with_the_closest_flag(capsys):
    assert error_line(capsys, ["--data_pth", "/data"]) == (
        "error: unrecognized argument --data_pth; did you mean --data_path?")
    assert error_line(capsys, ["--data_pth=/data"]) == (
        "error: unrecognized argument --data_pth; did you mean --data_path?")
    assert error_line(capsys, ["--zzzqqq"]) == "error: unrecognized argument --zzzqqq; see --help"


def test_several_typos_are_each_named(capsys):
    line = error_line(capsys, ["--data_pth", "/data", "--epohcs", "3", "--zzzqqq"])
    assert line == ("error: unrecognized arguments --data_pth (did you mean --data_path?), "
                    "--epohcs (did you mean --epochs?), --zzzqqq (see --help)")


def test_seed_flag_aliases_still_apply_before_the_check(capsys):
    args = parse_args(["--noclip_lr", "3e-5", "--exp_name=run1"])
    assert (args.lr, args.output_dir) == (3e-5, "outputs/run1")
    assert error_line(capsys, ["--noclip_lr", "3e-5", "--batch_siz", "3"]) == (
        "error: unrecognized argument --batch_siz; did you mean --batch_size?")


@pytest.mark.parametrize("argv, message", [
    (["--datatype", "nope"], "argument --datatype: invalid choice: 'nope'"),
    (["--max_words", "two"], "argument --max_words: invalid int value: 'two'"),
    (["--data_path"], "argument --data_path: expected one argument"),
    (["--max_words", "3", "4"], "unrecognized argument 4; see --help"),
])
@pytest.mark.parametrize("parse", [parse_args, lambda argv: build_parser().parse_args(argv)],
                         ids=["parse_args", "build_parser"])
def test_every_argparse_error_is_one_line(capsys, argv, message, parse):
    assert message in error_line(capsys, argv, parse)


def test_config_without_a_file_name_is_one_line(capsys):
    assert error_line(capsys, ["--config"]) == "error: argument --config: expected one argument"

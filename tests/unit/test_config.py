"""utils.config: YAML + stage sections + command line precedence, conversion, errors."""
import argparse

import pytest
import yaml

from utils.config import add_common_args, args_to_dict, parse_args, write_config
from utils.errors import DataError


def make_parser():
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--milestones", type=int, nargs="+", default=[30])
    parser.add_argument("--backbone", type=str, default="vgg16", choices=["vgg16", "resnet50"])
    parser.add_argument("--flip", action="store_true")
    return parser


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_config():
    args = parse_args(make_parser(), [], stage="cam")
    assert args.config is None
    assert (args.device, args.amp, args.seed, args.workers) == ("auto", "off", 0, 2)
    assert args.resume is True and args.deterministic is False
    assert (args.log_every, args.save_every_steps, args.max_steps_per_epoch) == (10, 0, 0)


def test_precedence_top_level_stage_section_command_line(tmp_path):
    cfg = write(tmp_path, "lr: 0.5\nbatch_size: 8\nepochs: 3\n"
                          "cam_train:\n  lr: 0.25\n  epochs: 7\n"
                          "seg_train:\n  lr: 9.0\n  no_such_option: 1\n")
    args = parse_args(make_parser(), ["--config", str(cfg), "--epochs", "11"], stage="cam_train")
    assert args.batch_size == 8          # top level
    assert args.lr == 0.25               # stage section wins over top level
    assert args.epochs == 11             # command line wins over both
    assert args.config == str(cfg.resolve())
    # the other stage sees its own section (its unknown key is its own business)
    with pytest.raises(DataError):
        parse_args(make_parser(), ["--config", str(cfg)], stage="seg_train")


def test_command_line_value_arrives_typed(tmp_path):
    cfg = write(tmp_path, "lr: 1e-3\nseed: 5\n")
    args = parse_args(make_parser(), ["--config", str(cfg), "--batch-size", "4"], stage="cam")
    assert args.batch_size == 4 and isinstance(args.batch_size, int)
    # PyYAML reads "1e-3" as text; the option's type makes it a float
    assert args.lr == pytest.approx(0.001) and isinstance(args.lr, float)
    assert args.seed == 5 and isinstance(args.seed, int)


def test_type_conversion_lists_flags_and_dashes(tmp_path):
    cfg = write(tmp_path, "milestones: [5, 9]\nflip: true\nresume: false\ndeterministic: true\n"
                          "log-every: 3\nbackbone: resnet50\n")
    args = parse_args(make_parser(), ["--config", str(cfg)], stage="cam")
    assert args.milestones == [5, 9]
    assert args.flip is True and args.resume is False and args.deterministic is True
    assert args.log_every == 3 and args.backbone == "resnet50"
    # command line flag beats the file
    args = parse_args(make_parser(), ["--config", str(cfg), "--resume"], stage="cam")
    assert args.resume is True


def test_unknown_key_names_file_line_and_key(tmp_path):
    cfg = write(tmp_path, "lr: 0.1\ncam:\n  epochs: 2\n  bacth_size: 4\n")
    with pytest.raises(DataError) as info:
        parse_args(make_parser(), ["--config", str(cfg)], stage="cam")
    msg = str(info.value)
    assert msg.startswith(f"{cfg.resolve()}:4:")
    assert "bacth_size" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text,word", [
    # argparse's own conversion and choice check (the command line's wording)
    ("seed: 1.5\n", "invalid int value"),
    ("seed: abc\n", "invalid int value"),
    ("backbone: alexnet\n", "invalid choice"),
    ("flip: 3\n", "true or false"),
    ("lr: [1, 2]\n", "single value"),
])
def test_bad_values_are_errors(tmp_path, text, word):
    cfg = write(tmp_path, text)
    with pytest.raises(DataError, match=word) as info:
        parse_args(make_parser(), ["--config", str(cfg)], stage="cam")
    assert str(cfg.resolve()) + ":1:" in str(info.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(DataError, match="config file not found"):
        parse_args(make_parser(), ["--config", str(tmp_path / "nope.yaml")], stage="cam")
    cfg = write(tmp_path, "lr: [1, 2\nseed: 3\n")
    with pytest.raises(DataError, match="invalid YAML"):
        parse_args(make_parser(), ["--config", str(cfg)], stage="cam")


def test_required_option_satisfied_by_yaml(tmp_path):
    parser = make_parser()
    parser.add_argument("--cam-dir", type=str, required=True)
    cfg = write(tmp_path, "cam_dir: /some/where\n")
    assert parse_args(parser, ["--config", str(cfg)], stage="seg").cam_dir == "/some/where"


def test_write_config_round_trip(tmp_path):
    args = parse_args(make_parser(), ["--epochs", "4", "--milestones", "2", "3"], stage="cam")
    path = write_config(args, tmp_path / "out" / "args.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["epochs"] == 4 and data["milestones"] == [2, 3] and "config" not in data
    again = parse_args(make_parser(), ["--config", str(path)], stage="cam")
    assert args_to_dict(again) | {"config": None} == args_to_dict(args)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["args.yaml"]  # no temporary file left


def test_parser_is_left_unchanged(tmp_path):
    parser = make_parser()
    cfg = write(tmp_path, "epochs: 9\n")
    assert parse_args(parser, ["--config", str(cfg)], stage="cam").epochs == 9
    assert parse_args(parser, [], stage="cam").epochs == 1


def test_misspelt_stage_section_is_an_error(tmp_path):
    # 'cma_train' is one transposition away from 'cam_train': it must not be ignored silently
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("epochs: 2\ncma_train:\n  epochs: 3\n")
    with pytest.raises(DataError, match=r"typo\.yaml:2: unknown stage section 'cma_train' .*cam_train"):
        parse_args(make_parser(), ["--config", str(cfg)], stage="cam_train")


@pytest.mark.parametrize("section", ["spol_cam_train", "training"])
def test_section_of_no_stage_is_an_error(tmp_path, section):
    cfg = write(tmp_path, f"epochs: 2\n{section}:\n  epochs: 3\n")
    with pytest.raises(DataError, match=rf"cfg\.yaml:2: unknown stage section '{section}'"):
        parse_args(make_parser(), ["--config", str(cfg)], stage="cam_train")


def test_declared_anchor_section_is_allowed_and_merged(tmp_path):
    cfg = write(tmp_path, "shared: &shared\n  lr: 0.7\ncam_train:\n  <<: *shared\n  epochs: 3\n")
    args = parse_args(make_parser(), ["--config", str(cfg)], stage="cam_train")
    assert (args.lr, args.epochs) == (0.7, 3)


def test_an_option_name_the_parser_does_not_have_is_an_error_on_the_command_line_and_in_a_file(tmp_path):
    with pytest.raises(SystemExit):  # argparse: unrecognized arguments
        make_parser().parse_args(["--arch", "resnet50"])
    cfg = write(tmp_path, "seed: 1\ncam:\n  arch: resnet50\n")
    with pytest.raises(DataError, match=r"cfg\.yaml:3: unknown key 'arch' in section 'cam': the 'cam' stage has no "
                                        r"option --arch"):
        parse_args(make_parser(), ["--config", str(cfg)], stage="cam")

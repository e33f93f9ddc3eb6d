"""A config file or override that cannot be read is one ConfigError naming the file (line, column) or the override,
never a Python traceback; list items can be named by their `name` in overrides."""

import pytest

from omni_mega.config import ConfigError, load_config

TWO_STAGES = "name: t\nstages:\n  - {name: pretrain, steps: 3}\n  - {name: cooldown, steps: 2}\n"


def _write(tmp_path, content: str | bytes, name: str = "c.yaml"):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def _error(path, *overrides) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg, msg  # one line: the CLI prints it after "omni-mega: config error: "
    return msg


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    p = _write(tmp_path, "name: t\noptim:\n  lr: 1\n   warmup_steps: 2\n")
    msg = _error(p)
    assert msg.startswith(f"{p}:4:16: YAML syntax error: mapping values are not allowed here"), msg


def test_unclosed_bracket_also_says_where_it_opened(tmp_path):
    p = _write(tmp_path, "name: t\nstages: [{name: a, steps: 3}\n")
    msg = _error(p)
    assert msg.startswith(f"{p}:3:1: YAML syntax error:") and "began at line 2, column 9" in msg, msg


def test_directory_is_refused(tmp_path):
    assert _error(tmp_path) == f"config {tmp_path} is a directory; expected a YAML file"


def test_missing_file_is_refused(tmp_path):
    assert _error(tmp_path / "nope.yaml") == f"config file {tmp_path / 'nope.yaml'} does not exist"


def test_non_utf8_file_is_refused(tmp_path):
    p = _write(tmp_path, b"name: caf\xe9\n")
    assert _error(p) == f"config file {p} is not UTF-8 text: byte 0xe9 at offset 9"


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n  # and another\n"],
                         ids=["empty", "blank", "comments"])
def test_empty_file_is_refused_not_run_with_defaults(tmp_path, content):
    p = _write(tmp_path, content)
    assert _error(p) == f"config file {p} is empty (no settings, only blank lines or comments)"


def test_index_out_of_range_says_how_many_items_exist(tmp_path):
    p = _write(tmp_path, TWO_STAGES)
    assert _error(p, "stages.5.steps=1") == (
        "--set 'stages.5.steps=1': stages has 2 items (indices 0..1), so there is no index 5")


def test_list_item_by_name(tmp_path):
    p = _write(tmp_path, TWO_STAGES)
    cfg = load_config(p, ["stages.pretrain.steps=11", "stages.1.steps=7"])
    assert [(s.name, s.steps) for s in cfg.stages] == [("pretrain", 11), ("cooldown", 7)]
    cfg = load_config(p, ["stages.cooldown={name: cooldown, steps: 4, lr: 0.5}"])  # a whole item by name
    assert cfg.stages[1].steps == 4 and cfg.stages[1].lr == 0.5 and cfg.stages[0].steps == 3


def test_unknown_item_name_lists_the_names(tmp_path):
    p = _write(tmp_path, TWO_STAGES)
    assert _error(p, "stages.pretrian.steps=1") == (
        "--set 'stages.pretrian.steps=1': stages has no item named 'pretrian'; names: pretrain, cooldown")


def test_item_of_a_list_the_file_does_not_set(tmp_path):
    p = _write(tmp_path, "name: t\n")
    assert _error(p, "stages.0.steps=1") == (
        "--set 'stages.0.steps=1': stages is not set in the config file, so it has no items to change; "
        "set the whole list: --set 'stages=[...]'")


@pytest.mark.parametrize("override,msg", [
    ("optim.lr=[1,", "--set 'optim.lr=[1,': cannot parse the value '[1,' as YAML: while parsing a flow"),
    ("optim.lr={a: 1", "--set 'optim.lr={a: 1': cannot parse the value '{a: 1' as YAML:"),
    ("optim..lr=1", "--set 'optim..lr=1': 'optim..lr' has an empty part"),
    ("optim.lr.x=1", "--set 'optim.lr.x=1': optim.lr is not a section (it holds 0.001)"),
])
def test_bad_override_is_one_clear_error(tmp_path, override, msg):
    p = _write(tmp_path, "name: t\noptim: {lr: 1.0e-3}\n")
    assert _error(p, override).startswith(msg)

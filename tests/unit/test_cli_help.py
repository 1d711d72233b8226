"""`serving --help` fits one screen, `--help-all` and `--help-<group>` keep every flag, `--version` answers,
and each command has its own help."""

from __future__ import annotations

from dataclasses import fields
from importlib.metadata import version

import pytest

from serving.cli import COMMANDS, COMMON_FLAGS, WIDTH, main
from serving.settings import GROUPS, Settings, grouped
from tests.helpers import run_cli

SETTINGS = fields(Settings)


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `serving ARGV` prints on standard output, having exited 0."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code in (0, None)
    out, err = capsys.readouterr()
    assert err == ""
    return out


def flags_in(text: str) -> set[str]:
    """The flags a help text describes (a line of its own begins with each; others are only mentioned)."""
    starts = {line.split()[0] for line in text.splitlines() if line.lstrip().startswith("--")}
    return {f.name for f in SETTINGS if f"--{f.name}" in starts}


def test_help_fits_one_screen_with_commands_examples_and_the_most_used_flags(capsys):
    text = printed(capsys, "--help")
    lines = text.splitlines()
    assert len(lines) <= 60 and max(map(len, lines)) <= WIDTH
    for command in COMMANDS:
        assert any(line.startswith(f"  {command} ") for line in lines), command
    examples = lines[lines.index("examples:") + 1:lines.index("", lines.index("examples:"))]
    assert len(examples) >= 5 and all(line.lstrip().startswith(("serving ", "MODEL_NAME=")) for line in examples)
    assert flags_in(text) == set(COMMON_FLAGS)
    assert "--help-all" in text and "--version" in text
    assert printed(capsys, "-h") == text


def test_help_all_lists_every_flag_under_its_group(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    lines = printed(capsys, "--help-all").splitlines()
    headings = [lines.index(f"{group}:") for group in GROUPS]
    assert headings == sorted(headings)
    for f in SETTINGS:
        (at,) = [i for i, line in enumerate(lines) if line.lstrip().startswith(f"--{f.name} ")]
        assert list(GROUPS)[[h < at for h in headings].count(True) - 1] == f.metadata["group"], f.name


@pytest.mark.parametrize("group", list(GROUPS))
def test_help_of_a_group_lists_that_groups_flags_only(capsys, monkeypatch, group):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag, the text about them unwrapped
    expected = {f.name for g, group_fields in grouped() if g == group for f in group_fields}
    assert expected and flags_in(printed(capsys, f"--help-{group}")) == expected


def test_version_is_the_installed_packages(capsys):
    assert printed(capsys, "--version") == f"serving-engine {version('serving-engine')}\n"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_its_own_help(capsys, command):
    assert printed(capsys, command, "--help").startswith(f"usage: serving {command} ")


def test_a_mistyped_command_names_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["banch", "--url", "http://x"])
    assert e.value.code == ("serving: unknown command 'banch'; the commands are bench, warmup-from-log, queue, and "
                            "the server takes flags only (serving --help)")


def test_help_and_version_from_the_command_line():
    help_text = run_cli("--help")
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: serving [FLAGS]")
    assert len(help_text.stdout.splitlines()) <= 60 and help_text.stderr == ""
    assert run_cli("--version").stdout == f"serving-engine {version('serving-engine')}\n"
    bad = run_cli("--no_such_flag")  # argparse's error names the short usage, not 90 flags
    assert bad.returncode == 2 and bad.stderr.startswith("usage: serving [FLAGS] | serving COMMAND [ARGS]\n")

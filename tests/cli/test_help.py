"""cpmc-prune's help: every option of every subcommand has a help text and a default."""

from __future__ import annotations

import argparse

import pytest

import cpmc_plugin.cli.commands as cli_main
from cpmc_plugin.cli import build_parser, main

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_subcommand_has_help_and_a_default() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == set(cli_main.COMMANDS)
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {action.option_strings}"
            assert action.help and action.help.strip(), where
            shown = formatter._get_help_string(action)
            assert "default" in shown or action.required, where
            assert not shown.endswith("(default: None)"), where
            if action.required:
                assert shown.endswith("(required)"), where


def test_help_shows_help_text_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "how channels are ranked (default: cpmc)" in text
    assert "iterative pruning steps (default: 1)" in text
    assert "(default: 0.5 unless --params-reduction is given)" in text
    assert "the checkpoint to prune (required)" in text

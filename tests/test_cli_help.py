"""Every ``meshcore`` subcommand's ``--help`` says what it does, and each option what it is."""

from __future__ import annotations

import argparse

import pytest

from meshcore.cli import build_parser, main
from meshcore.testing.upstreams import PATHS


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def help_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_there_are_subcommands_to_check() -> None:
    assert {"validate", "check-routes", "plugins", "proxy", "upstream", "demo"} <= set(subcommands())


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_each_subcommand_says_what_it_does(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = subcommands()[name]
    assert parser.description is not None
    assert len(parser.description.split()) >= 10, f"`meshcore {name} --help` says too little"
    text = " ".join(help_of(capsys, name).split())
    assert " ".join(parser.description.split()) in text
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"`meshcore {name}` option {action.option_strings or action.dest} has no help"


def test_the_upstream_lists_the_paths_it_answers(capsys: pytest.CaptureFixture[str]) -> None:
    lines = help_of(capsys, "upstream").splitlines()
    for path, what in PATHS.items():
        assert f"  {path:<16} {what}" in lines, f"`meshcore upstream --help` lacks {path}"

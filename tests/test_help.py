"""``convnext-domains --help`` lists every subcommand, each on one line with what it does."""

from __future__ import annotations

import re

import pytest

from core.entry import main

SUBCOMMANDS = ("fit", "validate", "test", "predict", "pretrain", "export", "predict --bundle",
               "new-domain", "bundle verify")


def help_text(capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def command_of(line: str) -> str | None:
    """The subcommand a help line describes (the longest that starts it: `predict --bundle`)."""
    named = [c for c in SUBCOMMANDS if re.match(rf"  {re.escape(c)}(\s|$)", line)]
    return max(named, key=len) if named else None


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_lists_each_subcommand_on_one_line(command, capsys):
    lines = [ln for ln in help_text(capsys).splitlines() if command_of(ln) == command]
    assert len(lines) == 1, f"'{command}' should have exactly one line in --help, found {lines}"
    # Options and a description after the command: at least two words beyond its name.
    assert len(lines[0].split()) >= len(command.split()) + 2


def test_new_domain_has_its_own_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["new-domain", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--from" in out and "--into" in out and "--dry-run" in out
    assert all(domain in out for domain in ("medical", "agriculture", "manufacturing"))

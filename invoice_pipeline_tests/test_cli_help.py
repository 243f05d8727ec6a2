"""Every subcommand and every option of `invoice-pipeline` says what it does in --help."""

from __future__ import annotations

import argparse
import subprocess
import sys

from invoice_pipeline.cli import build_parser


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    missing = []
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    described = {choice.dest for choice in subparsers._choices_actions if choice.help}
    assert described == set(subparsers.choices), set(subparsers.choices) - described
    for name, sub in [("", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


def test_help_of_the_new_commands_runs() -> None:
    for command in ("status", "run", "dbt-sources"):
        proc = subprocess.run([sys.executable, "-m", "invoice_pipeline.cli", command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr

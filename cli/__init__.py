"""The `gateway` command line: the root click group `cli`, each command group added from its own module (run, ca,
audit, rules, dlp, pac; the options and helpers they share are in cli.common), and `main`, the console script's
entry. gateway.py at the top of the repository is the entry point that exposes them.
"""

from __future__ import annotations

import click

from cli import audit, ca, dlp, pac, rules, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The AI egress gateway: recognise, inspect, decide, enforce and audit traffic to AI services."""


for command in (run.run, ca.ca, audit.audit, rules.rules, dlp.dlp_group, pac.pac):
    cli.add_command(command)


def main() -> None:
    cli()

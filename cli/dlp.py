"""`gateway dlp ...`: the group that holds `gateway dlp scan`, whose command lives with the DLP code in dlp/cli.py."""

from __future__ import annotations

import click

from dlp.cli import scan_command  # click only: the scanner is built when the command runs


@click.group(name="dlp")
def dlp_group() -> None:
    """Run the DLP recognizers on any text, to test your own data and tune rules/recognizers.yaml."""


dlp_group.add_command(scan_command)

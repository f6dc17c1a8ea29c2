"""What the command groups share: the data folder and the names of the files the gateway keeps in it, the options
naming the data folder, the CA folder and the audit store, and `fail`, the one-line error that ends a command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

SPOOL_FILE = "audit-spool.sqlite"
RULES_STATUS_FILE = "rules-status.json"  # written by the running gateway's rules reloader (addons/rules.py)
FIRST_SEEN_FILE = "mcp-first-seen.sqlite"  # MCP tool definitions first seen, shared by the processes (addons/mcp.py)


def default_data_dir() -> Path:
    return Path(os.environ.get("GATEWAY_DATA_DIR") or Path.home() / ".ai-gateway")


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, no traceback: what a person running the command needs."""
    click.echo(f"gateway: error: {message}", err=True)
    sys.exit(code)


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                               default=default_data_dir, show_default="$GATEWAY_DATA_DIR or ~/.ai-gateway",
                               help="Folder for the embedded audit store and the CA.")
confdir_option = click.option("--confdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                              help="mitmproxy's folder holding the CA (default: DATA_DIR/ca).")
audit_option = click.option("--audit", "audit_url", default=None, metavar="URL",
                            help="Audit store: chdb:///path (default DATA_DIR/audit) or "
                                 "http(s)://user:pass@host:port/db.")
password_file_option = click.option(
    "--audit-password-file", "password_file", default="", metavar="FILE",
    help="File whose first line is the audit store password (else $GATEWAY_AUDIT_PASSWORD).")


def _audit_url(audit_url: str | None, data_dir: Path) -> str:
    return audit_url or f"chdb://{(data_dir / 'audit').resolve()}"

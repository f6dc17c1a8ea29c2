"""`gateway rules ...`: check the rules files, decide one request offline (test), and show what a running gateway
has active (status).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from cli.common import RULES_STATUS_FILE, data_dir_option, fail
from core.rulesfile import SHIPPED_RULES


@click.group()
def rules() -> None:
    """Check, try and inspect the rules files (endpoints, policy, identity, recognizers)."""


@rules.command()
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_RULES)
def check(folder: Path) -> None:
    """Validate every rules file of FOLDER (default: the shipped rules/); errors as file:line: message."""
    from policy import ruleset

    if not folder.is_dir():
        fail(f"no such rules folder: {folder}")
    errors = ruleset.check(folder)
    for e in errors:
        click.echo(str(e))
    if errors:
        sys.exit(1)
    loaded = ruleset.load(folder)
    click.echo(f"{folder}: ok ({len(loaded.catalog.services)} services, {len(loaded.policy.rules)} policy rules; "
               f"checked {', '.join(loaded.digests)})")


@rules.command("status")
@data_dir_option
def rules_status(data_dir: Path) -> None:
    """What the running gateway has active, and the last refused edit (file:line: message)."""
    path = data_dir / RULES_STATUS_FILE
    try:
        status = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        fail(f"no rules status in {data_dir} (is a gateway running with --data-dir {data_dir}?)")
    active = status.get("active") or {}
    click.echo(f"rules: {status.get('rules')}\nactive since: {active.get('since')}  reloads: {status.get('reloads')}")
    for name, digest in (active.get("files") or {}).items():
        click.echo(f"  {name}  {digest}")
    error = status.get("error")
    if error:
        where = f"{error['file']}:{error['line']}" if error.get("line") else error["file"]
        click.echo(f"last edit REFUSED at {error['at']} (the rules above stay active):\n{where}: {error['message']}")
        sys.exit(1)
    click.echo("last reload: ok")


@rules.command("test")
@click.option("--user", default="", help="Who is asking (as proxy authentication would name them).")
@click.option("--group", "groups", multiple=True, help="A group of the user, besides identity.yaml (repeatable).")
@click.option("--client-addr", default="127.0.0.1", show_default=True, help="The client's address.")
@click.option("--url", required=True, help="The request URL, e.g. https://api.openai.com/v1/chat/completions.")
@click.option("--method", default="POST", show_default=True)
@click.option("--body", "body_file", type=click.File("rb"), default=None, help="Request body file (- for stdin).")
@click.option("--inspection", default="inspected", show_default=True,
              help="Pretend the inspection ended so (e.g. errored) to see the rules' fail modes.")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_RULES,
              show_default="the shipped rules/")
def rules_test(user: str, groups: tuple[str, ...], client_addr: str, url: str, method: str, body_file,
               inspection: str, rules_dir: Path) -> None:
    """Decide one request offline: the decision, the rule, the findings and the body that would go upstream."""
    from urllib.parse import urlsplit

    from core.rulesfile import RulesError
    from policy import ruleset
    from policy.tryout import try_request

    try:
        loaded = ruleset.load(rules_dir)
    except RulesError as e:
        fail(str(e))
    parts = urlsplit(url)
    if not parts.hostname:
        fail(f"not a URL: {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = body_file.read() if body_file else b""
    click.echo(try_request(loaded, user, groups, client_addr, method.upper(), parts.hostname, path, body,
                           inspection), nl=False)

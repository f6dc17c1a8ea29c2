"""`gateway pac`: the proxy auto-config file that sends only AI hosts (the catalog's) through the gateway.

The same file a running gateway serves at /proxy.pac and /wpad.dat on its metrics port (addons/metrics.py), for
those who publish it elsewhere (a web server, an MDM profile, a GPO).
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import fail
from core.rulesfile import SHIPPED_RULES


@click.command()
@click.option("--proxy", "proxies", multiple=True, required=True, metavar="HOST:PORT",
              help="A gateway address clients use (repeatable: tried in the order given, for failover).")
@click.option("--direct-fallback", is_flag=True,
              help="End the list with DIRECT: AI traffic goes uninspected when no gateway answers.")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_RULES,
              show_default="the shipped rules/", help="Folder of rules files (its endpoints.yaml is read).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the file here instead of standard output.")
def pac(proxies: tuple[str, ...], direct_fallback: bool, rules_dir: Path, output: Path | None) -> None:
    """Print a PAC file: the catalog's AI hosts through the gateway(s), every other host DIRECT."""
    from core.catalog import Catalog
    from core.pac import PacError, render
    from core.rulesfile import RulesError

    try:
        text = render(Catalog.load(rules_dir / "endpoints.yaml"), list(proxies), direct_fallback)
    except (RulesError, PacError) as e:
        fail(str(e))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as e:
        fail(f"cannot write {output}: {e.strerror}")

"""`gateway dlp scan`: run the configured recognizers on any text, so a team can test its own data and tune rules.

Values are masked in the output (`jo********om (22)`): the command is meant to be run on real data, and its output
ends up in terminals, tickets and chat.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from core.rulesfile import SHIPPED_RULES
from dlp.injection import SOURCES



@click.command("scan")
@click.argument("source", default="-", type=click.File("r", encoding="utf-8", errors="replace"), metavar="[FILE|-]")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, path_type=Path), default=SHIPPED_RULES,
              show_default="the shipped rules/", help="Folder holding recognizers.yaml (or the file itself).")
@click.option("--source", "source_of", type=click.Choice(SOURCES), default="user", show_default=True,
              help="Where the text comes from: prompt-injection findings are scored for it (rules/injection.yaml), "
                   "as the gateway scores a request part.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: one object per line.")
def scan_command(source, rules_dir: Path, source_of: str, fmt: str) -> None:
    """Scan FILE (or standard input) and list the findings, values masked: personal data and secrets, and prompt
    injection (PROMPT_INJECTION, HIDDEN_INSTRUCTIONS, EXFILTRATION_LINK) scored for `--source`."""
    from core.rulesfile import RulesError
    from dlp.injection import by_source, rules_near
    from dlp.redact import mask
    from dlp.scanner import Scanner

    try:
        scanner = Scanner.from_rules(rules_dir)
    except RulesError as e:
        raise click.ClickException(str(e)) from None
    text = source.read()
    findings = by_source(scanner.scan(text), [source_of], rules_near(str(scanner.rules.file)))
    rows = [{"entity": f.entity, "score": f.score, "part": f.part, "source": f.source, "start": f.start,
             "end": f.end, "recognizer": f.recognizer, "stage": f.stage or "stable",
             "value": mask(text[f.start:f.end])} for f in findings]
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no findings in {len(text)} characters")
        return
    header = ("entity", "score", "part", "source", "span", "value", "recognizer")
    table = [(r["entity"], f"{r['score']:.2f}", str(r["part"]), r["source"], f"{r['start']}-{r['end']}", r["value"],
              r["recognizer"] + (" (experimental)" if r["stage"] == "experimental" else "")) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    for row in [header, *table]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo(f"{len(rows)} finding(s) in {len(text)} characters")

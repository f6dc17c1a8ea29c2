"""`gateway`: the AI egress gateway's command line.

    gateway run              start the proxy (mitmproxy + the gateway addons)
    gateway ca               where the CA certificate is (clients must trust it)
    gateway audit search     query the audit log (works while the gateway runs on the embedded store)
    gateway dlp scan         run the DLP recognizers on any text
    gateway rules check      validate the rules files (file:line: message, exit status 1)
    gateway rules test       decide one request offline: decision, rule, findings, body sent upstream
    gateway rules status     the rules a running gateway has active, and its last refused edit
    gateway pac              a PAC file sending only AI hosts through the gateway (also served at /proxy.pac)

The commands live in the `cli` package, one module per group; this file is the entry point (`python gateway.py`,
`python -m gateway`, the `gateway` console script).
"""

from __future__ import annotations

from cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()

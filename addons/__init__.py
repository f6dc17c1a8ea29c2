"""The gateway's mitmproxy addons, one concern each, in the order they see a flow.

recognise -> identify -> admission (a bound on the request bodies held at once) -> extract -> inspect (DLP) ->
decide -> redact -> audit (counted for Prometheus by metrics; the admin socket answers audit queries from the CLI;
the reloader applies rules edits).
`default_addons()` is what `gateway run` loads; each addon can also be loaded on its own with `mitmdump -s`.
"""

from __future__ import annotations


def default_addons() -> list:
    from addons.admin import AdminSocket
    from addons.admission import Admission
    from addons.audit import Audit
    from addons.decide import Decide
    from addons.extract import Extract
    from addons.identify import Identify
    from addons.inspect import Inspect
    from addons.metrics import Metrics
    from addons.recognise import Recognise
    from addons.redact import Redact
    from addons.reload import RulesReload
    from addons.websocket import WebSocketAudit

    return [Recognise(), Identify(), Admission(), Extract(), Inspect(), WebSocketAudit(), Decide(), Redact(),
            Audit(), Metrics(), AdminSocket(), RulesReload()]

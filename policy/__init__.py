"""Allow-list policy: the language (`policy.language`), the engine (`policy.engine`), who is asking
(`policy.identity`) and what a blocked client is shown (`policy.enforcement`). Pure: no mitmproxy here."""

from policy.engine import (Decision, Request, Subject, decide, decide_response, findings_matter, is_shadow_ai,
                           wants_response_scan)
from policy.language import Policy, Rule, load

__all__ = ["Decision", "Policy", "Request", "Rule", "Subject", "decide", "decide_response", "findings_matter",
           "is_shadow_ai", "load", "wants_response_scan"]

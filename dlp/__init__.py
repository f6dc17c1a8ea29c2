"""DLP: find personal data, secrets and company terms in AI traffic, redact them, restore them in answers.

Pure Python, no mitmproxy. The package is split so that the proxy process stays light: `dlp.scanner.Finding`,
`dlp.redact` and `dlp.pool` import neither Presidio nor spaCy; only the worker processes that build a `Scanner`
do (Presidio costs about a second and 100 MB per process).
"""

import os

# Presidio's email recognizer validates domains with tldextract, which fetches the public suffix list from the
# network on first use unless told not to; the gateway runs where egress is filtered, so use the bundled snapshot.
# Set before anything below imports presidio (every module of the package imports this one first).
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

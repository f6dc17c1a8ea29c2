"""The media types of JSON lines and of streamed answers, named once for the stages that read them.

A request body in one of JSON_LINES_TYPES is read as text by the whole-body walk (providers/walk.py), not parsed
as one JSON value; an answer in one of NDJSON_TYPES is read line by line by the placeholder restorer
(dlp/answer.py) and the tool-call guard (providers/toolcalls.py); an answer in one of STREAM_TYPES is streamed
through a tap, never buffered (addons/extract.py).

Pure: no mitmproxy (dlp/ and providers/ import it).
"""

from __future__ import annotations

SSE_TYPE = "text/event-stream"
EVENTSTREAM_TYPE = "application/vnd.amazon.eventstream"  # AWS's binary event stream (Bedrock)
#: Newline-delimited JSON: one JSON value a line (Ollama, Cohere v1's `stream+json`), under the names in use.
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/stream+json")
#: JSON text sequences (RFC 7464): each value after a record separator (0x1E). Lines of JSON to the walk, but not
#: NDJSON to a line reader (a line starts with the separator).
JSON_SEQ_TYPE = "application/json-seq"
#: Request bodies of several JSON values: read as text, never as one JSON value.
JSON_LINES_TYPES = (*NDJSON_TYPES, JSON_SEQ_TYPE)
#: Answers that are streamed event by event whatever the request said.
STREAM_TYPES = (SSE_TYPE, EVENTSTREAM_TYPE, *NDJSON_TYPES)

"""The media types of JSON lines and streamed answers (core/mediatypes.py): one list, read alike by every stage."""

from __future__ import annotations

import pytest

from core import mediatypes
from core.exchange import ToolCall
from providers import toolcalls


def allow(call: ToolCall) -> str | None:
    return None


@pytest.mark.parametrize("content_type", mediatypes.NDJSON_TYPES)
def test_every_name_of_ndjson_is_guarded_line_by_line(content_type):
    """`application/x-jsonlines`, which the walk of requests read as lines already, is guarded in answers too."""
    for fmt in (toolcalls.OLLAMA, toolcalls.COHERE_V1):
        assert isinstance(toolcalls.stream_guard(fmt, content_type, allow), toolcalls.NdjsonGuard)


def test_json_text_sequences_are_lines_to_the_walk_but_not_ndjson():
    assert mediatypes.JSON_SEQ_TYPE in mediatypes.JSON_LINES_TYPES
    assert mediatypes.JSON_SEQ_TYPE not in mediatypes.STREAM_TYPES
    assert toolcalls.stream_guard(toolcalls.OLLAMA, mediatypes.JSON_SEQ_TYPE, allow) is None


def test_the_stages_use_the_one_list():
    from addons import extract
    from dlp import answer
    from providers import walk

    assert extract.STREAM_TYPES is mediatypes.STREAM_TYPES and walk.JSON_LINES_TYPES is mediatypes.JSON_LINES_TYPES
    assert answer.NDJSON_TYPES is toolcalls.NdjsonGuard.CONTENT_TYPES is mediatypes.NDJSON_TYPES
    assert set(mediatypes.NDJSON_TYPES) <= set(mediatypes.STREAM_TYPES) & set(mediatypes.JSON_LINES_TYPES)

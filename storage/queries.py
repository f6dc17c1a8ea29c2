"""Named, parameterized audit queries: the only queries the CLI and the admin socket run.

Filters become ClickHouse query parameters ({name:Type}); no value from a user is ever spliced into SQL text.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.store import EVENT_COLUMNS, Store


_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> datetime:
    """`90s`, `15m`, `1h`, `7d`, `2w` before now, or an ISO timestamp (UTC if naive)."""
    m = _DURATION.match(value.strip())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid time {value!r}: use e.g. 15m, 1h, 7d or an ISO timestamp") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def search(store: Store, *, since: str = "24h", service: str = "", user: str = "", limit: int = 100
           ) -> tuple[list[str], list[tuple]]:
    where = ["ts >= {since:DateTime64(3, 'UTC')}"]
    params: dict[str, Any] = {"since": parse_since(since).replace(tzinfo=None), "limit": max(1, min(int(limit),
                                                                                                   100_000))}
    if service:
        where.append("service = {service:String}")
        params["service"] = service
    if user:
        where.append("user = {user:String}")
        params["user"] = user
    sql = (f"SELECT {', '.join(EVENT_COLUMNS)} FROM events FINAL WHERE {' AND '.join(where)} "
           "ORDER BY ts DESC LIMIT {limit:UInt32}")
    return store.query(sql, params)


QUERIES = {"search": search}

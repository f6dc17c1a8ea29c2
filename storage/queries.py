"""Named, parameterized audit queries: the only queries the CLI and the admin socket run.

Filters become ClickHouse query parameters ({name:Type}); no value from a user is ever spliced into SQL text.
The only SQL fragments chosen by a caller are picked from fixed tables here (`STATS_KEYS`), by name. Every
query reads deduplicated rows (FINAL), so an event the writer replayed after a crash is counted once; `tail` is
the exception (it follows inserts as they come) and the CLI drops the replays it has already shown.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.store import EVENT_COLUMNS, Store

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_LIMIT = 100_000
TS = "DateTime64(3, 'UTC')"


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


def _naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


class Filters:
    """WHERE conditions over events, each value a query parameter."""

    def __init__(self, *, since: str = "24h", until: str = "", user: str = "", group: str = "",
                 service: str = "", category: str = "", model: str = "", decision: str = "", entity: str = "",
                 text: str = ""):
        self.where = [f"ts >= {{since:{TS}}}"]
        self.params: dict[str, Any] = {"since": _naive_utc(parse_since(since))}
        if until:
            self.add(f"ts < {{until:{TS}}}", until=_naive_utc(parse_since(until)))
        for column, value in (("user", user), ("service", service), ("category", category), ("model", model),
                              ("decision", decision)):
            if value:
                self.add(f"{column} = {{{column}:String}}", **{column: value})
        if group:
            self.add("has(groups, {group:String})", group=group)
        if entity:
            self.add("has(entity_types, {entity:String})", entity=entity)
        if text:
            self.add("(positionCaseInsensitiveUTF8(prompt, {text:String}) > 0 OR "
                     "positionCaseInsensitiveUTF8(completion, {text:String}) > 0)", text=text)

    def add(self, condition: str, **params: Any) -> None:
        self.where.append(condition)
        self.params.update(params)

    @property
    def sql(self) -> str:
        return " AND ".join(self.where)


def search(store: Store, *, limit: int = 100, **filters: str) -> tuple[list[str], list[tuple]]:
    """Events matching every given filter, newest first."""
    f = Filters(**filters)
    f.params["limit"] = _limit(limit)
    return store.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events FINAL WHERE {f.sql} "
                       "ORDER BY ts DESC LIMIT {limit:UInt32}", f.params)


def show(store: Store, *, event_id: str) -> tuple[list[str], list[tuple]]:
    """One event, every column."""
    try:
        uuid.UUID(str(event_id))
    except ValueError:
        raise ValueError(f"invalid event id {event_id!r}: expected a UUID") from None
    return store.query(f"SELECT {', '.join(EVENT_COLUMNS)}, inserted_at FROM events FINAL "
                       "WHERE event_id = {event_id:UUID} LIMIT 1", {"event_id": str(event_id)})


#: What `stats --by` may group on: name -> (FROM/ARRAY JOIN tail, key expression, value expression).
STATS_KEYS = {
    "user": ("", "if(user = '', client_addr, user)", "count()"),
    "service": ("", "service", "count()"),
    "decision": ("", "decision", "count()"),
    "category": ("", "category", "count()"),
    "model": ("", "model", "count()"),
    "entity": ("ARRAY JOIN entity_types AS entity_type, entity_counts AS entity_count", "entity_type",
               "sum(entity_count)"),
}
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}


def stats(store: Store, *, by: str = "service", bucket: str = "day", limit: int = 1000, **filters: str
          ) -> tuple[list[str], list[tuple]]:
    """Counts per time bucket and key (events; for `entity`, findings)."""
    if by not in STATS_KEYS:
        raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(STATS_KEYS)}")
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}: choose one of {', '.join(BUCKETS)}")
    join, key, value = STATS_KEYS[by]
    f = Filters(**filters)
    f.params.update(bucket=BUCKETS[bucket], limit=_limit(limit))
    return store.query(
        f"SELECT toStartOfInterval(ts, toIntervalSecond({{bucket:UInt32}})) AS bucket, {key} AS {by}, "
        f"{value} AS count FROM events FINAL {join} WHERE {f.sql} "
        f"GROUP BY bucket, {by} ORDER BY bucket, count DESC, {by} LIMIT {{limit:UInt32}}", f.params)


def shadow_ai(store: Store, *, since: str = "30d", until: str = "", limit: int = 1000
              ) -> tuple[list[str], list[tuple]]:
    """Unsanctioned AI services seen, from decrypted exchanges and tunnelled connections: who, how much, when."""
    params: dict[str, Any] = {"since": _naive_utc(parse_since(since)), "limit": _limit(limit)}
    where = f"ts >= {{since:{TS}}} AND NOT sanctioned"
    if until:
        where += f" AND ts < {{until:{TS}}}"
        params["until"] = _naive_utc(parse_since(until))
    return store.query(
        "SELECT service, any(category) AS category, "
        "uniqExact(if(user = '', client_addr, user)) AS users, countIf(kind = 'exchange') AS requests, "
        "countIf(kind = 'connection') AS connections, sum(ifNull(bytes, 0)) AS bytes, "
        "min(ts) AS first_seen, max(ts) AS last_seen, "
        "arraySort(groupUniqArray(10)(if(user = '', client_addr, user))) AS some_users "
        f"FROM audit_ai_use WHERE {where} GROUP BY service ORDER BY users DESC, requests DESC, service "
        "LIMIT {limit:UInt32}", params)


def tools(store: Store, *, since: str = "30d", until: str = "", user: str = "", server: str = "",
          limit: int = 1000) -> tuple[list[str], list[tuple]]:
    """The tool inventory: each tool (by server and name) offered, listed or called, by whom, how often, first and
    last seen. `definitions` counts the distinct definitions seen: more than one is a tool whose description or
    schema changed (a "rug pull", or a new version); `also_on` names other servers offering a tool of that name
    (one server shadowing another's tool)."""
    params: dict[str, Any] = {"since": _naive_utc(parse_since(since)), "limit": _limit(limit)}
    where = f"ts >= {{since:{TS}}}"
    if until:
        where += f" AND ts < {{until:{TS}}}"
        params["until"] = _naive_utc(parse_since(until))
    for column, value in (("user", user), ("tool_server", server)):
        if value:
            where += f" AND {column} = {{{column}:String}}"
            params[column] = value
    return store.query(
        "SELECT tool_server AS server, tool_name AS tool, uniqExact(user) AS users, "
        "countIf(tool_kind = 'called') AS calls, countIf(tool_kind != 'called') AS offered, "
        "uniqExactIf(tool_digest, tool_digest != '') AS definitions, "
        "arrayFilter(s -> s != tool_server, any(servers_of_name)) AS also_on, "
        "min(ts) AS first_seen, max(ts) AS last_seen, arraySort(groupUniqArray(10)(user)) AS some_users "
        "FROM (SELECT *, groupUniqArrayIf(tool_server, tool_kind != 'called') OVER (PARTITION BY tool_name) "
        f"      AS servers_of_name FROM audit_tools WHERE {where}) "
        "GROUP BY server, tool ORDER BY users DESC, calls DESC, server, tool LIMIT {limit:UInt32}", params)


def tail(store: Store, *, after: str = "1m", limit: int = 1000) -> tuple[list[str], list[tuple]]:
    """Events inserted at or after `after` (an ISO time or a duration ago), oldest first: what `audit tail`
    polls. Rows are not deduplicated here: a replayed event shows again with a later inserted_at."""
    return store.query(
        f"SELECT {', '.join(EVENT_COLUMNS)}, inserted_at FROM events "
        f"WHERE inserted_at >= {{after:{TS}}} ORDER BY inserted_at, event_id LIMIT {{limit:UInt32}}",
        {"after": _naive_utc(parse_since(after)), "limit": _limit(limit)})


QUERIES = {"search": search, "show": show, "stats": stats, "shadow-ai": shadow_ai, "tools": tools, "tail": tail}

"""The named audit queries on the real engine (chdb), over a seeded store; and the Grafana dashboard's SQL.

One store for the module (chdb runs one store path per process at a time; it is closed at module end).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.audit import AuditEvent, ConnectionEvent
from storage.queries import QUERIES, search, shadow_ai, show, stats, tail
from storage.store import Store

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "ai-gateway-audit.json"
NOW = datetime.now(UTC)


@dataclass
class Finding:
    entity: str
    part: int
    start: int
    end: int
    score: float = 0.8


def event(minutes_ago: float, **kw) -> AuditEvent:
    findings = kw.pop("findings", [])
    e = AuditEvent(ts=NOW - timedelta(minutes=minutes_ago), **kw)
    e.set_findings(findings)
    return e


SEED = [
    event(5, user="alice", groups=["eng"], service="openai", category="api", sanctioned=True, model="gpt-4o",
          decision="allow", prompt="[user] explain kubernetes", completion="pods...", tool_kinds=["offered"],
          tool_names=["run_shell"], tool_servers=[""], tool_digests=["0123456789abcdef"]),
    event(10, user="alice", groups=["eng"], service="openai", category="api", sanctioned=True, model="gpt-4o",
          decision="redact", prompt="[user] mail <EMAIL_ADDRESS>", rule_id="pii",
          findings=[Finding("EMAIL_ADDRESS", 0, 5, 20), Finding("EMAIL_ADDRESS", 0, 30, 40)]),
    event(65, user="bob", groups=["sales", "emea"], service="deepseek", category="chat", sanctioned=False,
          model="deepseek-chat", decision="block", prompt="[user] O'Brien; DROP TABLE x -- quarterly numbers",
          request_bytes=100, response_bytes=50, findings=[Finding("CREDIT_CARD", 0, 1, 17)]),
    event(60 * 30, user="carol", service="openai", category="api", sanctioned=True, decision="allow",
          prompt="[user] old"),  # 30 hours ago: outside the default 24h
    event(20, user="", client_addr="10.0.0.9", service="perplexity", category="srch", sanctioned=False,
          decision="monitor", prompt="[user] who is", request_bytes=10, response_bytes=20),
]
DUPLICATE = SEED[0]  # the writer may replay an event after a crash: inserted twice, counted once
CONNECTIONS = [
    ConnectionEvent(ts=NOW - timedelta(minutes=15), client_addr="10.0.0.7", user="dave", host="claude.ai",
                    service="claude-web", category="chat", sanctioned=False, reason="certificate pinning",
                    duration_ms=1200.0),
    ConnectionEvent(ts=NOW - timedelta(minutes=3), client_addr="10.0.0.9", host="www.perplexity.ai",
                    service="perplexity", category="srch", sanctioned=False, duration_ms=50.0),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store.open(f"chdb://{tmp_path_factory.mktemp('queries') / 'audit'}")
    s.insert_events(SEED)
    s.insert_events([DUPLICATE])
    s.insert("connections", [c.as_row() for c in CONNECTIONS])
    yield s
    s.close()


def rows_as_dicts(result) -> list[dict]:
    columns, rows = result
    return [dict(zip(columns, r)) for r in rows]


def ids(result) -> set[str]:
    return {str(r["event_id"]) for r in rows_as_dicts(result)}


def seed_ids(*indexes: int) -> set[str]:
    return {SEED[i].event_id for i in indexes}


def test_search_defaults_to_the_last_day_newest_first_deduplicated(store):
    found = rows_as_dicts(search(store))
    assert [str(r["event_id"]) for r in found] == [SEED[i].event_id for i in (0, 1, 4, 2)]


@pytest.mark.parametrize("filters, expected", [
    ({"user": "alice"}, (0, 1)),
    ({"group": "emea"}, (2,)),
    ({"service": "deepseek"}, (2,)),
    ({"category": "api"}, (0, 1)),
    ({"model": "gpt-4o"}, (0, 1)),
    ({"decision": "block"}, (2,)),
    ({"entity": "EMAIL_ADDRESS"}, (1,)),
    ({"text": "KUBERNETES"}, (0,)),
    ({"text": "pods"}, (0,)),  # completion text too
    ({"text": "O'Brien; DROP TABLE x --"}, (2,)),  # SQL-looking text is just text
    ({"since": "2d"}, (0, 1, 2, 3, 4)),
    ({"since": "2d", "until": "1h"}, (2, 3)),
    ({"user": "alice", "decision": "redact", "entity": "EMAIL_ADDRESS"}, (1,)),
])
def test_search_filters(store, filters, expected):
    assert ids(search(store, **filters)) == seed_ids(*expected)


HOSTILE = ["' OR 1=1 --", "x'; DROP TABLE events; --", "\" OR \"\"=\"", "'; SELECT * FROM events; --",
           "\\' OR 1=1 #", "alice' UNION ALL SELECT * FROM events --", "%", "z_z", "%_%", ") OR (1=1",
           "{user:String}", "SELECT", "1; TRUNCATE TABLE events"]


@pytest.mark.parametrize("field", ["user", "group", "service", "category", "model", "decision", "entity", "text"])
def test_hostile_filter_values_match_nothing_and_change_nothing(store, field):
    for value in HOSTILE:
        assert search(store, since="2d", **{field: value})[1] == [], (field, value)
    assert len(search(store, since="2d")[1]) == len(SEED)  # the table is intact


def test_hostile_values_in_other_queries(store):
    for value in HOSTILE:
        assert stats(store, by="user", user=value)[1] == []
        with pytest.raises(ValueError):
            show(store, event_id=value)
        with pytest.raises(ValueError):
            stats(store, by=value)
        with pytest.raises(ValueError):
            search(store, since=value)


def test_show_one_event_every_column(store):
    [row] = rows_as_dicts(show(store, event_id=SEED[1].event_id))
    assert row["rule_id"] == "pii" and row["finding_entities"] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]
    assert (row["finding_starts"], row["finding_ends"]) == ([5, 30], [20, 40])
    assert row["inserted_at"] is not None
    assert show(store, event_id="00000000-0000-4000-8000-000000000000")[1] == []


def totals(result, key: str) -> dict[str, int]:
    """Counts per key summed over buckets (a bucket boundary may fall inside the seeded hours)."""
    out: dict[str, int] = {}
    for r in rows_as_dicts(result):
        out[r[key]] = out.get(r[key], 0) + r["count"]
    return out


def test_stats_by_each_key(store):
    assert totals(stats(store, by="service", since="2d"), "service") == {"openai": 3, "deepseek": 1,
                                                                           "perplexity": 1}
    assert totals(stats(store, by="user"), "user") == {"alice": 2, "bob": 1, "10.0.0.9": 1}
    assert totals(stats(store, by="decision"), "decision") == {"allow": 1, "redact": 1, "block": 1, "monitor": 1}
    assert totals(stats(store, by="entity"), "entity") == {"EMAIL_ADDRESS": 2, "CREDIT_CARD": 1}
    assert totals(stats(store, by="model", category="api"), "model") == {"gpt-4o": 2}
    hourly = rows_as_dicts(stats(store, by="service", bucket="hour", service="openai"))
    assert sum(r["count"] for r in hourly) == 2 and all(r["bucket"].minute == 0 for r in hourly)


def test_shadow_ai_from_events_and_tunnelled_connections(store):
    found = {r["service"]: r for r in rows_as_dicts(shadow_ai(store))}
    assert set(found) == {"deepseek", "perplexity", "claude-web"}  # sanctioned openai is not shadow AI
    assert (found["deepseek"]["users"], found["deepseek"]["requests"], found["deepseek"]["bytes"]) == (1, 1, 150)
    assert (found["perplexity"]["requests"], found["perplexity"]["connections"]) == (1, 1)
    assert found["perplexity"]["some_users"] == ["10.0.0.9"]
    assert (found["claude-web"]["connections"], found["claude-web"]["some_users"]) == (1, ["dave"])
    assert found["perplexity"]["first_seen"] < found["perplexity"]["last_seen"]


def test_tail_follows_inserts_and_shows_replays(store):
    rows = rows_as_dicts(tail(store, after="10m"))
    assert [str(r["event_id"]) for r in rows].count(DUPLICATE.event_id) == 2  # the CLI drops the second
    later = rows_as_dicts(tail(store, after=rows[-1]["inserted_at"].isoformat()))
    assert later and later[-1]["inserted_at"] == rows[-1]["inserted_at"]


def test_every_cli_query_is_named():
    assert set(QUERIES) == {"search", "show", "stats", "shadow-ai", "tools", "tail"}


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["rawSql"]) for p in dash["panels"] for t in p["targets"]]


def test_dashboard_is_for_the_clickhouse_plugin():
    dash = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("by service", "by user", "block", "entity", "shadow ai"):
        assert topic in titles
    for p in dash["panels"]:
        assert p["datasource"]["type"] == "grafana-clickhouse-datasource"
        assert all(t["editorType"] == "sql" and "$__timeFilter(ts)" in t["rawSql"] for t in p["targets"])


@pytest.mark.parametrize("title, sql", dashboard_queries())
def test_dashboard_sql_runs(store, title, sql):
    """The plugin's macros expanded as it expands them; the query runs on the real engine and sees the seed."""
    sql = sql.replace("$__timeFilter(ts)", "ts >= now() - INTERVAL 7 DAY AND ts <= now()")
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 3600 second)", sql)
    assert "$" not in sql
    _, rows = store.query(sql, {})
    assert rows, title

"""The audit schema on the real engine (chdb): creation, migration of an older store, TTLs, cluster DDL.

chdb runs one store path per process at a time, so every test here opens its own store and closes it.
"""

from __future__ import annotations

import re
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from core.audit import AuditEvent
from storage.schema import Target, migrations, migrations_table, render
from storage.store import EVENT_COLUMNS, Store


@contextmanager
def opened(path, **kwargs):
    store = Store.open(f"chdb://{path}", **kwargs)
    try:
        yield store
    finally:
        store.close()


def create_table(store: Store, table: str) -> str:
    return store.query(f"SHOW CREATE TABLE {table}", {})[1][0][0]


def test_new_store_has_every_version_tables_and_views(tmp_path):
    with opened(tmp_path / "audit") as store:
        versions = [r[0] for r in store.query("SELECT version FROM schema_migrations ORDER BY version", {})[1]]
        assert versions == [m.version for m in migrations()]
        tables = {r[0]: r[1] for r in store.query(
            "SELECT name, engine FROM system.tables WHERE database = currentDatabase()", {})[1]}
        assert tables["events"] == tables["connections"] == "ReplacingMergeTree"
        assert tables["audit_events"] == tables["audit_findings"] == tables["audit_ai_use"] == "View"
        columns = [r[0] for r in store.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'events'", {})[1]]
        assert set(EVENT_COLUMNS) <= set(columns)


def test_v1_store_is_migrated_and_keeps_its_rows(tmp_path):
    """A store as the first release created it (only migration 1, with a v1 row) is brought to the current
    version on open; the old row is still there, read with the new columns' defaults."""
    path = tmp_path / "audit"
    with opened(path) as fresh:  # an engine on this path, then rebuild it as v1 by hand
        for t in ("audit_events", "audit_findings", "audit_ai_use", "audit_finding_sources", "events", "connections",
                  "schema_migrations"):
            fresh.client.command(f"DROP TABLE IF EXISTS {t}")
        for stmt in migrations_table() + migrations()[0].statements:
            fresh.client.command(stmt)
        fresh.client.insert("schema_migrations", [[1, "events table"]], column_names=["version", "description"])
        v1_columns = ["event_id", "ts", "user", "service", "prompt", "decision"]
        old_id = str(uuid.uuid4())
        fresh.client.insert("events", [[old_id, datetime.now(UTC), "alice", "openai", "old prompt", "allow"]],
                            column_names=v1_columns)
        assert "groups" not in create_table(fresh, "events")
    with opened(path) as store:
        assert [r[0] for r in store.query("SELECT version FROM schema_migrations ORDER BY version", {})[1]] == [1, 2, 3, 4, 5, 6]
        _, rows = store.query("SELECT user, prompt, capture, source, groups, entity_types, coverage FROM events "
                                 "WHERE event_id = {id:UUID}", {"id": old_id})
        assert rows == [("alice", "old prompt", "full", "http", [], [], [])]
        _, rows = store.query("SELECT coverage FROM audit_events WHERE event_id = {id:UUID}", {"id": old_id})
        assert rows == [([],)]  # the dashboard view shows the column added later  # v1 kept raw text: capture 'full'
        stamp = "SELECT inserted_at FROM events WHERE event_id = {id:UUID}"
        first = store.query(stamp, {"id": old_id})[1]
        time.sleep(0.01)
        assert store.query(stamp, {"id": old_id})[1] == first  # materialized once, not "now" at every read
        assert "justification String CODEC(ZSTD(3)) TTL" in create_table(store, "events").replace("`", "")
        assert "prompt_ngram" not in create_table(store, "events")  # v6


def skip_indexes(store: Store) -> set[str]:
    return {r[0] for r in store.query("SELECT name FROM system.data_skipping_indices "
                                      "WHERE database = currentDatabase() AND table = 'events'", {})[1]}


def users(result: tuple[list[str], list[tuple]]) -> list[str]:
    columns, rows = result
    return [r[columns.index("user")] for r in rows]


def test_the_prompt_ngram_index_is_dropped_from_new_and_existing_stores(tmp_path):
    """v6: the ngram filter no query could use (text search is case-insensitive) is gone, from a new store and
    from a v5 store that has it, rows and the other skip indexes kept; text search finds the same rows."""
    from storage.queries import search

    path = tmp_path / "audit"
    with opened(path) as store:
        assert skip_indexes(store) == {"entity_bf", "sha_bf"}
        # back to v5: the index as migration 1 made it, with a part that holds it
        store.client.command("ALTER TABLE events ADD INDEX prompt_ngram prompt TYPE ngrambf_v1(3, 65536, 2, 0) "
                             "GRANULARITY 4")
        store.client.command("DELETE FROM schema_migrations WHERE version = 6")
        store.insert_events([AuditEvent(user="alice", prompt="[user] Quarterly numbers, please"),
                             AuditEvent(user="bob", prompt="[user] hello")])
        assert skip_indexes(store) == {"prompt_ngram", "entity_bf", "sha_bf"}
        assert users(search(store, text="quarterly")) == ["alice"]
    with opened(path) as store:
        assert skip_indexes(store) == {"entity_bf", "sha_bf"}
        assert users(search(store, text="QUARTERLY")) == ["alice"]
        assert store.query("SELECT count() FROM events", {})[1][0][0] == 2


def test_ttl_declarations(tmp_path):
    with opened(tmp_path / "audit") as store:
        ddl = create_table(store, "events").replace("`", "")
        for column in ("prompt", "completion", "justification"):
            assert re.search(rf"{column} String CODEC\(ZSTD\(3\)\) TTL toDateTime\(ts\) \+ toIntervalDay\(30\)", ddl)
        assert "TTL toDateTime(ts) + toIntervalDay(400)" in ddl.split("ENGINE")[1]
        assert "TTL toDateTime(ts) + toIntervalDay(400)" in create_table(store, "connections")
        assert store.ttl_days() == {"prompt": 30, "completion": 30, "justification": 30, None: 400}


def test_ttl_change_on_an_existing_store_is_applied_with_modify_ttl(tmp_path):
    with opened(tmp_path / "audit"):
        pass
    with opened(tmp_path / "audit", text_ttl_days=7, metadata_ttl_days=90) as store:
        ddl = create_table(store, "events").replace("`", "")
        assert "prompt String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(7)" in ddl
        assert "TTL toDateTime(ts) + toIntervalDay(90)" in ddl.split("ENGINE")[1]
        assert "toIntervalDay(90)" in create_table(store, "connections")
        assert store.apply_ttl(7, 90) == []  # already as configured: nothing rewritten


def test_cluster_ddl_renders_replicated_tables_behind_distributed_ones():
    ddl = render(Target(cluster="audit_cluster", database="ai"))
    script = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    statements = [s.strip() for s in script.split(";\n") if s.strip()]
    create_alter = [s for s in statements if s.startswith(("CREATE", "ALTER"))]
    assert create_alter and all(" ON CLUSTER 'audit_cluster'" in s for s in create_alter)
    assert ("CREATE TABLE IF NOT EXISTS events_local ON CLUSTER 'audit_cluster' (" in ddl
            and "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ai/events_local', '{replica}')"
            in ddl)
    assert ("CREATE TABLE IF NOT EXISTS events ON CLUSTER 'audit_cluster' AS events_local "
            "ENGINE = Distributed('audit_cluster', 'ai', 'events_local', cityHash64(event_id))") in ddl
    assert "ENGINE = Distributed('audit_cluster', 'ai', 'connections_local', cityHash64(event_id))" in ddl
    # storage clauses go to the local tables only; the Distributed table gets plain columns
    local_alter = next(s for s in statements if s.startswith("ALTER TABLE events_local") and "ADD COLUMN" in s)
    dist_alter = next(s for s in statements if s.startswith("ALTER TABLE events ON") and "ADD COLUMN" in s)
    assert "justification String CODEC(ZSTD(3)) TTL" in local_alter
    assert "ADD COLUMN IF NOT EXISTS justification String," in dist_alter and "TTL" not in dist_alter
    assert not [s for s in statements if s.startswith("ALTER TABLE events ON") and ("INDEX" in s or "TTL" in s)]
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/ai/schema_migrations_local'" in ddl
    assert "ALTER TABLE events_local ON CLUSTER 'audit_cluster' DROP INDEX IF EXISTS prompt_ngram;" in ddl


def test_single_server_ddl_has_no_cluster_clauses():
    ddl = render(Target())
    assert "ON CLUSTER" not in ddl and "Replicated" not in ddl and "Distributed" not in ddl


def test_schema_command_prints_cluster_ddl():
    from click.testing import CliRunner

    from gateway import cli

    r = CliRunner().invoke(cli, ["audit", "schema", "--cluster", "c1", "--text-ttl-days", "10"])
    assert r.exit_code == 0, r.output
    assert "ON CLUSTER 'c1'" in r.output and "toDateTime(ts) + INTERVAL 10 DAY" in r.output


@pytest.mark.parametrize("days", [0, -5])
def test_ttl_must_be_positive_in_the_gateway(tmp_path, days):
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "gateway", "run", "--data-dir", str(tmp_path), "--listen-port", "0",
                        "--set", f"gateway_text_ttl_days={days}"], capture_output=True, text=True, timeout=60,
                       check=False, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "gateway_text_ttl_days" in r.stderr


@pytest.mark.parametrize("cluster, database", [("prod'; DROP TABLE events; --", "default"), ("prod", "a-b"),
                                               ("prod", "1st"), ("", "")])
def test_names_written_into_ddl_must_be_plain(cluster, database):
    with pytest.raises(ValueError, match="name"):
        Target(cluster=cluster, database=database)


def test_an_audit_url_database_must_be_a_plain_name():
    from storage.store import AuditUrl, AuditUrlError

    assert AuditUrl.parse("https://u@ch.example:8443/ai_audit").database == "ai_audit"
    with pytest.raises(AuditUrlError, match="must be a database name"):
        AuditUrl.parse("https://u@ch.example:8443/ai%27audit")

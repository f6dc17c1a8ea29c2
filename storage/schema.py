"""The audit schema, as ordered migrations applied on start.

Each migration has a version and its DDL; `schema_migrations` records what was applied, so a store created by an
older gateway is brought forward and a newer one is never touched by an older binary. A migration, once shipped,
is never edited: the next change is a new version. Design notes (following the LLM log stores Helicone and
Langfuse keep on ClickHouse): one row per AI exchange in a ReplacingMergeTree keyed so that a re-sent event (same
event_id, same values) collapses, which is what makes the at-least-once writer exactly-once for readers (queries
use FINAL); monthly partitions; LowCardinality for the columns people group by; ZSTD on text; prompt and
completion text expire sooner than metadata (column TTL vs table TTL).

Cluster mode (`Target(cluster="name")`) renders the same migrations as `ON CLUSTER` DDL: each table becomes a
Replicated*MergeTree `<name>_local` on every node, and `<name>` a Distributed table over it, sharded by
event_id so the duplicates of one event meet on one shard where FINAL collapses them. Readers and writers use
`<name>` in both modes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEXT_TTL_DAYS = 30
METADATA_TTL_DAYS = 400

#: Columns whose content is text a person typed or a model wrote: they carry the short text TTL.
TEXT_COLUMNS = {"events": ("prompt", "completion", "justification")}
TEXT_TYPE = "String CODEC(ZSTD(3))"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Target:
    """Where DDL goes: one server (embedded chdb or http) or a cluster (`ON CLUSTER`, Replicated + Distributed)."""

    cluster: str = ""
    database: str = "default"

    def __post_init__(self) -> None:
        # Both are written into DDL (quoted as names and inside string literals): only plain names get there.
        for what, name in (("cluster", self.cluster), ("database", self.database)):
            if name and not NAME.fullmatch(name):
                raise ValueError(f"audit {what} name {name!r} must be letters, digits and '_' (at most 64, not "
                                 f"starting with a digit)")
        if not self.database:
            raise ValueError("audit database name is empty")

    @property
    def on(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    def local(self, table: str) -> str:
        """The table that holds the rows: `table` itself, or `table_local` behind a Distributed table."""
        return f"{table}_local" if self.cluster else table

    def engine(self, kind: str, table: str) -> str:
        if not self.cluster:
            return kind
        return f"Replicated{kind}('/clickhouse/tables/{{shard}}/{self.database}/{table}_local', '{{replica}}')"

    def create(self, table: str, columns: str, kind: str, tail: str) -> tuple[str, ...]:
        stmts = [(f"CREATE TABLE IF NOT EXISTS {self.local(table)}{self.on} ({columns}) "
                  f"ENGINE = {self.engine(kind, table)} {tail}")]
        if self.cluster:
            stmts.append(f"CREATE TABLE IF NOT EXISTS {table}{self.on} AS {self.local(table)} "
                         f"ENGINE = Distributed('{self.cluster}', '{self.database}', '{self.local(table)}', "
                         f"cityHash64(event_id))")
        return tuple(stmts)

    def alter(self, table: str, action: str) -> tuple[str, ...]:
        """An ALTER on the table that holds the rows (indexes, TTLs: not on a Distributed table)."""
        return (f"ALTER TABLE {self.local(table)}{self.on} {action}",)

    def add_columns(self, table: str, columns: tuple[tuple[str, str, str], ...]) -> tuple[str, ...]:
        """ADD COLUMN for (name, type, storage clauses); a Distributed table gets name and type only, since it
        stores nothing (codecs and TTLs belong to the local tables)."""
        def clause(with_storage: bool) -> str:
            return ", ".join(f"ADD COLUMN IF NOT EXISTS {name} {type_} {storage if with_storage else ''}".rstrip()
                             for name, type_, storage in columns)
        stmts = self.alter(table, clause(True))
        if self.cluster:
            stmts += (f"ALTER TABLE {table}{self.on} {clause(False)}",)
        return stmts


SINGLE_SERVER = Target()


def text_ttl(days: int) -> str:
    return f"TTL toDateTime(ts) + INTERVAL {int(days)} DAY"


def migrations(text_ttl_days: int = TEXT_TTL_DAYS, metadata_ttl_days: int = METADATA_TTL_DAYS,
               target: Target = SINGLE_SERVER) -> list[Migration]:
    t = target
    ttl = text_ttl(text_ttl_days)
    meta_ttl = f"TTL toDateTime(ts) + INTERVAL {int(metadata_ttl_days)} DAY"
    return [
        Migration(1, "events table", t.create("events", f"""
                event_id UUID,
                ts DateTime64(3, 'UTC'),
                client_addr String,
                user LowCardinality(String),
                host LowCardinality(String),
                method LowCardinality(String),
                path String CODEC(ZSTD(3)),
                service LowCardinality(String),
                category LowCardinality(String),
                sanctioned Bool,
                operation LowCardinality(String),
                model LowCardinality(String),
                stream Bool,
                prompt String CODEC(ZSTD(3)) {ttl},
                completion String CODEC(ZSTD(3)) {ttl},
                prompt_sha256 String,
                input_tokens Nullable(UInt32),
                output_tokens Nullable(UInt32),
                request_bytes UInt64,
                response_bytes UInt64,
                status UInt16,
                latency_ms Float32,
                decision LowCardinality(String),
                reason String,
                inspection LowCardinality(String),
                parsed Bool,
                warnings Array(String),
                error String,
                INDEX prompt_ngram prompt TYPE ngrambf_v1(3, 65536, 2, 0) GRANULARITY 4
            """, "ReplacingMergeTree", f"""
            PARTITION BY toYYYYMM(ts)
            ORDER BY (service, user, ts, event_id)
            {meta_ttl}
            """)),
        Migration(2, "identity, DLP findings, capture level, tunnelled connections, dashboard views", (
            *t.add_columns("events", (
                ("groups", "Array(LowCardinality(String))", ""),
                ("source", "LowCardinality(String) DEFAULT 'http'", ""),
                ("capture", "LowCardinality(String) DEFAULT 'full'", ""),  # v1 stored raw text
                ("rule_id", "LowCardinality(String)", ""),
                ("justification", "String", f"CODEC(ZSTD(3)) {ttl}"),
                ("finish_reason", "LowCardinality(String)", ""),
                ("entity_types", "Array(LowCardinality(String))", ""),
                ("entity_counts", "Array(UInt32)", ""),
                ("finding_entities", "Array(LowCardinality(String))", ""),
                ("finding_parts", "Array(UInt16)", ""),
                ("finding_starts", "Array(UInt32)", ""),
                ("finding_ends", "Array(UInt32)", ""),
                ("finding_scores", "Array(Float32)", ""),
                ("inserted_at", "DateTime64(3, 'UTC') DEFAULT now64(3)", ""),  # what `audit tail` follows
            )),
            # rows from v1 would otherwise compute the DEFAULT at every read (always "just inserted" for tail)
            *t.alter("events", "MATERIALIZE COLUMN inserted_at"),
            *t.alter("events", "ADD INDEX IF NOT EXISTS entity_bf entity_types TYPE bloom_filter GRANULARITY 4"),
            *t.alter("events", "ADD INDEX IF NOT EXISTS sha_bf prompt_sha256 TYPE bloom_filter GRANULARITY 4"),
            *t.create("connections", """
                event_id UUID,
                ts DateTime64(3, 'UTC'),
                client_addr String,
                user LowCardinality(String),
                host LowCardinality(String),
                server_addr String,
                service LowCardinality(String),
                category LowCardinality(String),
                sanctioned Bool,
                reason String,
                duration_ms Float32,
                bytes_sent Nullable(UInt64),
                bytes_received Nullable(UInt64),
                error String,
                inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
            """, "ReplacingMergeTree", f"""
            PARTITION BY toYYYYMM(ts)
            ORDER BY (service, user, ts, event_id)
            {meta_ttl}
            """),
            # Views for dashboards and reports. Each reads deduplicated rows (FINAL), so a replayed event is
            # counted once; WHERE clauses on ts are pushed into them by the optimizer.
            f"""CREATE VIEW IF NOT EXISTS audit_events{t.on} AS SELECT * FROM events FINAL""",
            f"""CREATE VIEW IF NOT EXISTS audit_findings{t.on} AS
                SELECT event_id, ts, user, groups, service, category, decision, model, entity_type,
                       entity_count
                FROM events FINAL
                ARRAY JOIN entity_types AS entity_type, entity_counts AS entity_count""",
            f"""CREATE VIEW IF NOT EXISTS audit_ai_use{t.on} AS
                SELECT ts, 'exchange' AS kind, user, client_addr, host, service, category, sanctioned, decision,
                       toNullable(request_bytes + response_bytes) AS bytes
                FROM events FINAL
                UNION ALL
                SELECT ts, 'connection' AS kind, user, client_addr, host, service, category, sanctioned,
                       'tunnel' AS decision, bytes_sent + bytes_received AS bytes
                FROM connections FINAL""",
        )),
        Migration(3, "what of each request body was read and how", (
            *t.add_columns("events", (("coverage", "Array(String)", "CODEC(ZSTD(3))"),)),
            # a view's `*` was expanded when it was created: made again, so that it shows the new column
            f"""CREATE OR REPLACE VIEW audit_events{t.on} AS SELECT * FROM events FINAL""",
        )),
        Migration(4, "where each finding's text came from (prompt injection by source)", (
            *t.add_columns("events", (("finding_sources", "Array(LowCardinality(String))", ""),)),
            f"""CREATE OR REPLACE VIEW audit_events{t.on} AS SELECT * FROM events FINAL""",
            # one row per finding with its source, for "prompt injection from tool results this week" (rows older
            # than v4 have no sources: they read as '')
            f"""CREATE VIEW IF NOT EXISTS audit_finding_sources{t.on} AS
                SELECT event_id, ts, user, service, decision, rule_id, entity_type, finding_source, score
                FROM events FINAL
                ARRAY JOIN finding_entities AS entity_type,
                           arrayResize(finding_sources, length(finding_entities), '') AS finding_source,
                           finding_scores AS score""",
        )),
        Migration(5, "the tools of each exchange: the tool inventory", (
            *t.add_columns("events", (("tool_kinds", "Array(LowCardinality(String))", ""),
                                      ("tool_names", "Array(String)", ""),
                                      ("tool_servers", "Array(LowCardinality(String))", ""),
                                      ("tool_digests", "Array(String)", ""))),
            f"""CREATE OR REPLACE VIEW audit_events{t.on} AS SELECT * FROM events FINAL""",
            # one row per tool of an exchange: who offered, listed or called which tool of which server, and
            # which definition (digest) it had
            f"""CREATE VIEW IF NOT EXISTS audit_tools{t.on} AS
                SELECT event_id, ts, if(user = '', client_addr, user) AS user, service, operation, decision,
                       tool_kind, tool_name, tool_server, tool_digest
                FROM events FINAL
                ARRAY JOIN tool_kinds AS tool_kind, tool_names AS tool_name, tool_servers AS tool_server,
                           tool_digests AS tool_digest""",
        )),
        # The ngram bloom filter of v1 served no query: text search (storage/queries.py, `gateway audit search
        # --text`) is case-insensitive (positionCaseInsensitiveUTF8), which a filter of case-sensitive trigrams
        # cannot answer, so ClickHouse never read it (EXPLAIN indexes = 1 lists no skip index for it). Building
        # it was half of what chdb's merges spent: every insert and every merge hashes each row's prompt into a
        # 64 KB filter (bench/store.py, 450 rows/s: merges 0.12 -> 0.06 ms CPU per row, store and writer 0.42 ->
        # 0.34). Dropping it also removes its files from existing parts; entity_bf and sha_bf stay.
        Migration(6, "drop the prompt ngram index, which no query used", (
            *t.alter("events", "DROP INDEX IF EXISTS prompt_ngram"),
        )),
    ]


def modify_ttl(table: str, column: str | None, days: int, target: Target = SINGLE_SERVER) -> tuple[str, ...]:
    """DDL that changes a TTL on an existing store: the table's (metadata) TTL, or a text column's."""
    if column is None:
        return target.alter(table, f"MODIFY TTL toDateTime(ts) + INTERVAL {int(days)} DAY")
    return target.alter(table, f"MODIFY COLUMN {column} {TEXT_TYPE} {text_ttl(days)}")


def migrations_table(target: Target = SINGLE_SERVER) -> tuple[str, ...]:
    return ((f"CREATE TABLE IF NOT EXISTS schema_migrations{target.on} (version UInt32, description String, "
             f"applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
             f"ENGINE = {target.engine('MergeTree', 'schema_migrations')} ORDER BY version"),)


def render(target: Target, text_ttl_days: int = TEXT_TTL_DAYS,
           metadata_ttl_days: int = METADATA_TTL_DAYS) -> str:
    """All DDL as one script, for a DBA to review and run (`gateway audit schema --cluster NAME`)."""
    stmts = [*migrations_table(target)]
    for m in migrations(text_ttl_days, metadata_ttl_days, target):
        stmts.append(f"-- v{m.version}: {m.description}")
        stmts.extend(m.statements)
    return "\n".join(s.strip() + (";" if not s.startswith("--") else "") for s in stmts) + "\n"

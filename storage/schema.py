"""The audit schema, as ordered migrations applied on start.

Each migration has a version and its DDL; `schema_migrations` records what was applied, so a store created by an
older gateway is brought forward and a newer one is never touched by an older binary. Design notes (see
lessons-from-peers.md): one row per AI exchange in a ReplacingMergeTree keyed so that a re-sent event (same
event_id, same values) collapses; monthly partitions; LowCardinality for the columns people group by; ZSTD on
text; prompt and completion text expire sooner than metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_TTL_DAYS = 30
METADATA_TTL_DAYS = 400


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def migrations(text_ttl_days: int = TEXT_TTL_DAYS, metadata_ttl_days: int = METADATA_TTL_DAYS) -> list[Migration]:
    text_ttl = f"TTL toDateTime(ts) + INTERVAL {int(text_ttl_days)} DAY"
    return [
        Migration(1, "events table", (
            f"""
            CREATE TABLE IF NOT EXISTS events (
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
                prompt String CODEC(ZSTD(3)) {text_ttl},
                completion String CODEC(ZSTD(3)) {text_ttl},
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
            )
            ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (service, user, ts, event_id)
            TTL toDateTime(ts) + INTERVAL {int(metadata_ttl_days)} DAY
            """,
        )),
    ]


MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    description String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree ORDER BY version
"""

"""The audit store: ClickHouse through clickhouse-connect (embedded chdb by default, a server or cluster over http);
and the MCP first-seen memory the gateway's processes share (first_seen.py: SQLite)."""

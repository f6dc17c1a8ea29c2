"""The audit store: ClickHouse through clickhouse-connect (embedded chdb by default, a server or cluster over http)."""

"""Small helpers shared by the client tests: run SQL through ADBC, ingest, look at Delta logs."""

import pyarrow as pa


def query(conn, sql, parameters=None) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql, parameters=parameters)
        return cur.fetch_arrow_table()


def rows(conn, sql, parameters=None) -> list[dict]:
    return query(conn, sql, parameters).to_pylist()


def ingest(conn, table, data, mode, **kwargs) -> int:
    # A cursor of its own per call: the driver keeps statement options (db_schema_name, ...)
    # on a cursor between calls.
    with conn.cursor() as cur:
        return cur.adbc_ingest(table, data, mode=mode, **kwargs)


def commits(server, table, schema="public") -> int:
    """Number of commits in a warehouse table's Delta log."""
    log = server.warehouse / schema / table / "_delta_log"
    return len(list(log.glob("*.json")))

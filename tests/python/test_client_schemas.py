"""What every Flight client accepts: one schema from GetFlightInfo to DoGet, Delta's types, and the
DataFrame paths data scientists use (pandas through ADBC).

The ADBC driver refuses a stream whose schema differs from the one GetFlightInfo announced
("endpoint 0 returned inconsistent schema"); pyarrow.flight does not check, so the schemas are also
compared here by hand. Tables start with `cs_`.
"""

import adbc_driver_manager
import adbc_driver_flightsql.dbapi as flightsql
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from helpers import query

# Expressions the optimizer folds (their nullability changes between planning and execution), array
# functions, named arguments and every UDF over literals.
FOLDED = [
    ("SELECT abs(-1.0) AS a", [1.0]),
    ("SELECT make_array(1, 2) AS a", [[1, 2]]),
    ("SELECT dot(make_array(1.0), make_array(2.0)) AS a", [2.0]),
    ("SELECT substr('quiver', 2, 3) AS a", ["uiv"]),
    ("SELECT array_length(make_array(1, 2, 3)) AS a", [3]),
    ("SELECT coalesce(NULL, 7) AS a", [7]),
    ("SELECT upper('x') || lower('Y') AS a", ["Xy"]),
    ("SELECT CAST(1 AS DOUBLE) + 1 AS a", [2.0]),
    ("SELECT array_sort(make_array(3, 1, 2)) AS a", [[1, 2, 3]]),
    ("SELECT cosine_similarity(make_array(1.0, 0.0), make_array(1.0, 0.0)) AS a", [1.0]),
    ("SELECT feature_hash('user:42', 1024) AS a", None),
]


def flight_info_and_stream_schemas(server, sql):
    client = flight.connect(server.uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql.encode()))
    reader = client.do_get(info.endpoints[0].ticket)
    table = reader.read_all()
    return info.schema, table


@pytest.mark.parametrize("sql,expected", FOLDED, ids=[s for s, _ in FOLDED])
def test_folded_expressions_keep_one_schema_through_every_client(server, adbc, sql, expected):
    # ADBC (prepared, as its DB-API does): refuses a mismatch outright.
    through_adbc = query(adbc, sql)
    # pyarrow.flight: GetFlightInfo's schema equals the stream's, field by field.
    announced, through_flight = flight_info_and_stream_schemas(server, sql)
    assert announced == through_flight.schema, (announced, through_flight.schema)
    assert announced.equals(through_flight.schema, check_metadata=True)
    assert through_adbc.schema == through_flight.schema
    assert through_adbc.to_pylist() == through_flight.to_pylist()
    if expected is not None:
        assert through_adbc.column("a").to_pylist() == expected


def test_prepared_schema_equals_the_results(adbc):
    with adbc.cursor() as cur:
        announced = cur.adbc_execute_schema("SELECT abs(-1.0) AS a, make_array(1, 2) AS b")
        cur.execute("SELECT abs(-1.0) AS a, make_array(1, 2) AS b")
        result = cur.fetch_arrow_table()
    assert announced == result.schema, (announced, result.schema)


def test_float16_is_stored_as_float_and_times_are_refused_naming_the_column(adbc):
    with adbc.cursor() as cur:
        cur.execute("CREATE TABLE cs_half AS SELECT arrow_cast(1.5, 'Float16') AS h, 1 AS id")
        cur.fetchall()
    table = query(adbc, "SELECT h, arrow_typeof(h) AS t FROM cs_half")
    assert table.column("h").to_pylist() == [1.5]
    assert table.column("t").to_pylist() == ["Float32"]

    with pytest.raises(adbc_driver_manager.Error) as info:
        with adbc.cursor() as cur:
            cur.execute("CREATE TABLE cs_time AS SELECT arrow_cast('10:00:00', 'Time64(Nanosecond)') AS at")
            cur.fetchall()
    assert info.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, info.value
    assert "column 'at'" in str(info.value) and "Time64" in str(info.value), info.value
    # Nothing was created.
    names = query(adbc, "SELECT table_name FROM information_schema.tables WHERE table_name = 'cs_time'")
    assert names.num_rows == 0


def test_uploads_of_unstorable_types_are_invalid_argument(adbc):
    data = pa.table({"id": [1], "d": pa.array([1], pa.duration("s"))})
    with pytest.raises(adbc_driver_manager.Error) as info:
        with adbc.cursor() as cur:
            cur.adbc_ingest("cs_duration", data, mode="create")
    assert info.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, info.value
    assert "column 'd'" in str(info.value), info.value


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.array([1, 2, 3], dtype="Int64"),
            "name": ["a", None, "ünï"],
            "score": [0.5, None, 2.25],
        }
    )


def test_pandas_to_sql_and_read_sql_round_trip(server):
    df = frame()
    with flightsql.connect(server.uri, autocommit=True) as conn:
        assert df.to_sql("cs_pandas", conn, if_exists="fail", index=False) == 3
        back = pd.read_sql("SELECT * FROM cs_pandas ORDER BY id", conn, dtype_backend="pyarrow")
        assert back["id"].tolist() == [1, 2, 3]
        assert back["name"].tolist()[0] == "a" and pd.isna(back["name"].tolist()[1])
        assert back["name"].tolist()[2] == "ünï"
        assert back["score"].tolist()[0] == 0.5 and pd.isna(back["score"].tolist()[1])

        # append adds rows; replace starts again.
        df.to_sql("cs_pandas", conn, if_exists="append", index=False)
        count = pd.read_sql("SELECT count(*) AS n FROM cs_pandas", conn)
        assert int(count["n"][0]) == 6
        df.head(1).to_sql("cs_pandas", conn, if_exists="replace", index=False)
        count = pd.read_sql("SELECT count(*) AS n FROM cs_pandas", conn)
        assert int(count["n"][0]) == 1

        # if_exists="fail" on an existing table fails, as pandas says.
        with pytest.raises(ValueError):
            df.to_sql("cs_pandas", conn, if_exists="fail", index=False)


def test_uploads_with_pandas_metadata_are_accepted(adbc):
    table = pa.Table.from_pandas(frame(), preserve_index=False)
    assert b"pandas" in table.schema.metadata
    with adbc.cursor() as cur:
        cur.adbc_ingest("cs_from_pandas", table, mode="create")
        # A second upload with metadata appends (the table's own schema has none).
        cur.adbc_ingest("cs_from_pandas", table, mode="append")
    result = query(adbc, "SELECT count(*) AS n, count(name) AS names FROM cs_from_pandas")
    assert result.to_pylist() == [{"n": 6, "names": 4}]


def test_a_real_mismatch_says_what_differs(adbc):
    with adbc.cursor() as cur:
        cur.adbc_ingest("cs_mismatch", pa.table({"id": [1], "s": ["x"]}), mode="create")
    with pytest.raises(adbc_driver_manager.Error) as info:
        with adbc.cursor() as cur:
            cur.adbc_ingest("cs_mismatch", pa.table({"id": [1], "s": [1.5]}), mode="append")
    message = str(info.value)
    assert "column 's'" in message and "Float64" in message, message


# --- session settings ------------------------------------------------------------------------

# The hour of the Unix epoch in the session's time zone.
HOUR = "SELECT date_part('hour', arrow_cast(0, 'Timestamp(Second, Some(\"UTC\"))')::TIMESTAMPTZ) AS h"
# ADBC keeps the server's cookies (where the settings travel) only with this option.
COOKIES = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}


def hour(conn) -> int:
    return query(conn, HOUR).column("h")[0].as_py()


def test_set_changes_the_next_queries_of_that_connection_only(server):
    with flightsql.connect(server.uri, autocommit=True, db_kwargs=COOKIES) as a, flightsql.connect(
        server.uri, autocommit=True, db_kwargs=COOKIES
    ) as b:
        assert hour(a) == 0 and hour(b) == 0
        with a.cursor() as cur:
            cur.execute("SET datafusion.execution.time_zone = '+05:30'")
            cur.fetchall()
        assert hour(a) == 5, "the SET connection's next query"
        assert hour(a) == 5, "and the one after"
        assert hour(b) == 0, "another connection keeps the server's setting"
        shown = query(a, "SHOW datafusion.execution.time_zone").to_pylist()
        assert shown == [{"name": "datafusion.execution.time_zone", "value": "+05:30"}]

        # A parameterized (prepared, bound) query follows the setting too.
        assert query(a, HOUR + " WHERE ? = 1", parameters=(1,)).column("h")[0].as_py() == 5

        # Limits stay the server's: PermissionDenied, and the session keeps what it had.
        for statement in ["SET datafusion.runtime.memory_limit = '100G'",
                          "SET datafusion.execution.target_partitions = 64"]:
            with pytest.raises(adbc_driver_manager.Error) as info:
                with a.cursor() as cur:
                    cur.execute(statement)
                    cur.fetchall()
            assert info.value.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED, info.value
            assert "the server's to set" in str(info.value)
        with pytest.raises(adbc_driver_manager.Error) as info:
            with a.cursor() as cur:
                cur.execute("SET datafusion.execution.no_such_setting = 1")
                cur.fetchall()
        assert info.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, info.value
        assert hour(a) == 5

        with a.cursor() as cur:
            cur.execute("RESET datafusion.execution.time_zone")
            cur.fetchall()
        assert hour(a) == 0


def test_flight_sql_session_options_are_connection_options(server):
    prefix = "adbc.flight.sql.session.option."
    with flightsql.connect(server.uri, autocommit=True, db_kwargs=COOKIES) as conn:
        conn.adbc_connection.set_options(**{prefix + "datafusion.execution.time_zone": "-02:00"})
        assert hour(conn) == 22
        options = conn.adbc_connection.get_option("adbc.flight.sql.session.options")
        assert '"datafusion.execution.time_zone":"-02:00"' in options.replace(" ", ""), options
        conn.adbc_connection.set_options(**{prefix + "datafusion.execution.batch_size": "128"})
        shown = query(conn, "SHOW datafusion.execution.batch_size").to_pylist()
        assert shown[0]["value"] == "128"
        with pytest.raises(adbc_driver_manager.Error) as info:
            conn.adbc_connection.set_options(**{prefix + "datafusion.runtime.memory_limit": "1T"})
        assert info.value.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED, info.value
        assert hour(conn) == 22, "a refused option changes nothing"

"""Delta Lake reader conformance: tables written by Spark/Delta, read back through Quiver over Flight SQL.

Two suites from ../shared/testdata/delta (see PROVENANCE.md there):

- dat-v0.0.2/<case>: the Delta Acceptance Tests. Every expected snapshot is checked:
  expected/latest with a plain SELECT, expected/vN with `VERSION AS OF N`.
- kernel-golden/<case>: delta-io "golden tables" as shipped with delta-kernel-rs; the 68 cases with an
  expected/ directory (the latest snapshot) are checked.

Each case registers the table with `CREATE EXTERNAL TABLE ... STORED AS DELTA LOCATION`, reads it
with `SELECT *` through ADBC, and compares with the expected parquet as a multiset of rows, after
normalising only physical encodings that carry no information:

- utf8 / large_utf8 / utf8_view -> utf8, binary / large_binary / binary_view -> binary,
  dictionary<V> -> V, large_list / list_view -> list;
- names of list/map child fields and nullability flags are ignored;
- timestamps go to microseconds with a *safe* cast (a nanosecond expectation with sub-microsecond
  digits fails rather than being truncated); a timestamp with any time zone becomes UTC (the instant
  is unchanged). A naive (NTZ) timestamp stays naive, except in the DAT expectations, which hold
  Delta's UTC `timestamp` as INT96, read as naive nanoseconds (see `_Suite.naive_timestamps_are_utc`);
- columns are compared by name, rows as a multiset; map entries as a set of (key, value).

Everything else must match exactly: column names, the normalised types (decimal precision/scale,
integer widths, float vs double, tz-aware vs NTZ timestamps), and every value (floats bit for bit,
NaN equal to NaN, -0.0 distinct from 0.0).

Known failures are strict xfails in KNOWN_FAILURES below, each with the reason found by investigation
and a regex the error must match (any other error fails the test; a pass fails it too, so a fixed
failure gets its entry removed). Cases blocked by a Quiver bug in the Flight SQL path also run through
plain Arrow Flight (test_delta_reader_plain_flight), so their data stays checked meanwhile. The
comparison itself is tested at the end of the file (what it forgives and what it must reject).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import decimal
import math
import os
import pathlib
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Same location rule as conftest's `testdata` fixture; needed here already, at collection time.
DELTA_DATA = (
    pathlib.Path(
        os.environ.get(
            "QUIVER_TESTDATA", pathlib.Path(__file__).resolve().parents[3] / "shared" / "testdata"
        )
    )
    / "delta"
)


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Suite:
    name: str
    prefix: str  # table-name prefix, keeps the suites apart in the server's catalog
    # The DAT expectations are written by Spark (parquet-mr) with timestamps as INT96, UTC-normalised,
    # which Arrow reads as naive timestamp[ns]; the kernel golden expectations keep the distinction
    # (timestamp[us, tz=UTC] for Delta `timestamp`, naive for `timestamp_ntz`).
    naive_timestamps_are_utc: bool


DAT = _Suite("dat-v0.0.2", "dat", naive_timestamps_are_utc=True)
GOLDEN = _Suite("kernel-golden", "kg", naive_timestamps_are_utc=False)


@dataclasses.dataclass(frozen=True)
class Case:
    suite: _Suite
    case: str  # directory name under the suite
    version: int | None  # None: latest snapshot
    table_rel: str  # Delta table dir, relative to the delta test data root
    expected_rel: str  # dir holding the expected *.parquet, relative to the delta test data root

    @property
    def id(self) -> str:
        return f"{self.suite.prefix}/{self.case}@{'latest' if self.version is None else f'v{self.version}'}"

    @property
    def table_name(self) -> str:
        version = "latest" if self.version is None else f"v{self.version}"
        return _sql_name(f"{self.suite.prefix}_{self.case}_{version}")


def _sql_name(raw: str) -> str:
    """A table name Quiver accepts and SQL needs no quoting for: lower-case letters, digits, '_'."""
    name = re.sub(r"[^a-z0-9_]", "_", raw.lower())
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name), raw
    return name


def _discover() -> list[Case]:
    """All cases present in the test data; empty when the data is absent (the tests then skip)."""
    cases: list[Case] = []
    dat_root = DELTA_DATA / DAT.name
    if dat_root.is_dir():
        for case_dir in sorted(p for p in dat_root.iterdir() if p.is_dir()):
            for exp in sorted(p for p in (case_dir / "expected").iterdir() if p.is_dir()):
                if exp.name == "latest":
                    version = None
                else:
                    m = re.fullmatch(r"v(\d+)", exp.name)
                    assert m, f"unexpected expectation dir {exp}"
                    version = int(m.group(1))
                cases.append(
                    Case(
                        DAT,
                        case_dir.name,
                        version,
                        f"{DAT.name}/{case_dir.name}/delta",
                        f"{DAT.name}/{case_dir.name}/expected/{exp.name}/table_content",
                    )
                )
    golden_root = DELTA_DATA / GOLDEN.name
    if golden_root.is_dir():
        for case_dir in sorted(p for p in golden_root.iterdir() if p.is_dir()):
            if (case_dir / "expected").is_dir():
                cases.append(
                    Case(
                        GOLDEN,
                        case_dir.name,
                        None,
                        f"{GOLDEN.name}/{case_dir.name}/delta",
                        f"{GOLDEN.name}/{case_dir.name}/expected",
                    )
                )
    names = [c.table_name for c in cases]
    assert len(names) == len(set(names)), "table names collide after sanitising"
    return cases


@dataclasses.dataclass(frozen=True)
class Known:
    """A known failure: the reason, and a regex the error must match for it to count as this failure."""

    reason: str
    match: str
    quiver_bug: bool = False  # a Quiver defect (not delta-rs, not the test data)


# Strict xfails, by case id. Each one was reproduced and traced to its cause: a Quiver-only failure is
# checked against deltalake (Python, same delta-rs core), which reads these tables correctly.
KNOWN_FAILURES: dict[str, Known] = {
    "kg/basic-with-vacuum-protocol-check-feature@latest": Known(
        reason=(
            "delta-rs 1.1 does not support the reader table feature vacuumProtocolCheck "
            "(readerFeatures in protocol); deltalake 1.6.6 fails the same way (DeltaProtocolError)"
        ),
        match=r"Unsupported table features required: \[VacuumProtocolCheck\]",
    ),
    "kg/data-reader-partition-values@latest": Known(
        reason=(
            "bad golden data: the as_timestamp partition value is '2021-09-08 11:11:11' in the Delta "
            "log, which delta-rs (and deltalake 1.6.6) read as UTC per the protocol, but the expected "
            "parquet has 2021-09-08T18:11:11Z (the writer's session time zone, America/Los_Angeles, "
            "applied). "
            "test_delta_reader_corrected_expectation checks all 15 columns, as_timestamp corrected to UTC"
        ),
        match=r"columns with differences: \['as_timestamp'\]\n",
    ),
}


class KnownFailure(Exception):
    """Raised in place of an error that matches the case's KNOWN_FAILURES entry (see xfail raises=)."""


def _params() -> list:
    cases = _discover()
    if not cases:
        return [pytest.param(None, id="no-delta-test-data")]
    present = {c.suite.prefix for c in cases}
    unknown = {k for k in KNOWN_FAILURES if k.split("/")[0] in present} - {c.id for c in cases}
    assert not unknown, f"KNOWN_FAILURES names cases that do not exist: {sorted(unknown)}"
    params = []
    for c in cases:
        marks = []
        if c.id in KNOWN_FAILURES:
            marks.append(
                pytest.mark.xfail(strict=True, raises=KnownFailure, reason=KNOWN_FAILURES[c.id].reason)
            )
        params.append(pytest.param(c, id=c.id, marks=marks))
    return params


# --------------------------------------------------------------------------------------------------
# Normalisation and comparison
# --------------------------------------------------------------------------------------------------


def _norm_type(t: pa.DataType, naive_is_utc: bool) -> pa.DataType:
    """The logical type of `t`, with the encodings listed in the module docstring unified."""
    if pa.types.is_dictionary(t):
        return _norm_type(t.value_type, naive_is_utc)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_timestamp(t):
        tz = "UTC" if (t.tz is not None or naive_is_utc) else None
        return pa.timestamp("us", tz)
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        return pa.list_(pa.field("element", _norm_type(t.value_type, naive_is_utc)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(
            pa.field("element", _norm_type(t.value_type, naive_is_utc)), t.list_size
        )
    if pa.types.is_map(t):
        return pa.map_(
            _norm_type(t.key_type, naive_is_utc),
            pa.field("value", _norm_type(t.item_type, naive_is_utc)),
        )
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _norm_type(f.type, naive_is_utc)) for f in t])
    return t


def _normalise(table: pa.Table, naive_is_utc: bool) -> pa.Table:
    """Columns sorted by name, each cast (safely) to its normalised type; chunks combined."""
    names = sorted(table.column_names)
    assert len(names) == len(set(names)), f"duplicate column names: {table.column_names}"
    columns = []
    for name in names:
        col = table.column(name).combine_chunks()
        target = _norm_type(col.type, naive_is_utc)
        if col.type != target:
            # Dictionary first: casting dictionary<string> straight to a nested/other type is not
            # always supported, decoding always is.
            if pa.types.is_dictionary(col.type):
                col = col.dictionary_decode()
            col = col.cast(target, safe=True)
        columns.append(col)
    return pa.table(columns, names=names)


def _canon(value, t: pa.DataType):
    """A totally ordered, hashable, exact representation of one value of (normalised) type `t`."""
    if value is None:
        return (0,)
    if pa.types.is_floating(t):
        # Bit-exact; NaN payloads are not compared, every NaN is one value.
        return (1, "nan") if math.isnan(value) else (1, float(value).hex())
    if pa.types.is_decimal(t):
        assert isinstance(value, decimal.Decimal)
        return (1, str(value))  # same type on both sides, so the same scale: str is exact
    if pa.types.is_timestamp(t):
        assert isinstance(value, datetime.datetime), value
        return (1, value.isoformat())
    if pa.types.is_date(t) or pa.types.is_time(t):
        return (1, value.isoformat())
    if pa.types.is_map(t):
        entries = [(_canon(k, t.key_type), _canon(v, t.item_type)) for k, v in value]
        return (1, tuple(sorted(entries)))
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return (1, tuple(_canon(v, t.value_type) for v in value))
    if pa.types.is_struct(t):
        return (1, tuple(_canon(value[f.name], f.type) for f in t))
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return (1, int(value))
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t):
        return (1, value)
    if pa.types.is_duration(t):
        return (1, value)
    raise TypeError(f"no canonical form for values of type {t}")


def _rows(table: pa.Table) -> list[tuple]:
    cols = [
        [_canon(v, table.schema.field(i).type) for v in table.column(i).to_pylist()]
        for i in range(table.num_columns)
    ]
    return sorted(zip(*cols)) if cols else [()] * table.num_rows


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _show(c):
    """A canonical value back in readable form, for failure messages."""
    if c == (0,):
        return None
    v = c[1]
    if isinstance(v, tuple):
        return [_show(x) if isinstance(x, tuple) and x[:1] in ((0,), (1,)) else x for x in v]
    return v


def assert_same_table(actual: pa.Table, expected: pa.Table, naive_is_utc: bool) -> None:
    """Raises AssertionError unless `actual` holds exactly the rows of `expected` (see module doc)."""
    exp = _normalise(expected, naive_is_utc)
    act = _normalise(actual, naive_is_utc)
    if act.column_names != exp.column_names:
        raise AssertionError(f"columns differ: got {act.column_names}, expected {exp.column_names}")
    # Field by field: nullability and metadata are not compared.
    if [f.type for f in act.schema] != [f.type for f in exp.schema]:
        raise AssertionError(
            f"types differ after normalisation:\n  got      {_describe(act.schema)}\n"
            f"  expected {_describe(exp.schema)}\n  (as received: {_describe(actual.schema)})"
        )
    if act.num_rows != exp.num_rows:
        raise AssertionError(f"row count: got {act.num_rows}, expected {exp.num_rows}")
    got, want = _rows(act), _rows(exp)
    if got == want:
        return
    got_c, want_c = collections.Counter(got), collections.Counter(want)
    missing = sorted((want_c - got_c).elements())
    extra = sorted((got_c - want_c).elements())
    cols = act.column_names
    # Pair the rows up in sorted order and name the columns that differ: usually one or two.
    differing = sorted(
        {cols[i] for m, e in zip(missing, extra) for i in range(len(cols)) if m[i] != e[i]}
    )

    def fmt(rows):
        return "\n".join(f"    {dict(zip(cols, map(_show, r)))}" for r in rows[:5])

    raise AssertionError(
        f"rows differ: {len(missing)} expected rows missing, {len(extra)} unexpected rows; "
        f"columns with differences: {differing}\n"
        f"  missing (first 5):\n{fmt(missing)}\n  unexpected (first 5):\n{fmt(extra)}"
    )


def read_expected(root: pathlib.Path, case: Case) -> pa.Table:
    files = sorted((root / case.expected_rel).glob("*.parquet"))
    assert files, f"no expected parquet in {case.expected_rel}"
    # Read file by file: a dataset read would add hive partition columns or unify schemas.
    tables = [pq.read_table(f) for f in files]
    schema = tables[0].schema.remove_metadata()
    return pa.concat_tables([t.replace_schema_metadata(None).cast(schema) for t in tables])


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


SCHEMA = "delta_readers"


@contextlib.contextmanager
def registered(adbc, location: pathlib.Path, name: str):
    """`SCHEMA.name` registered as an external Delta table for the duration, then unlinked again.

    The server is shared by the whole session; a table left behind (one delta-rs cannot open, say)
    would break other tests that list every table (ListFlights, GetTables with schemas). Dropping an
    external table only removes Quiver's link, never the data."""
    with adbc.cursor() as cur:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        cur.execute(
            f"CREATE EXTERNAL TABLE {SCHEMA}.{name} STORED AS DELTA "
            f"LOCATION {_sql_string(str(location))}"
        )
    try:
        yield f"{SCHEMA}.{name}"
    finally:
        with adbc.cursor() as cur:
            cur.execute(f"DROP TABLE {SCHEMA}.{name}")


def _select(table: str, version: int | None) -> str:
    return f"SELECT * FROM {table}" + ("" if version is None else f" VERSION AS OF {version}")


def read_through_quiver(adbc, location: pathlib.Path, name: str, version: int | None) -> pa.Table:
    with registered(adbc, location, name) as table, adbc.cursor() as cur:
        cur.execute(_select(table, version))
        return cur.fetch_arrow_table()


def _known_failure(case: Case, error: Exception) -> Exception:
    """`error` as a KnownFailure if it is the failure KNOWN_FAILURES expects for `case`, else as is."""
    known = KNOWN_FAILURES.get(case.id)
    if known is not None and re.search(known.match, str(error)):
        return KnownFailure(f"{type(error).__name__}: {error}")
    return error


@pytest.mark.parametrize("case", _params())
def test_delta_reader(case: Case | None, testdata, adbc):
    """The table (at the expected version) read through Flight SQL matches the expected parquet."""
    if case is None:
        pytest.skip(f"no Delta reader cases found under {DELTA_DATA}")
    root = testdata / "delta"
    expected = read_expected(root, case)
    try:
        actual = read_through_quiver(
            adbc, (root / case.table_rel).resolve(), case.table_name, case.version
        )
        assert_same_table(actual, expected, case.suite.naive_timestamps_are_utc)
    except Exception as e:
        raise _known_failure(case, e) from e


# --------------------------------------------------------------------------------------------------
# The same data through plain Arrow Flight, for the cases a Quiver bug blocks on the Flight SQL path
# --------------------------------------------------------------------------------------------------


def _fix_partition_values_golden(expected: pa.Table) -> pa.Table:
    """kernel-golden/data-reader-partition-values: the as_timestamp partition value is
    '2021-09-08 11:11:11' in the Delta log (UTC for delta-rs and the protocol) but 18:11:11Z in the
    expected parquet (America/Los_Angeles, PDT, applied by the writer). Put the expectation back to UTC,
    after checking it is exactly that known bad value."""
    col = expected.column("as_timestamp")
    bad = datetime.datetime(2021, 9, 8, 18, 11, 11, tzinfo=datetime.timezone.utc)
    values = col.to_pylist()
    assert {v for v in values if v is not None} == {bad}, values
    fixed = pa.array(
        [None if v is None else v - datetime.timedelta(hours=7) for v in values], col.type
    )
    return expected.set_column(expected.schema.get_field_index("as_timestamp"), "as_timestamp", fixed)


EXPECTATION_FIXES = {"kg/data-reader-partition-values@latest": _fix_partition_values_golden}


def _corrected_params() -> list:
    cases = [c for c in _discover() if c.id in EXPECTATION_FIXES]
    if not cases:
        return [pytest.param(None, id="none")]
    return [pytest.param(c, id=c.id) for c in cases]


@pytest.mark.parametrize("case", _corrected_params())
def test_delta_reader_corrected_expectation(case: Case | None, testdata, server, adbc):
    """Cases whose golden expectation is known to be wrong are checked against the corrected
    expectation, through plain Flight (pyarrow.flight DoGet with a SQL ticket)."""
    if case is None:
        pytest.skip("no case needs a corrected expectation")
    import pyarrow.flight as flight

    root = testdata / "delta"
    expected = read_expected(root, case)
    if case.id in EXPECTATION_FIXES:
        expected = EXPECTATION_FIXES[case.id](expected)
    location = (root / case.table_rel).resolve()
    with registered(adbc, location, case.table_name + "_plain") as table:
        client = flight.connect(server.uri)
        try:
            actual = client.do_get(flight.Ticket(_select(table, case.version).encode())).read_all()
        finally:
            client.close()
    assert_same_table(actual, expected, case.suite.naive_timestamps_are_utc)


# --------------------------------------------------------------------------------------------------
# The comparison itself: what it forgives and what it must not
# --------------------------------------------------------------------------------------------------


def _t(**columns: pa.Array) -> pa.Table:
    return pa.table(columns)


_TS = datetime.datetime(2021, 9, 8, 11, 11, 11, 123456)
_MAP = pa.map_(pa.string(), pa.int32())

_EQUIVALENT = {
    "dictionary/large/view strings": (
        _t(s=pa.array(["a", "b", "a"]).dictionary_encode()),
        _t(s=pa.array(["a", "b", "a"], pa.large_string())),
    ),
    "string_view": (_t(s=pa.array(["x", None], pa.string_view())), _t(s=pa.array(["x", None]))),
    "dictionary binary": (
        _t(b=pa.array([b"\x00", b"\x01"]).dictionary_encode()),
        _t(b=pa.array([b"\x00", b"\x01"], pa.large_binary())),
    ),
    "column and row order": (
        _t(a=pa.array([1, 2]), b=pa.array(["x", "y"])),
        _t(b=pa.array(["y", "x"]), a=pa.array([2, 1])),
    ),
    "list child field name": (
        _t(l=pa.array([[1, None]], pa.list_(pa.field("element", pa.int32())))),
        _t(l=pa.array([[1, None]], pa.large_list(pa.field("item", pa.int32())))),
    ),
    "map entry order": (
        _t(m=pa.array([[("a", 1), ("b", 2)]], _MAP)),
        _t(m=pa.array([[("b", 2), ("a", 1)]], _MAP)),
    ),
    "NaN equals NaN, nulls equal": (
        _t(f=pa.array([float("nan"), None])),
        _t(f=pa.array([None, float("nan")])),
    ),
    "timestamp unit and zone name": (
        _t(ts=pa.array([_TS], pa.timestamp("us", "UTC"))),
        _t(ts=pa.array([_TS], pa.timestamp("us", "UTC")).cast(pa.timestamp("ns", "Etc/UTC"))),
    ),
}

_DIFFERENT = {
    "value": (_t(a=pa.array([1, 2])), _t(a=pa.array([1, 3]))),
    "row multiplicity": (_t(a=pa.array([1, 1, 2])), _t(a=pa.array([1, 2, 2]))),
    "null vs value": (_t(a=pa.array([None, 1])), _t(a=pa.array([0, 1]))),
    "column name": (_t(a=pa.array([1])), _t(A=pa.array([1]))),
    "integer width": (_t(a=pa.array([1], pa.int32())), _t(a=pa.array([1], pa.int64()))),
    "float vs double": (_t(a=pa.array([1.5], pa.float32())), _t(a=pa.array([1.5], pa.float64()))),
    "-0.0 vs 0.0": (_t(f=pa.array([-0.0])), _t(f=pa.array([0.0]))),
    "last float bit": (_t(f=pa.array([0.1])), _t(f=pa.array([math.nextafter(0.1, 1.0)]))),
    "decimal precision": (
        _t(d=pa.array([decimal.Decimal("1.50")], pa.decimal128(5, 2))),
        _t(d=pa.array([decimal.Decimal("1.50")], pa.decimal128(6, 2))),
    ),
    "string vs binary": (_t(s=pa.array(["a"])), _t(s=pa.array([b"a"]))),
    "NTZ vs UTC timestamp (golden)": (
        _t(ts=pa.array([_TS], pa.timestamp("us"))),
        _t(ts=pa.array([_TS], pa.timestamp("us", "UTC"))),
    ),
    "sub-microsecond digits": (
        _t(ts=pa.array([_TS], pa.timestamp("us", "UTC"))),
        _t(ts=pa.array([1631099471123456789], pa.timestamp("ns", "UTC"))),
    ),
    "map value": (
        _t(m=pa.array([[("a", 1), ("b", 2)]], _MAP)),
        _t(m=pa.array([[("a", 1), ("b", 3)]], _MAP)),
    ),
    "list element order": (
        _t(l=pa.array([[1, 2]], pa.list_(pa.int32()))),
        _t(l=pa.array([[2, 1]], pa.list_(pa.int32()))),
    ),
    "struct field order": (
        _t(s=pa.array([{"x": 1, "y": 2}])),
        _t(s=pa.array([{"y": 2, "x": 1}])),
    ),
}


@pytest.mark.parametrize("actual,expected", _EQUIVALENT.values(), ids=_EQUIVALENT.keys())
def test_comparison_accepts(actual, expected):
    assert_same_table(actual, expected, naive_is_utc=False)
    assert_same_table(expected, actual, naive_is_utc=False)


@pytest.mark.parametrize("actual,expected", _DIFFERENT.values(), ids=_DIFFERENT.keys())
def test_comparison_rejects(actual, expected):
    with pytest.raises((AssertionError, pa.ArrowInvalid)):
        assert_same_table(actual, expected, naive_is_utc=False)
    with pytest.raises((AssertionError, pa.ArrowInvalid)):
        assert_same_table(expected, actual, naive_is_utc=False)


def test_comparison_dat_naive_timestamps_are_utc():
    """DAT expectations: naive timestamp[ns] (UTC wall clock) against Delta's timestamp[us, UTC]."""
    naive_ns = _t(ts=pa.array([_TS], pa.timestamp("us")).cast(pa.timestamp("ns")))
    utc_us = _t(ts=pa.array([_TS], pa.timestamp("us", "UTC")))
    assert_same_table(utc_us, naive_ns, naive_is_utc=True)
    with pytest.raises(AssertionError):
        assert_same_table(utc_us, naive_ns, naive_is_utc=False)
    shifted = _t(ts=pa.array([_TS + datetime.timedelta(hours=7)], pa.timestamp("us", "UTC")))
    with pytest.raises(AssertionError):
        assert_same_table(shifted, naive_ns, naive_is_utc=True)

"""Shared fixtures: a real `quiver serve` process on a fresh warehouse, and the shared Delta test data.

The server binary comes from QUIVER_BIN (tests/run.sh sets it); the port is read from the line the
server prints after binding 127.0.0.1:0, so nothing sleeps or races for ports.
"""

import os
import pathlib
import signal
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _binary() -> str:
    return os.environ.get("QUIVER_BIN", str(REPO / "target" / "debug" / "quiver"))


class Server:
    def __init__(
        self,
        warehouse: pathlib.Path | str,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ):
        """`warehouse` is a local directory or an object-store URI; `env` adds to the environment,
        `args` to the command line."""
        self.warehouse = warehouse
        self.proc = subprocess.Popen(
            [_binary(), "serve", "--warehouse", str(warehouse), "--listen", "127.0.0.1:0", *(args or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        # With --http-listen, its address comes first ("quiver http on http://...").
        self.http = None
        line = self.proc.stdout.readline().strip()
        if line.startswith("quiver http on "):
            self.http = line.removeprefix("quiver http on ")
            line = self.proc.stdout.readline().strip()
        if not line.startswith("quiver listening on grpc"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.uri = line.removeprefix("quiver listening on ")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server for the whole session; tests use distinct table names."""
    srv = Server(tmp_path_factory.mktemp("warehouse"))
    yield srv
    assert srv.stop() == 0, "server did not exit cleanly on SIGTERM"


@pytest.fixture()
def fresh_server(tmp_path):
    """A server of its own, for tests that need an empty warehouse."""
    srv = Server(tmp_path / "warehouse")
    yield srv
    assert srv.stop() == 0


@pytest.fixture()
def adbc(server):
    import adbc_driver_flightsql.dbapi as dbapi

    with dbapi.connect(server.uri, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def testdata() -> pathlib.Path:
    """../shared/testdata (or QUIVER_TESTDATA); tests that need it skip, saying so, when it is absent."""
    root = pathlib.Path(os.environ.get("QUIVER_TESTDATA", REPO.parent / "shared" / "testdata"))
    if not (root / "delta").is_dir():
        pytest.skip(f"shared Delta test data not found at {root} (set QUIVER_TESTDATA)")
    return root


def quiver(*args, stdin=None):
    return subprocess.run(
        [_binary(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "QUIVER_LOG": "off"},
        timeout=60,
    )


@pytest.fixture(scope="session")
def auth_file(tmp_path_factory):
    """An auth file made with the CLI: two users and two API tokens, one of each role."""
    directory = tmp_path_factory.mktemp("auth")
    entries = []
    for user, password, role in [("writer", "w-pass", "read_write"), ("reader", "r-pass", "read")]:
        hashed = quiver("auth", "hash-password", stdin=password + "\n")
        assert hashed.returncode == 0, hashed.stderr
        entries.append(f'[[users]]\nname = "{user}"\npassword_hash = "{hashed.stdout.strip()}"\nrole = "{role}"\n')
    tokens = {}
    for name, role in [("etl", "read_write"), ("dashboard", "read")]:
        made = quiver("auth", "new-token", "--name", name, "--role", role)
        assert made.returncode == 0, made.stderr
        tokens[role] = made.stderr.strip().rsplit(" ", 1)[-1]
        entries.append(made.stdout)
    path = directory / "auth.toml"
    path.write_text("\n".join(entries))
    assert "w-pass" not in path.read_text() and tokens["read"] not in path.read_text()
    return path, tokens

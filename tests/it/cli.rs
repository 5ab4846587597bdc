//! The real binary: `quiver sql` prints results, `quiver serve` prints its address and stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");

fn sql(warehouse: &std::path::Path, statement: &str) -> std::process::Output {
    Command::new(QUIVER)
        .args(["sql", statement, "--warehouse"])
        .arg(warehouse)
        .output()
        .expect("run quiver sql")
}

#[test]
fn sql_command_runs_statements_against_the_warehouse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh");
    let created = sql(&wh, "CREATE TABLE t AS SELECT 1 AS id, 'x' AS name");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let out = sql(&wh, "SELECT name FROM t");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("| x    |"));
    let bad = sql(&wh, "SELECT * FROM missing");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("table not found: public.missing"));
}

#[test]
fn serve_prints_its_address_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(QUIVER)
        .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(
        line.starts_with("quiver listening on grpc://127.0.0.1:"),
        "{line}"
    );
    assert!(
        !line.trim_end().ends_with(":0"),
        "the real port is printed: {line}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

//! Commit benchmark: many small appends to one table, in process (no server), with and without
//! checkpoints; then OPTIMIZE. Prints figures, asserts nothing.
//!
//!   tests/bench/run.sh commits [--appends N] [--concurrency N] [--modes checkpoints,none,auto]
//!
//! Three modes: checkpoints every 10 commits; no checkpoints; checkpoints and automatic compaction
//! (`delta.autoOptimize.autoCompact`, 50 small files). For each it reports the mean and the
//! slowest of the 100 appends before commit 100, 1,000, ... (one at a time: each alone in its
//! commit) and a `SELECT count(*)` in a fresh session (which must read the log from scratch: the
//! newest checkpoint and the commits after it, or every commit without one), then the file count
//! and a scan's time before and after `OPTIMIZE`. `--concurrency` appends from that many tasks at
//! once (group commit joins them).

use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use quiver::session::{QuiverSession, SessionOptions};

struct Args {
    appends: usize,
    concurrency: usize,
    /// Which of `checkpoints`, `none` (no checkpoints) and `auto` (checkpoints and automatic
    /// compaction) to run, in that order.
    modes: Vec<String>,
}

fn args() -> Args {
    let mut parsed = Args {
        appends: 5_000,
        concurrency: 1,
        modes: vec!["checkpoints".into(), "none".into(), "auto".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--appends" => parsed.appends = value.parse().expect("--appends N"),
            "--concurrency" => parsed.concurrency = value.parse().expect("--concurrency N"),
            "--modes" => parsed.modes = value.split(',').map(str::to_string).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    parsed
}

async fn run(session: &QuiverSession, sql: &str) -> Vec<RecordBatch> {
    let stream = quiver::query::run_sql(session, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    stream.try_collect().await.expect("rows")
}

async fn timed(session: &QuiverSession, sql: &str) -> Duration {
    let started = Instant::now();
    run(session, sql).await;
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn mode(args: &Args, checkpoints: bool, auto_compact: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = url::Url::from_directory_path(dir.path()).expect("url");
    let session = QuiverSession::open_with(warehouse.clone(), SessionOptions::default())
        .await
        .expect("session");
    // Without checkpoints: an interval no run reaches.
    let interval = if checkpoints { 10 } else { 100_000_000 };
    run(&session, "CREATE TABLE small (id BIGINT, v DOUBLE)").await;
    run(
        &session,
        &format!("ALTER TABLE small SET TBLPROPERTIES ('delta.checkpointInterval' = '{interval}')"),
    )
    .await;
    if auto_compact {
        run(
            &session,
            "ALTER TABLE small SET TBLPROPERTIES ('delta.autoOptimize.autoCompact' = 'true')",
        )
        .await;
    }
    let label = match (checkpoints, auto_compact) {
        (true, true) => "checkpoints + auto-compaction",
        (true, false) => "checkpoints every 10",
        (false, _) => "no checkpoints",
    };
    let marks: Vec<usize> = [100, 1_000, 5_000, 10_000, 50_000]
        .into_iter()
        .filter(|m| *m <= args.appends)
        .collect();
    let started = Instant::now();
    let mut done = 0;
    for mark in &marks {
        // Appends up to just before the mark, then the one that makes it, timed alone.
        while done + args.concurrency <= mark.saturating_sub(100) {
            let tasks: Vec<_> = (0..args.concurrency)
                .map(|i| {
                    let session = session.clone();
                    let id = done + i;
                    tokio::spawn(async move {
                        run(
                            &session,
                            &format!("INSERT INTO small VALUES ({id}, {id}.5)"),
                        )
                        .await;
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("append");
            }
            done += args.concurrency;
        }
        // The last 100 appends before the mark, one at a time, each timed.
        let window_start = mark.saturating_sub(100).max(done);
        while done < window_start {
            run(&session, &format!("INSERT INTO small VALUES ({done}, 0.5)")).await;
            done += 1;
        }
        let mut window = Vec::new();
        while done < *mark {
            window.push(timed(&session, &format!("INSERT INTO small VALUES ({done}, 0.5)")).await);
            done += 1;
        }
        let mean = window.iter().sum::<Duration>() / window.len().max(1) as u32;
        let slowest = window.iter().max().copied().unwrap_or_default();
        quiver::storage::upkeep::finish().await;
        let fresh = QuiverSession::open_with(warehouse.clone(), SessionOptions::default())
            .await
            .expect("session");
        let count = timed(&fresh, "SELECT count(*) FROM small").await;
        let again = timed(&fresh, "SELECT count(*) FROM small").await;
        println!(
            "commits[{label}]: {mark:>6} appends: last {} appends mean {:>9}, slowest {:>9} | \
             count(*) fresh session {:>9}, again {:>9} | {:.0} s so far",
            window.len(),
            ms(mean),
            ms(slowest),
            ms(count),
            ms(again),
            started.elapsed().as_secs_f64()
        );
    }
    let log = std::fs::read_dir(dir.path().join("public/small/_delta_log"))
        .map(|d| d.count())
        .unwrap_or(0);
    let files = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    let on_disk = files(&dir.path().join("public/small"));
    let scan = "SELECT sum(v), count(DISTINCT id) FROM small";
    let live_before = live_files(&session).await;
    let before = timed(&session, scan).await;
    let optimize = timed(&session, "OPTIMIZE small").await;
    let after = timed(&session, scan).await;
    let live_after = live_files(&session).await;
    println!(
        "commits[{label}]: log entries {log}; {on_disk} data files on disk; scan {} over \
         {live_before} live files; OPTIMIZE {}; scan {} over {live_after}",
        ms(before),
        ms(optimize),
        ms(after),
    );
}

/// The files the table's latest version references (`DESCRIBE DETAIL`'s `num_files`).
async fn live_files(session: &QuiverSession) -> i64 {
    let detail = run(session, "DESCRIBE DETAIL small").await;
    detail
        .first()
        .and_then(|b| b.column_by_name("num_files").cloned())
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(-1)
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "commits: {} appends of one row, {} at a time",
        args.appends, args.concurrency
    );
    runtime.block_on(async {
        for name in &args.modes {
            match name.as_str() {
                "checkpoints" => mode(&args, true, false).await,
                "none" => mode(&args, false, false).await,
                "auto" => mode(&args, true, true).await,
                other => panic!("unknown mode {other}: checkpoints, none or auto"),
            }
        }
    });
}

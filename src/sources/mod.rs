//! Sources: streams Quiver consumes into Delta tables by itself (beside what clients upload over
//! Flight and post over HTTP). `kafka` is the only kind so far: a consumer-group member appending a
//! topic's JSON messages exactly once, its offsets kept in the table's Delta log.
//!
//! [`run`] keeps this server's consumers in step with the definitions in the warehouse
//! (`storage::sources`, written by `CREATE / ALTER / DROP SOURCE`): every few seconds it starts
//! what is defined and not paused, and stops what was dropped, paused or changed (a changed
//! definition starts again). Every replica does the same, so replicas share each topic's
//! partitions through the consumer group.

pub mod kafka;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::session::QuiverSession;
use crate::storage::sources::{self, KafkaSource, SourceDefinition};

pub use kafka::RunningSource;

/// How often the definitions are read again.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the warehouse's sources until `stop` turns true, then stops them all (each finishes the
/// batch it is writing). Batches are written on `runtime`.
pub async fn run(
    session: QuiverSession,
    runtime: Handle,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<String, (SourceDefinition, RunningSource)> = BTreeMap::new();
    // Definitions that failed to start, not tried again until they change.
    let mut failed: BTreeMap<String, SourceDefinition> = BTreeMap::new();
    loop {
        match sources::list(session.warehouse()).await {
            Ok(definitions) => {
                reconcile(&session, &runtime, definitions, &mut running, &mut failed).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the source definitions"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (name, (_, source)) in std::mem::take(&mut running) {
        stop_source(&session, &name, source).await;
    }
}

async fn reconcile(
    session: &QuiverSession,
    runtime: &Handle,
    definitions: Vec<SourceDefinition>,
    running: &mut BTreeMap<String, (SourceDefinition, RunningSource)>,
    failed: &mut BTreeMap<String, SourceDefinition>,
) {
    let wanted: BTreeMap<String, SourceDefinition> = definitions
        .into_iter()
        .filter(|d| !d.paused)
        .map(|d| (d.name.clone(), d))
        .collect();
    let gone: Vec<String> = running
        .iter()
        .filter(|(name, (definition, _))| wanted.get(*name) != Some(definition))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        if let Some((_, source)) = running.remove(&name) {
            tracing::info!(source = %name, "stopping source (dropped, paused or changed)");
            stop_source(session, &name, source).await;
        }
    }
    failed.retain(|name, definition| wanted.get(name) == Some(definition));
    for (name, definition) in wanted {
        if running.contains_key(&name) || failed.contains_key(&name) {
            continue;
        }
        let started = KafkaSource::from_definition(&definition)
            .and_then(|source| kafka::start(session.clone(), source, runtime.clone()));
        match started {
            Ok(source) => {
                tracing::info!(source = %name, table = %format!("{}.{}", definition.schema, definition.table), "source started");
                session.sources().insert(
                    &name,
                    &format!("{}.{}", definition.schema, definition.table),
                    source.shared_status(),
                );
                running.insert(name, (definition, source));
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "source could not start");
                failed.insert(name, definition);
            }
        }
    }
}

/// Stops a source off the runtime's threads (its consumer thread is joined).
async fn stop_source(session: &QuiverSession, name: &str, source: RunningSource) {
    session.sources().remove(name);
    let _ = tokio::task::spawn_blocking(move || source.stop()).await;
}

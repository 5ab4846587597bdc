//! Scoring: ONNX models from `--models-dir`, run in-process with tract and called from SQL.
//!
//! Each model is a directory `<models-dir>/<name>/` holding `model.onnx` and `model.toml`
//! ([`spec`]). The [`ModelRegistry`] loads them into optimized tract plans ([`onnx`], fed through
//! [`tensors`]), reloads a directory whose files changed (`RELOAD MODELS`, or the server's poll), and
//! swaps each model whole:
//! a query holds the `Arc<Model>` it planned with, so it finishes on that version. A model that fails
//! to load is reported in `system.models` and the log, and its previous version keeps serving.
//!
//! SQL sees them as `predict(...)` ([`predict`]), `recommend(...)` and `recommend_items(...)`
//! ([`recommend`], [`recommend_items`], both scoring through [`pipeline`] over the item index of
//! [`retrieval`] and its int8 first pass [`quantized`]) and the table `system.models` ([`system`]).

pub mod exclusion;
pub mod onnx;
pub mod pipeline;
pub mod predict;
pub mod quantized;
pub mod recommend;
pub mod recommend_items;
pub mod retrieval;
pub mod spec;
pub mod system;
pub mod tensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
use crate::scoring::exclusion::Exclusion;
use crate::scoring::onnx::OnnxModel;
use crate::scoring::retrieval::Retrieval;
use crate::scoring::spec::{ModelKind, ModelSpec};

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One loaded version of a model.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub spec: ModelSpec,
    pub dir: PathBuf,
    pub onnx: OnnxModel,
    /// Two-tower models: the item index, known users and fallback.
    pub retrieval: Option<Retrieval>,
    /// Two-tower models with `[exclude]`: its index, when the query can be indexed.
    pub exclusion: Option<Exclusion>,
    pub loaded_at: DateTime<Utc>,
    /// Unique per load, so a planned query can find the version it was planned with.
    pub generation: u64,
}

impl Model {
    /// The retrieval half of a two-tower model, or an error naming the model.
    pub fn retrieval(&self) -> Result<&Retrieval> {
        self.retrieval.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "model '{}' is a {} model; recommend needs kind = \"two_tower\"",
                self.name,
                self.spec.kind.as_str()
            ))
        })
    }
}

/// A model directory's state: what serves, and the last load error if the newest files failed.
#[derive(Debug, Clone, Default)]
struct Slot {
    current: Option<Arc<Model>>,
    /// The version before `current`, kept so queries planned with it finish on it.
    previous: Option<Arc<Model>>,
    error: Option<String>,
    fingerprint: Fingerprint,
}

/// Names, sizes and modification times of a directory's files: a change in any means reload.
type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

/// What `system.models` shows of one model directory.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub name: String,
    pub model: Option<Arc<Model>>,
    pub path: PathBuf,
    pub error: Option<String>,
}

/// All models of `--models-dir`, by directory name.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    dir: Option<PathBuf>,
    /// Swapped whole by a reload; a query holds the map it read.
    slots: ArcSwap<BTreeMap<String, Slot>>,
    /// One reload at a time: the poll and `RELOAD MODELS` must not load the same files twice.
    reloading: tokio::sync::Mutex<()>,
    /// Bumped each time the set of serving models is swapped.
    generation: AtomicU64,
}

/// What a reload did, per model directory.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub name: String,
    pub action: &'static str,
    pub version: Option<String>,
    pub error: Option<String>,
}

impl ModelRegistry {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            ..Self::default()
        }
    }

    /// Changes each time models are loaded, so whatever was planned against them can tell it is
    /// out of date (see [`crate::query::prepared`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The serving version of `name`, or an error naming the problem (unknown, or never loaded).
    pub fn get(&self, name: &str) -> Result<Arc<Model>> {
        let slots = self.slots.load();
        match slots.get(name) {
            Some(Slot {
                current: Some(model),
                ..
            }) => Ok(model.clone()),
            Some(Slot { error, .. }) => Err(Error::InvalidInput(format!(
                "model '{name}' failed to load: {}",
                error.as_deref().unwrap_or("unknown error")
            ))),
            None => {
                let known: Vec<&str> = slots.keys().map(String::as_str).collect();
                Err(Error::InvalidInput(match self.dir.as_deref() {
                    Some(dir) => format!(
                        "unknown model '{name}': {}/{name}/ has no model.toml (models: {})",
                        dir.display(),
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                    None => format!("unknown model '{name}': no models directory is configured"),
                }))
            }
        }
    }

    /// Version `generation` of `name` (the serving one when `None`), while it is the serving or the
    /// previous version.
    pub fn version(&self, name: &str, generation: Option<u64>) -> Result<Arc<Model>> {
        let Some(generation) = generation else {
            return self.get(name);
        };
        let slots = self.slots.load();
        let slot = slots.get(name);
        slot.and_then(|s| {
            s.current
                .iter()
                .chain(&s.previous)
                .find(|m| m.generation == generation)
        })
        .cloned()
        .ok_or_else(|| Error::Conflict {
            table: format!("model {name}"),
            message: format!(
                "model '{name}' was reloaded twice while this query ran: run it again"
            ),
        })
    }

    /// Every model directory, for `system.models`.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        let slots = self.slots.load();
        let dir = self.dir.clone().unwrap_or_default();
        slots
            .iter()
            .map(|(name, slot)| ModelStatus {
                name: name.clone(),
                model: slot.current.clone(),
                path: dir.join(name),
                error: slot.error.clone(),
            })
            .collect()
    }

    /// The models directory (`--models-dir`), if one is configured.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Loads new and changed model directories, drops removed ones, and retries failed ones.
    pub async fn reload(&self, ctx: &SessionContext) -> Result<Vec<ReloadOutcome>> {
        let Some(dir) = self.dir.clone() else {
            return Ok(Vec::new());
        };
        let _guard = self.reloading.lock().await;
        let found = scan_off_thread(&dir).await?;
        let mut outcomes = Vec::new();
        let previous = self.slots.load_full();
        for name in previous.keys().filter(|n| !found.contains_key(*n)) {
            tracing::info!(model = %name, "model directory removed: unloaded");
            outcomes.push(outcome(name, "removed", None, None));
        }
        let mut next = BTreeMap::new();
        for (name, fingerprint) in found {
            let mut slot = previous.get(&name).cloned().unwrap_or_default();
            if slot.fingerprint == fingerprint && slot.error.is_none() {
                next.insert(name, slot);
                continue;
            }
            let action = if slot.current.is_some() {
                "reloaded"
            } else {
                "loaded"
            };
            match load(ctx, &dir, &name).await {
                Ok(model) => {
                    tracing::info!(model = %name, version = %model.spec.version, "model {action}");
                    metrics::counter!(crate::metrics::MODEL_LOADS, "model" => name.clone(), "result" => "loaded")
                        .increment(1);
                    outcomes.push(outcome(&name, action, Some(&model), None));
                    slot.previous = slot.current.replace(Arc::new(model));
                    slot.error = None;
                }
                Err(e) => {
                    let message = e.to_string();
                    let serving = match &slot.current {
                        Some(old) => format!("version {} keeps serving", old.spec.version),
                        None => "nothing serves under this name".to_string(),
                    };
                    tracing::error!(model = %name, error = %message, "model failed to load; {serving}");
                    metrics::counter!(crate::metrics::MODEL_LOADS, "model" => name.clone(), "result" => "failed")
                        .increment(1);
                    outcomes.push(outcome(
                        &name,
                        "failed",
                        slot.current.as_deref(),
                        Some(&message),
                    ));
                    slot.error = Some(message);
                }
            }
            slot.fingerprint = fingerprint;
            next.insert(name, slot);
        }
        self.slots.store(Arc::new(next));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(outcomes)
    }

    /// Whether any model directory changed since the last reload (cheap: file metadata only).
    pub async fn changed(&self) -> bool {
        let Some(dir) = &self.dir else {
            return false;
        };
        let Ok(found) = scan_off_thread(dir).await else {
            return false;
        };
        let slots = self.slots.load();
        found.len() != slots.len()
            || found
                .iter()
                .any(|(name, f)| slots.get(name).is_none_or(|s| &s.fingerprint != f))
    }
}

/// [`scan`] on tokio's blocking pool: reading directories and file metadata blocks.
async fn scan_off_thread(dir: &Path) -> Result<BTreeMap<String, Fingerprint>> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || scan(&dir))
        .await
        .map_err(|e| Error::Internal(format!("scanning the models directory: {e}")))?
}

fn outcome(
    name: &str,
    action: &'static str,
    model: Option<&Model>,
    error: Option<&str>,
) -> ReloadOutcome {
    ReloadOutcome {
        name: name.to_string(),
        action,
        version: model.map(|m| m.spec.version.clone()),
        error: error.map(str::to_string),
    }
}

/// The model directories under `dir` (those with a `model.toml`) and their fingerprints.
fn scan(dir: &Path) -> Result<BTreeMap<String, Fingerprint>> {
    let mut found = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => {
            return Err(Error::InvalidInput(format!(
                "models directory {}: {e}",
                dir.display()
            )));
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        // Hidden directories are staging areas (the training scripts write `.name.staging` and
        // rename it into place when complete).
        if name.starts_with('.') || !path.join("model.toml").is_file() {
            continue;
        }
        // A directory that vanished (a staging rename) or cannot be read is skipped this round.
        let Ok(files) = std::fs::read_dir(&path) else {
            continue;
        };
        let mut fingerprint: Fingerprint = files
            .flatten()
            .filter_map(|f| {
                let meta = f.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        f.file_name().to_string_lossy().into_owned(),
                        meta.len(),
                        meta.modified().ok(),
                    )
                })
            })
            .collect();
        fingerprint.sort();
        found.insert(name, fingerprint);
    }
    Ok(found)
}

/// Loads one model directory: the spec, the tract plan (on a blocking thread: optimizing is CPU
/// work), and for two-tower models the item index.
async fn load(ctx: &SessionContext, dir: &Path, name: &str) -> Result<Model> {
    let model_dir = dir.join(name);
    let spec = ModelSpec::read(&model_dir, name)?;
    let onnx = {
        let path = model_dir.join("model.onnx");
        let (inputs, outputs) = (spec.inputs.clone(), spec.outputs.clone());
        tokio::task::spawn_blocking(move || OnnxModel::load(&path, &inputs, &outputs))
            .await
            .map_err(|e| Error::Internal(format!("model loader panicked: {e}")))??
    };
    let retrieval = match spec.kind {
        ModelKind::Scorer => None,
        ModelKind::TwoTower => Some(Retrieval::load(ctx, &spec, &model_dir).await?),
    };
    let exclusion = match (&retrieval, &spec.exclude) {
        (Some(_), Some(exclude)) => {
            let exclusion = Exclusion::new(exclude.query.clone());
            // Built now so the first call does not wait for it; a failure waits for that call.
            if let Err(e) = exclusion.bring_up_to_date(&ctx.state()).await {
                tracing::info!(model = name, error = %e, "[exclude] index not built at load");
            }
            Some(exclusion)
        }
        _ => None,
    };
    Ok(Model {
        name: name.to_string(),
        spec,
        dir: model_dir,
        onnx,
        retrieval,
        exclusion,
        loaded_at: Utc::now(),
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    })
}

/// The columns `RELOAD MODELS` returns: one row per model directory that was loaded, reloaded,
/// removed or failed (unchanged ones are not listed).
pub fn reload_report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// A reload's outcomes as the rows of [`reload_report_schema`].
pub fn reload_report_batch(outcomes: &[ReloadOutcome]) -> Result<RecordBatch> {
    let column = |f: &dyn Fn(&ReloadOutcome) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            outcomes.iter().map(f).collect::<Vec<_>>(),
        ))
    };
    let batch = RecordBatch::try_new(
        reload_report_schema(),
        vec![
            column(&|o| Some(o.name.clone())),
            column(&|o| Some(o.action.to_string())),
            column(&|o| o.version.clone()),
            column(&|o| o.error.clone()),
        ],
    )?;
    Ok(batch)
}

/// How often the server looks for changed model directories.
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads models whose directories changed, every [`WATCH_INTERVAL`]. Checking is a directory
/// listing and file metadata; a file still being copied fails to load, is reported, and is retried
/// when its size or time changes again.
/// For ever: spawn it on the runtime the loads should run on (the server's query runtime).
pub async fn watch(ctx: SessionContext, models: Arc<ModelRegistry>) {
    let mut ticks = tokio::time::interval(WATCH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !models.changed().await {
            continue;
        }
        // A task of its own (on the same runtime): a panic while loading is logged, and the
        // watch goes on.
        let (ctx, loading) = (ctx.clone(), models.clone());
        match tokio::spawn(async move { loading.reload(&ctx).await }).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("reloading models failed: {e}"),
            Err(e) => tracing::error!("reloading models panicked: {e}"),
        }
    }
}

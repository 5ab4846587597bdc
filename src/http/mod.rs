//! The HTTP listener (`--http-listen`, off by default): what operators and load balancers ask a
//! server, beside the Flight port.
//!
//! - `GET /health`: live (200 while the process answers at all).
//! - `GET /ready`: 200 once the session, its feature views and models are loaded and Flight is
//!   serving; 503 while loading and from the moment shutdown (SIGTERM) begins, so a load balancer
//!   stops routing before in-flight calls drain.
//! - `GET /metrics`: every metric in the Prometheus text format (see [`crate::metrics`]).
//!
//! - `POST /v1/ingest/{table}`: the collector log shippers post JSON to (see [`collect`]).
//!
//! Health, readiness and metrics need no credentials: they say only whether and how the server
//! runs. Bind the listener to loopback or a private network (the default is loopback).

pub mod collect;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::session::QuiverSession;
use collect::Collector;

/// How often histogram samples are drained into buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Where the server is in its life, as `/ready` reports it.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

// 0 (the default): loading.
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Flight is serving a loaded session.
    pub fn serving(&self) {
        self.0.store(SERVING, Ordering::Release);
    }

    /// Shutdown has begun: no new work should be routed here.
    pub fn draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire) == DRAINING
    }

    fn answer(&self) -> (StatusCode, &'static str) {
        match self.0.load(Ordering::Acquire) {
            SERVING => (StatusCode::OK, "ready\n"),
            DRAINING => (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n"),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "loading: the warehouse, feature views and models are not loaded yet\n",
            ),
        }
    }
}

/// A bound HTTP listener, serving from [`HttpListener::spawn`] until the process ends.
pub struct HttpListener {
    listener: TcpListener,
    state: Arc<Shared>,
}

struct Shared {
    readiness: Arc<Readiness>,
    metrics: &'static Metrics,
    /// Set once the session is open: its gauges are read at each scrape.
    session: OnceLock<QuiverSession>,
    /// Set once the server serves: what `POST /v1/ingest/{table}` writes with.
    collector: OnceLock<Collector>,
}

impl HttpListener {
    /// Binds `address` and installs the metrics recorder (metrics are recorded only when something
    /// can scrape them).
    pub async fn bind(address: SocketAddr, readiness: Arc<Readiness>) -> Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| Error::Config {
                setting: "--http-listen",
                message: format!("cannot listen on {address}: {e}"),
            })?;
        Ok(Self {
            listener,
            state: Arc::new(Shared {
                readiness,
                metrics: crate::metrics::install(),
                session: OnceLock::new(),
                collector: OnceLock::new(),
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves on the current runtime; dropping the handle does not stop it (the process does).
    pub fn spawn(self) -> Http {
        let state = self.state.clone();
        let router = Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/v1/ingest/{table}", post(collect::ingest))
            .with_state(self.state);
        let serving = tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, router).await {
                tracing::error!(error = %e, "the HTTP listener failed");
            }
        });
        let metrics = state.metrics;
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                metrics.run_upkeep();
            }
        });
        Http {
            state,
            tasks: [serving, upkeep],
        }
    }
}

/// A serving HTTP listener.
pub struct Http {
    state: Arc<Shared>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Http {
    /// The session whose gauges `/metrics` reads.
    pub fn set_session(&self, session: &QuiverSession) {
        let _ = self.state.session.set(session.clone());
    }

    /// Starts collecting: `POST /v1/ingest/{table}` answers 503 until this is called.
    pub fn set_collector(&self, collector: Collector) {
        let _ = self.state.collector.set(collector);
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn ready(State(state): State<Arc<Shared>>) -> impl IntoResponse {
    state.readiness.answer()
}

async fn metrics(State(state): State<Arc<Shared>>) -> impl IntoResponse {
    if let Some(session) = state.session.get() {
        session.record_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

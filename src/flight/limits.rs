//! Admission and bounds for statements: a cap on how many run at once, a per-query timeout, the
//! size of uploads, and cancellation by `CancelFlightInfo`.
//!
//! A statement takes a [`Slot`] before it runs; the slot carries the deadline and a cancellation
//! token, and gives its place back when dropped (the query finished, failed, or the client left).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Default for `--max-concurrent-queries`.
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 256;
/// Default for `--max-upload-size`: one ingest call.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Tickets remembered as cancelled before their DoGet started.
const CANCELLED_MEMORY: usize = 1024;

/// The configured bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest a query or DML statement may run, from planning to its last batch.
    pub query_timeout: Option<Duration>,
    /// Statements (queries, DML, ingest) running at once; one more is refused.
    pub max_concurrent_queries: usize,
    /// Largest upload (Arrow bytes, uncompressed) one ingest call may send.
    pub max_upload_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_timeout: None,
            max_concurrent_queries: DEFAULT_MAX_CONCURRENT_QUERIES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
        }
    }
}

/// The server's admission state.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    slots: Arc<Semaphore>,
    cancels: Mutex<Cancels>,
}

#[derive(Debug)]
struct Cancels {
    /// Running DoGets by ticket.
    running: HashMap<Vec<u8>, Vec<(u64, CancellationToken)>>,
    /// Tickets cancelled before (or after) they ran, the least used forgotten first.
    cancelled: quick_cache::unsync::Cache<Vec<u8>, ()>,
    next_id: u64,
}

/// A running statement's place: its deadline, its cancellation, and a share of the cap.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    pub cancel: CancellationToken,
    registration: Option<(Arc<Admission>, Vec<u8>, u64)>,
}

impl Default for Cancels {
    fn default() -> Self {
        Self {
            running: HashMap::new(),
            cancelled: quick_cache::unsync::Cache::new(CANCELLED_MEMORY),
            next_id: 0,
        }
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_queries.max(1)));
        Self {
            limits,
            slots,
            cancels: Mutex::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A slot for a statement, or ResourceExhausted when the cap is reached.
    /// `timed`: whether `--query-timeout` applies (queries and DML; not uploads).
    pub fn admit(&self, timed: bool) -> Result<Slot> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(crate::metrics::STATEMENTS_REFUSED).increment(1);
            Error::ResourceExhausted(format!(
                "the server is running its limit of {} statements at once \
                 (--max-concurrent-queries); retry shortly",
                self.limits.max_concurrent_queries
            ))
        })?;
        let timeout = self.limits.query_timeout.filter(|_| timed);
        metrics::gauge!(crate::metrics::STATEMENTS_ACTIVE).increment(1.0);
        Ok(Slot {
            _permit: permit,
            deadline: timeout.map(|t| Instant::now() + t),
            timeout,
            cancel: CancellationToken::new(),
            registration: None,
        })
    }

    /// A slot for the DoGet of `ticket`, which `CancelFlightInfo` can cancel.
    pub fn admit_ticket(self: &Arc<Self>, ticket: &[u8]) -> Result<Slot> {
        let mut slot = self.admit(true)?;
        let mut cancels = self.cancels.lock().map_err(|_| poisoned())?;
        if cancels.cancelled.get(ticket).is_some() {
            slot.cancel.cancel();
        }
        let id = cancels.next_id;
        cancels.next_id += 1;
        cancels
            .running
            .entry(ticket.to_vec())
            .or_default()
            .push((id, slot.cancel.clone()));
        slot.registration = Some((self.clone(), ticket.to_vec(), id));
        Ok(slot)
    }

    /// Cancels every running DoGet of `ticket` and remembers it, so a DoGet that starts later fails
    /// too. Returns whether a running one was found.
    pub fn cancel_ticket(&self, ticket: &[u8]) -> Result<bool> {
        let mut cancels = self.cancels.lock().map_err(|_| poisoned())?;
        cancels.cancelled.insert(ticket.to_vec(), ());
        let running = cancels.running.get(ticket);
        for (_, token) in running.into_iter().flatten() {
            token.cancel();
        }
        Ok(running.is_some_and(|r| !r.is_empty()))
    }

    fn unregister(&self, ticket: &[u8], id: u64) {
        // A panic elsewhere while the lock was held leaves the map whole: each change is one call.
        let mut cancels = self.cancels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = cancels.running.get_mut(ticket) {
            running.retain(|(other, _)| *other != id);
            if running.is_empty() {
                cancels.running.remove(ticket);
            }
        }
    }
}

impl Slot {
    /// Runs `work` until it finishes, the deadline passes, or the statement is cancelled.
    pub async fn bound<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            result = work => result,
            () = self.expired() => Err(self.timed_out()),
            () = self.cancel.cancelled() => Err(cancelled()),
        }
    }

    /// The error for a statement stopped at its deadline.
    pub fn timed_out(&self) -> Error {
        let limit = self
            .timeout
            .map_or_else(String::new, |t| humantime::format_duration(t).to_string());
        Error::Timeout(format!(
            "the query ran longer than its {limit} limit (--query-timeout) and was stopped"
        ))
    }

    /// Resolves at the deadline; never without one.
    pub async fn expired(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

pub fn cancelled() -> Error {
    Error::Cancelled("the query was cancelled (CancelFlightInfo)".into())
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::STATEMENTS_ACTIVE).decrement(1.0);
        if let Some((admission, ticket, id)) = self.registration.take() {
            admission.unregister(&ticket, id);
        }
    }
}

fn poisoned() -> Error {
    Error::Internal("admission state poisoned by an earlier panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_refuses_and_frees() {
        let admission = Admission::new(Limits {
            max_concurrent_queries: 1,
            ..Limits::default()
        });
        let first = admission.admit(true).expect("first");
        let err = admission.admit(true).err().expect("over the cap");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        drop(first);
        assert!(admission.admit(true).is_ok());
    }

    #[tokio::test]
    async fn deadlines_and_cancellation_stop_work() {
        let admission = Arc::new(Admission::new(Limits {
            query_timeout: Some(Duration::from_millis(20)),
            ..Limits::default()
        }));
        let slot = admission.admit(true).expect("slot");
        let err = slot
            .bound(std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");

        let slot = admission.admit_ticket(b"t1").expect("slot");
        assert!(admission.cancel_ticket(b"t1").expect("cancel"));
        let err = slot
            .bound(std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)), "{err}");
        drop(slot);
        // Cancelled before it starts: the DoGet fails at once.
        let late = admission.admit_ticket(b"t1").expect("slot");
        assert!(late.cancel.is_cancelled());
    }
}

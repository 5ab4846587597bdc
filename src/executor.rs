//! A dedicated Tokio runtime for query planning and execution, so CPU-heavy work (scans, sorts,
//! Parquet encoding) never runs on the threads that serve gRPC.
//!
//! The runtime lives on its own OS thread and is shut down when the [`Executor`] is dropped.

use std::future::Future;
use std::thread::JoinHandle as ThreadHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Executor {
    handle: Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<ThreadHandle<()>>,
}

impl Executor {
    /// Starts a runtime with `threads` workers (0 = one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("quiver-executor".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("quiver-exec")
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = shutdown_rx.await;
                        });
                        runtime.shutdown_background();
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| Error::Internal("executor thread died while starting".into()))??;
        Ok(Self {
            handle,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Runs `work` on the executor and waits for its result. If the caller goes away (a client
    /// cancels), the work is aborted too.
    pub async fn run<F, T>(&self, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.handle.spawn(work);
        let abort = task.abort_handle();
        let _guard = AbortOnDrop(abort);
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Error::Internal(format!("query task panicked: {e}"))),
            Err(e) => Err(Error::Internal(format!("query task cancelled: {e}"))),
        }
    }

    /// Spawns `work` on the executor without waiting for it.
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(work)
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The thread ends by itself; joining here could block an async caller.
        drop(self.thread.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_on_its_own_threads() {
        let executor = Executor::new(1).expect("executor");
        let name = executor
            .run(async { Ok(std::thread::current().name().map(str::to_string)) })
            .await
            .expect("run");
        assert_eq!(name.as_deref(), Some("quiver-exec"));
    }
}

//! Dedicated Tokio runtimes for query planning and execution, and for uploads, so CPU-heavy work
//! (scans, sorts, Parquet encoding) never runs on the threads that serve gRPC.
//!
//! Uploads get a runtime of their own because a runtime schedules its tasks fairly: an upload
//! awaits many times (decoding, writing files, its group commit), and on a runtime busy with
//! queries each of those waits queues behind every running scan, so under load an upload that
//! takes 20 ms alone was acknowledged seconds later. On their own threads, uploads share the
//! cores with queries through the OS scheduler instead.
//!
//! Each runtime lives on its own OS thread and is shut down when its [`Executor`] is dropped.

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
    /// Starts a runtime with `threads` workers (0 = one per core), named `name`.
    pub fn new(name: &'static str, threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-runtime"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name(name)
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

    /// The runtime's handle, for work started from threads of its own (a Kafka consumer's).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
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
        let executor = Executor::new("quiver-exec", 1).expect("executor");
        let name = executor
            .run(async { Ok(std::thread::current().name().map(str::to_string)) })
            .await
            .expect("run");
        assert_eq!(name.as_deref(), Some("quiver-exec"));
    }
}

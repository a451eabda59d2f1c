//! The OTLP receiver the traced weft pairs export to (`weft_api::otlp`, the
//! one the tests and `weft demo` use), on its own thread and runtime in the
//! harness process, so that its CPU is never counted as a proxy's. It
//! drains what it receives every 100 ms and keeps only the count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

/// A running receiver; dropping it stops it.
pub(crate) struct Collector {
    pub addr: SocketAddr,
    spans: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Collector {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let spans = Arc::new(AtomicU64::new(0));
        let counted = spans.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let receiver = match weft_api::otlp::Receiver::start(SocketAddr::from((
                        [127, 0, 0, 1],
                        0,
                    )))
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(receiver.addr()));
                    let mut drain = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            _ = drain.tick() => {
                                counted.fetch_add(receiver.take().len() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                });
            })
            .context("spawn the OTLP receiver's thread")?;
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the OTLP receiver did not start")??;
        Ok(Self {
            addr,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Spans received so far.
    pub(crate) fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! The HTTP/1 header timeout, counted from the first byte of each request.
//!
//! hyper's `header_read_timeout` starts when a connection begins waiting for
//! its next request: on a keep-alive connection that includes the idle time
//! after the previous response, so a timeout short enough to cut a slowloris
//! client (a head sent a byte at a time) also closes idle keep-alive
//! connections. Here hyper is given a timer ([`HeadTimer`]) whose sleeps
//! (hyper's HTTP/1 server uses them for the header timeout alone) start
//! counting only at the first byte read ([`HeadIo`]) after hyper began
//! waiting for that head: an idle connection waits as long as its client
//! likes, a head trickling in is cut `timeout` after its first byte.
//!
//! Bytes that hyper had already buffered past the previous request
//! (pipelining) do not start the clock, only bytes read after them: a client
//! that pipelines a partial head and then sends nothing holds what an idle
//! keep-alive connection holds, and its next byte starts the clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When the first byte of the head hyper waits for arrived, shared by a
/// connection's [`HeadIo`] and [`HeadTimer`] (both polled by its one task).
#[derive(Debug)]
pub(crate) struct HeadClock {
    /// The connection's start: the first byte's time is kept after it.
    origin: Instant,
    /// Nanoseconds after `origin`, plus one; 0 while no byte has arrived.
    first_byte: AtomicU64,
}

impl HeadClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            first_byte: AtomicU64::new(0),
        })
    }

    /// hyper began waiting for a head: none of it has arrived yet.
    fn restart(&self) {
        self.first_byte.store(0, Ordering::Relaxed);
    }

    /// Bytes arrived: the first of them starts the clock, if nothing did.
    fn bytes_read(&self) {
        if self.first_byte.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.first_byte
                .store(nanos.saturating_add(1), Ordering::Relaxed);
        }
    }

    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.origin + Duration::from_nanos(n - 1)),
        }
    }
}

pin_project_lite::pin_project! {
    /// An I/O that tells its [`HeadClock`] when bytes arrive.
    #[derive(Debug)]
    pub(crate) struct HeadIo<I> {
        #[pin]
        io: I,
        clock: Arc<HeadClock>,
    }
}

impl<I> HeadIo<I> {
    pub(crate) fn new(io: I, clock: Arc<HeadClock>) -> Self {
        Self { io, clock }
    }
}

impl<I: AsyncRead> AsyncRead for HeadIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for HeadIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// hyper's timer for one HTTP/1 server connection: a sleep until a deadline
/// (hyper's header timeout, asked for as hyper begins waiting for a head)
/// runs for as long, but from the head's first byte.
#[derive(Clone, Debug)]
pub(crate) struct HeadTimer {
    clock: Arc<HeadClock>,
}

impl HeadTimer {
    pub(crate) fn new(clock: Arc<HeadClock>) -> Self {
        Self { clock }
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            clock: self.clock.clone(),
            timeout: duration,
            sleep: Some(Box::pin(tokio::time::sleep(duration))),
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.clock.restart();
        Box::pin(HeadSleep {
            clock: self.clock.clone(),
            timeout: deadline.saturating_duration_since(Instant::now()),
            sleep: None,
        })
    }
}

/// A sleep of `timeout` that starts at the head's first byte.
struct HeadSleep {
    clock: Arc<HeadClock>,
    timeout: Duration,
    /// Started once the first byte has arrived.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.sleep.is_none() {
            // Nothing of the head yet: the connection is idle. No waker is
            // needed: hyper polls this again after every read.
            let Some(first) = this.clock.first_byte() else {
                return Poll::Pending;
            };
            let deadline = tokio::time::Instant::from_std(first + this.timeout);
            this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        match &mut this.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sleep_starts_at_the_first_byte() {
        let clock = HeadClock::new();
        let timer = HeadTimer::new(clock.clone());
        let timeout = Duration::from_millis(100);
        let mut sleep = timer.sleep_until(Instant::now() + timeout);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Idle for longer than the timeout: the sleep has not started.
        tokio::time::sleep(timeout * 3).await;
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let first_byte = Instant::now();
        clock.bytes_read();
        tokio::time::timeout(Duration::from_secs(30), sleep)
            .await
            .expect("the sleep ends a timeout after the first byte");
        assert!(first_byte.elapsed() >= timeout);
        // hyper waits for the next head: the clock starts afresh.
        let mut sleep = timer.sleep_until(Instant::now() + timeout);
        tokio::time::sleep(timeout * 2).await;
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
    }
}

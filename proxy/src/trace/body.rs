//! A response body that ends its gRPC span when the trailers (with
//! `grpc-status`) pass, the body ends or fails, or the body is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::Pending;
use crate::http::{Body, BoxError};

/// A response body passed through unchanged, ending its span on the way.
#[derive(Debug)]
pub struct TracedBody {
    inner: Body,
    /// `None` once the span has ended.
    pending: Option<Pending>,
}

impl TracedBody {
    pub(super) fn new(inner: Body, pending: Pending) -> Self {
        Self {
            inner,
            pending: Some(pending),
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Both fields are `Unpin` (the inner body is boxed).
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(pending) = this.pending.take()
                {
                    pending.end(Some(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(pending) = this.pending.take() {
                    pending.fail();
                }
            }
            Poll::Ready(None) => {
                if let Some(pending) = this.pending.take() {
                    pending.end(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

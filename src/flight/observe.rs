//! Each gRPC call, observed: counted by method and gRPC status and timed to its last message
//! (a stream's trailers), with a request id that its log lines and `system.queries` share.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

use crate::metrics::{RPC_SECONDS, RPCS};

/// The id of one RPC, attached to its request by the guard (see [`crate::history::next_id`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub u64);

/// The RPC's method as a label: one of the Flight and health methods, or `other` (a client may
/// send any path).
pub fn method_label(path: &str) -> &'static str {
    const METHODS: &[&str] = &[
        "Handshake",
        "ListFlights",
        "GetFlightInfo",
        "PollFlightInfo",
        "GetSchema",
        "DoGet",
        "DoPut",
        "DoExchange",
        "DoAction",
        "ListActions",
        "Check",
        "Watch",
    ];
    let method = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// gRPC status codes by number, as Prometheus labels spell them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_label(grpc_status: Option<&http::HeaderValue>) -> &'static str {
    grpc_status
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

/// One call being observed; recorded once, when its status is known or it is dropped unfinished
/// (the client went away: `CANCELLED`).
pub struct Call {
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Call {
    pub fn start(method: &'static str) -> Self {
        Self {
            method,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        metrics::counter!(RPCS, "method" => self.method, "code" => code).increment(1);
        metrics::histogram!(RPC_SECONDS, "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }

    /// The response's headers: a trailers-only answer (an error, most often) carries its status
    /// there and ends the call; otherwise the body is watched for its trailers.
    pub fn observe(mut self, response: http::Response<Body>) -> http::Response<Body> {
        if let Some(status) = response.headers().get("grpc-status") {
            self.finish(code_label(Some(status)));
            return response;
        }
        response.map(|inner| Body::new(Observed { inner, call: self }))
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// A response body that records its call when the trailers pass.
struct Observed {
    inner: Body,
    call: Call,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = code_label(trailers.get("grpc-status"));
                    self.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.finish("INTERNAL"),
            Poll::Ready(None) => self.call.finish("OK"),
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

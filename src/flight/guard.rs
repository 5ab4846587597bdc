//! The layer every RPC passes before it reaches the Flight service: it authenticates the caller
//! (attaching a [`Principal`] to the request), reads the caller's session settings from their cookie
//! (and answers with the new cookie when a handler changed them), and turns a panic in a handler
//! into an Internal status, so one bug fails one call and the server keeps serving.
//!
//! Only the Flight handshake is let through without a bearer token: it is where a username and
//! password are exchanged for one.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;
use tracing::Instrument;

use crate::auth::{Auth, Principal};
use crate::flight::observe::{Call, RequestId, method_label};
use crate::flight::session_cookie::{self, ClientSettings};

const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";
/// The gRPC health checking protocol's RPCs (`Check`, `Watch`).
const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The session settings a request came with (see [`session_cookie`]), attached by [`GuardLayer`].
pub fn client_settings<T>(request: &tonic::Request<T>) -> ClientSettings {
    request
        .extensions()
        .get::<ClientSettings>()
        .cloned()
        .unwrap_or_default()
}

/// The id the guard gave a request (a fresh one for a request that did not pass it).
pub fn request_id<T>(request: &tonic::Request<T>) -> u64 {
    request
        .extensions()
        .get::<RequestId>()
        .map_or_else(crate::history::next_id, |id| id.0)
}

/// The principal of a request, attached by [`GuardLayer`]. Fails closed: a request that did not pass
/// the layer has no principal and is refused.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller on this request"))
}

#[derive(Clone)]
pub struct GuardLayer {
    auth: Arc<Auth>,
}

impl GuardLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, ResBody> tower::Service<http::Request<Body>> for Guard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let call = Call::start(method_label(request.uri().path()));
        let request_id = crate::history::next_id();
        request.extensions_mut().insert(RequestId(request_id));
        let mut session = None;
        // The handshake is how a caller gets a token; a health check comes from a load balancer,
        // which has none, and says only whether the server serves.
        let open = request.uri().path() == HANDSHAKE_PATH
            || request.uri().path().starts_with(HEALTH_PATH_PREFIX);
        if !open {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match self.auth.authenticate(header) {
                Ok(principal) => {
                    let settings = session_cookie::read(request.headers(), &self.auth, &principal);
                    request.extensions_mut().insert(settings.clone());
                    request.extensions_mut().insert(principal.clone());
                    session = Some((settings, principal));
                }
                Err(e) => {
                    let status = e.to_status();
                    return Box::pin(async move { Ok(call.observe(status.into_http())) });
                }
            }
        }
        let auth = self.auth.clone();
        // The service that was polled ready is the one that must be called (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_string();
        // Every log line of the call carries its id (`--log-format json`).
        let span = tracing::info_span!("rpc", request_id);
        // Which RPCs a client makes, in order (`--log quiver::flight::guard=debug`).
        span.in_scope(|| tracing::debug!(rpc = %path, "call"));
        let handled = async move {
            let response = match AssertUnwindSafe(inner.call(request)).catch_unwind().await {
                Ok(result) => result.map(|response| {
                    let mut response = response.map(Body::new);
                    // A handler changed the client's settings (SET, SetSessionOptions).
                    if let Some((settings, principal)) = session
                        && let Some(cookie) = settings.set_cookie(&auth, &principal)
                    {
                        response
                            .headers_mut()
                            .append(http::header::SET_COOKIE, cookie);
                    }
                    response
                }),
                Err(panic) => {
                    let message = crate::error::panic_message(panic.as_ref());
                    tracing::error!(rpc = %path, panic = %message, "handler panicked");
                    let status = Status::internal(format!(
                        "internal error: the server hit a bug handling {path} (it is logged); \
                         the server is still serving"
                    ));
                    Ok(status.into_http())
                }
            };
            response.map(|response| call.observe(response))
        };
        Box::pin(handled.instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service};

    use super::*;

    /// A handler with a bug.
    #[derive(Clone)]
    struct Panics;

    impl Service<http::Request<Body>> for Panics {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            Box::pin(async { panic!("a bug in a handler") })
        }
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let mut guard = GuardLayer::new(Arc::new(Auth::open().expect("auth"))).layer(Panics);
        let request = http::Request::builder()
            .uri("/arrow.flight.protocol.FlightService/DoGet")
            .body(Body::empty())
            .expect("request");
        let response = guard.call(request).await.expect("a response, not a panic");
        assert_eq!(grpc_status(&response), Some("13"));
    }
}

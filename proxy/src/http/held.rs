//! HTTP/1 upstream connections, pooled per endpoint in a plain idle list:
//! a request takes the most recently used idle connection (or makes one),
//! holds it while the response body streams, and the end of the body puts
//! it back. An HTTP/1 client's requests share one slot, held by its
//! connection (when a connection is not ready again by the end of the
//! body, the client's next request waits for it); an HTTP/2 client's
//! requests each have their own. An idle keep-alive client holds no
//! upstream connection.
//!
//! This replaces hyper-util's pool for plain HTTP/1 requests, and with it,
//! per request, the pool's hashed lookup, the lazy connect raced against
//! the checkout, and the task hyper-util spawns to put each connection
//! back once its response body has ended. HTTP/2 upstreams and upgrades
//! still go through hyper-util's pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower::BoxError;

use super::body::RequestBody;
use super::client::{EndpointClient, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_ENDPOINT};
use crate::upstream::EndpointState;

/// Idle connections of one endpoint that no client holds, oldest first.
#[derive(Default)]
pub(crate) struct IdleConnections(Mutex<Vec<Idle>>);

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl IdleConnections {
    /// The most recently used idle connection still worth using.
    fn take(&self, idle_timeout: Duration) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.0.lock().ok()?;
        drop_stale(&mut idle, idle_timeout);
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next client, within `max_idle`.
    fn put(&self, sender: SendRequest<RequestBody>, idle_timeout: Duration, max_idle: usize) {
        if !sender.is_ready() {
            return;
        }
        let Ok(mut idle) = self.0.lock() else {
            return;
        };
        drop_stale(&mut idle, idle_timeout);
        if idle.len() < max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for `idle_timeout` or closed by the server.
    pub(crate) fn reap(&self, idle_timeout: Duration) {
        if let Ok(mut idle) = self.0.lock() {
            drop_stale(&mut idle, idle_timeout);
            idle.retain(|entry| !entry.sender.is_closed());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map_or(0, |idle| idle.len())
    }
}

/// Drops the entries idle for `idle_timeout` (a prefix: entries are pushed
/// in time order), which closes their connections.
fn drop_stale(idle: &mut Vec<Idle>, idle_timeout: Duration) {
    let now = Instant::now();
    let stale = idle.partition_point(|entry| now.duration_since(entry.since) >= idle_timeout);
    idle.drain(..stale);
}

/// The upstream connection a request is using (a request extension,
/// shared by the request's tries; an HTTP/1 client's requests share one).
#[derive(Default)]
pub(crate) struct HeldConnection(Mutex<Option<Held>>);

struct Held {
    /// Where the connection goes back to: its endpoint's connections as
    /// they were when it was made (a re-resolved endpoint gets new ones,
    /// and connections to the old addresses are not handed out again).
    home: Arc<EndpointClient>,
    sender: SendRequest<RequestBody>,
}

impl HeldConnection {
    /// The held connection when it belongs to `home`; one held for another
    /// endpoint goes back to that endpoint's idle list.
    fn take_for(&self, home: &Arc<EndpointClient>) -> Option<SendRequest<RequestBody>> {
        let held = self.0.lock().ok()?.take()?;
        if Arc::ptr_eq(&held.home, home) {
            Some(held.sender)
        } else {
            held.release();
            None
        }
    }

    fn hold(&self, home: Arc<EndpointClient>, sender: SendRequest<RequestBody>) {
        let previous = match self.0.lock() {
            Ok(mut held) => held.replace(Held { home, sender }),
            Err(_) => None,
        };
        if let Some(previous) = previous {
            previous.release();
        }
    }

    /// Puts the held connection back in its endpoint's idle list now that
    /// the response it carried has ended, so that an idle keep-alive client
    /// holds no upstream connection. One not yet ready for another request
    /// (its connection's task has not seen the end of the body yet) stays
    /// held: the client's next request waits for it, or the client's end
    /// releases it.
    pub(crate) fn release(&self) {
        let ready = match self.0.lock() {
            Ok(mut held) => match held.as_ref() {
                Some(current) if current.sender.is_ready() || current.sender.is_closed() => {
                    held.take()
                }
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(held) = ready {
            held.release();
        }
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        if let Some(held) = self.0.get_mut().ok().and_then(Option::take) {
            held.release();
        }
    }
}

impl Held {
    /// Back to the idle list: now when the connection is ready for another
    /// request, else once its response body has ended.
    fn release(self) {
        let Held { home, mut sender } = self;
        if sender.is_ready() {
            home.idle
                .put(sender, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_ENDPOINT);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    home.idle
                        .put(sender, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_ENDPOINT);
                }
            });
        }
    }
}

/// Sends one request on a connection to `endpoint` (the one the client
/// holds, an idle one, or a new one) and holds that connection until the
/// response ends. A reused connection the server closed before the
/// request went out is replaced by a new one, once.
pub(crate) async fn send(
    endpoint: &EndpointState,
    home: Arc<EndpointClient>,
    held: &HeldConnection,
    mut request: Request<RequestBody>,
) -> Result<Response<Incoming>, BoxError> {
    origin_form(request.uri_mut());
    let reused = held
        .take_for(&home)
        .or_else(|| home.idle.take(POOL_IDLE_TIMEOUT));
    let mut sender = match reused {
        Some(mut sender) => match sender.ready().await {
            Ok(()) => sender,
            Err(_) => Box::pin(connect(endpoint)).await?,
        },
        None => Box::pin(connect(endpoint)).await?,
    };
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut error) => match error.take_message() {
            Some(unsent) => {
                sender = Box::pin(connect(endpoint)).await?;
                sender.send_request(unsent).await?
            }
            None => return Err(error.into_error().into()),
        },
    };
    held.hold(home, sender);
    Ok(response)
}

/// A new HTTP/1 connection through the upstream room (TLS origination and
/// connect metrics included), driven by a task of its own. Callers box
/// this future: it is large (resolution, connect, TLS handshake) and rare,
/// and inline it would grow every request's future, which is moved
/// whole into its box on each request.
async fn connect(endpoint: &EndpointState) -> Result<SendRequest<RequestBody>, BoxError> {
    let connected = endpoint.establish(Some(&endpoint.metrics), None).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(connected.stream))
        .await?;
    let address = endpoint.address.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(endpoint = %address, %error, "upstream HTTP/1 connection failed");
        }
    });
    Ok(sender)
}

/// The request target as an origin server expects it: the path and query.
fn origin_form(uri: &mut Uri) {
    let origin = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    *uri = origin;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_out_in_origin_form() {
        for (absolute, origin) in [
            ("http://app:8080/a/b?c=d", "/a/b?c=d"),
            ("https://app/", "/"),
            ("http://app", "/"),
            ("http://app/?q", "/?q"),
        ] {
            let mut uri: Uri = absolute.parse().unwrap();
            origin_form(&mut uri);
            assert_eq!(uri, origin, "{absolute}");
            assert!(uri.authority().is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_past_the_timeout_are_dropped() {
        let idle = IdleConnections::default();
        let (sender, connection) = ready_connection().await;
        idle.put(sender, Duration::from_secs(30), 4);
        assert_eq!(idle.len(), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(idle.take(Duration::from_secs(30)).is_none());
        assert_eq!(idle.len(), 0);
        connection.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_list_is_bounded_and_hands_out_the_newest() {
        let idle = IdleConnections::default();
        let mut connections = Vec::new();
        for _ in 0..3 {
            let (sender, connection) = ready_connection().await;
            idle.put(sender, Duration::from_secs(30), 2);
            connections.push(connection);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(idle.len(), 2);
        assert!(idle.take(Duration::from_secs(30)).is_some());
        assert_eq!(idle.len(), 1);
        for connection in connections {
            connection.abort();
        }
    }

    /// A connection over an in-memory pipe whose far end never answers,
    /// ready for a request.
    async fn ready_connection() -> (SendRequest<RequestBody>, tokio::task::JoinHandle<()>) {
        let (near, far) = tokio::io::duplex(1024);
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(near))
            .await
            .unwrap();
        let connection = tokio::spawn(async move {
            let _far = far;
            let _ = connection.await;
        });
        sender.ready().await.unwrap();
        (sender, connection)
    }
}

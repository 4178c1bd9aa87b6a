//! Why the ambassador could not use a Redis connection, one variant per
//! condition. Clients see the message after `-ERR attache: `; logs carry
//! the same words.

use crate::upstream::UpstreamUnavailable;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    /// No connection was made: limits, breakers, every connect failed.
    #[error(transparent)]
    Unavailable(#[from] UpstreamUnavailable),
    /// Sentinel mode, before any Sentinel named the master.
    #[error("no Sentinel has named a master for {0:?} yet")]
    NoMasterYet(String),
    #[error("reading from the upstream failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing to the upstream failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("the upstream closed the connection")]
    Closed,
    #[error("the upstream sent invalid RESP: {0}")]
    InvalidReply(#[source] attache_resp::ProtocolError),
    /// A reply arrived with no command waiting for it.
    #[error("the upstream sent a reply nobody asked for")]
    UnaskedReply,
    /// Sentinel named a new master; connections to the old one are dropped.
    #[error("the Redis master changed (Sentinel failover)")]
    MasterChanged,
    /// A shared connection was needed and none is open.
    #[error("no upstream connection")]
    NotConnected,
    /// Setting up a connection (`HELLO 3`, `AUTH`, `SELECT n`) failed.
    #[error("{step} failed: {cause}")]
    Setup {
        step: String,
        #[source]
        cause: Box<RedisError>,
    },
    /// Redis answered a setup command with an error.
    #[error("{step} failed: {answer}")]
    SetupRefused { step: String, answer: String },
    /// An idle pooled connection held bytes nobody asked for.
    #[error("unexpected data on an idle connection")]
    DataWhileIdle,
    #[error("closed while idle")]
    ClosedWhileIdle,
    #[error("the Sentinel does not know a master called {0:?}")]
    UnknownMaster(String),
    #[error("the Sentinel named an unusable master: {0}")]
    UnusableMaster(#[source] attache_config::model::EndpointSyntaxError),
}

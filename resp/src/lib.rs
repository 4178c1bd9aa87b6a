//! RESP, the Redis protocol, as attache's Redis ambassador needs it: find
//! where a frame ends without allocating (so a partial read costs nothing),
//! turn a client's frame into a command, and write the few frames attache
//! sends itself. RESP2 and RESP3 (including push frames and attributes);
//! inline commands; limits on bulk length, nesting depth, element count and
//! line length, so a hostile client gets an error instead of a memory bill.
//!
//! No I/O: the caller owns the buffers.
//!
//! # Layout
//! - [`check`]: is a whole frame at the start of the buffer, and how long is it?
//! - [`command`]: a client's command (array of bulk strings, or inline).
//! - [`encode`]: frames attache writes (errors, commands, simple replies).

pub mod check;
pub mod command;
pub mod encode;

pub use check::{Frame, check};
pub use command::{Command, parse_command};

/// Bounds every parse enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (Redis' `proto-max-bulk-len` default: 512 MiB).
    pub max_bulk_bytes: usize,
    /// Deepest nesting of aggregates (the checker keeps the first 64 levels
    /// on the stack, deeper ones in a vector).
    pub max_depth: usize,
    /// Most elements in one aggregate (Redis allows 1024 * 1024 * 1024 for
    /// commands, far more than a sidecar should hold).
    pub max_elements: usize,
    /// Longest line: an inline command or a simple string, error or number.
    pub max_line_bytes: usize,
}

impl Limits {
    /// Bounds for what Redis answers: replies are not hostile input, so they
    /// may nest as deep as a script's table (Redis itself stops Lua at a few
    /// thousand levels) and hold as many elements as a list has; only memory
    /// bounds them. A bound still stops a server that sends garbage.
    #[must_use]
    pub fn for_replies() -> Self {
        Self {
            max_depth: 100_000,
            max_elements: u32::MAX as usize,
            ..Self::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_depth: 32,
            max_elements: 1024 * 1024,
            max_line_bytes: 64 * 1024,
        }
    }
}

/// Why input is not RESP, or not acceptable RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    #[error("a line does not end with CRLF")]
    BadLineEnding,
    #[error("invalid length or count")]
    InvalidLength,
    #[error("invalid {0} value")]
    InvalidValue(&'static str),
    #[error("bulk of {length} bytes exceeds the limit of {limit}")]
    BulkTooLong { length: u64, limit: usize },
    #[error("aggregate of {count} elements exceeds the limit of {limit}")]
    TooManyElements { count: u64, limit: usize },
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("streamed (`?`) RESP3 aggregates are not supported")]
    Streamed,
    #[error("a command must be an array of bulk strings")]
    NotACommand,
    // A command's errors, in Redis' own words: clients and tests match on them.
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

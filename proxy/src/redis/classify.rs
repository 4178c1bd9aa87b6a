//! What attache does with each command: forward it on a shared connection,
//! answer it locally, or refuse it with an error reply that says why.

use attache_resp::Command;

/// The fate of one command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Forwarded on the client's shared connection.
    Shared,
    /// `SELECT n`: the client moves to database n's shared connections.
    Select(u32),
    /// `QUIT`: answered `+OK`, then the connection closes.
    Quit,
    /// Answered with this error (the text after `-`).
    Refused(String),
    /// Answered `+OK` locally (client names are per client, not per shared connection).
    LocalOk,
    /// Starts a session on a connection of the client's own.
    Pinned,
    /// `AUTH`: checked by attache against its configured password.
    Auth,
    /// `HELLO`: the protocol (RESP2 or RESP3) and optional login, handled
    /// by attache; the server's HELLO answer comes from the new shared set.
    Hello,
    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE` from a client that is
    /// not subscribed (a client on shared connections never is): answered
    /// here, one confirmation per channel as Redis sends them. Forwarded, a
    /// command with several replies would shift every later reply on the
    /// shared connection onto other clients' commands.
    Unsubscribed,
}

/// Commands that start state on their connection: a pinned session.
const STARTS_SESSION: [&str; 5] = ["MULTI", "WATCH", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"];

/// Commands that block their connection until their reply.
const BLOCKING: [&str; 11] = [
    "BLPOP",
    "BRPOP",
    "BLMOVE",
    "BRPOPLPUSH",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
    "MONITOR",
];

/// Scripts and functions: they hold their connection until they return,
/// which may be long. On a connection of their own, other clients' commands
/// are not stuck behind them; they get Redis' own `-BUSY` while a script
/// runs too long, and `SCRIPT KILL` / `FUNCTION KILL` reach Redis at once.
const SCRIPTS: [&str; 6] = [
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
];

/// Commands that reset a connection: not served on shared connections.
const CONNECTION_IDENTITY: [&str; 1] = ["RESET"];

/// Commands that only read: sending one again after its connection failed
/// cannot change anything (the first copy may or may not have run).
const READ_ONLY: [&str; 48] = [
    "BITCOUNT",
    "BITPOS",
    "DBSIZE",
    "ECHO",
    "EXISTS",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HSCAN",
    "HSTRLEN",
    "HVALS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "MGET",
    "PFCOUNT",
    "PING",
    "PTTL",
    "SCAN",
    "SCARD",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SSCAN",
    "STRLEN",
    "TTL",
    "TYPE",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "ZCARD",
    "ZCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANK",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

/// Whether `command` only reads (and so may be retried once).
pub(super) fn is_read_only(command: &Command) -> bool {
    READ_ONLY
        .binary_search(&command.upper_name(&mut [0; 32]))
        .is_ok()
}

/// Whether `command` blocks its connection until its reply.
pub(super) fn is_blocking(command: &Command) -> bool {
    let mut buffer = [0; 32];
    let name = command.upper_name(&mut buffer);
    BLOCKING.contains(&name)
        || (matches!(name, "XREAD" | "XREADGROUP")
            && command
                .args
                .iter()
                .any(|arg| arg.eq_ignore_ascii_case(b"BLOCK")))
}

/// Commands no multiplexing proxy can carry.
const NEVER: [&str; 4] = ["SYNC", "PSYNC", "REPLCONF", "SHUTDOWN"];

pub(super) fn classify(command: &Command) -> Class {
    let mut buffer = [0; 32];
    let name = command.upper_name(&mut buffer);
    let arg = |index: usize| {
        command
            .args
            .get(index)
            .map(|arg| String::from_utf8_lossy(arg).to_ascii_uppercase())
    };
    match name {
        "SELECT" => match arg(1).and_then(|index| index.parse().ok()) {
            Some(index) if command.args.len() == 2 => Class::Select(index),
            _ => Class::Refused("ERR value is not an integer or out of range".into()),
        },
        "QUIT" => Class::Quit,
        "AUTH" => Class::Auth,
        "HELLO" => Class::Hello,
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => Class::Unsubscribed,
        "CLIENT" => match arg(1).as_deref() {
            Some("SETNAME" | "SETINFO") => Class::LocalOk,
            Some("REPLY") => Class::Refused(
                "ERR attache: CLIENT REPLY cannot work through a proxy that shares connections"
                    .into(),
            ),
            // Connection state the client keeps for the rest of its
            // connection: a connection of its own, until it leaves.
            Some("TRACKING" | "CACHING" | "NO-EVICT" | "NO-TOUCH" | "ID") => Class::Pinned,
            Some("KILL") => Class::Refused(
                "ERR attache: CLIENT KILL could close connections other clients share; not served by attache"
                    .into(),
            ),
            _ => Class::Shared,
        },
        _ if STARTS_SESSION.contains(&name) || is_blocking(command) || SCRIPTS.contains(&name) => {
            Class::Pinned
        }
        _ if CONNECTION_IDENTITY.contains(&name) => Class::Refused(format!(
            "ERR attache: {name} would reset a connection other clients share; not served by attache"
        )),
        _ if NEVER.contains(&name) => Class::Refused(format!(
            "ERR attache: {name} cannot be sent through a proxy"
        )),
        _ => Class::Shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn command(words: &[&str]) -> Command {
        let args: Vec<Bytes> = words
            .iter()
            .map(|word| Bytes::from(word.to_string()))
            .collect();
        let raw = attache_resp::encode::command(args.iter().map(|arg| &arg[..]));
        Command { args, raw }
    }

    #[test]
    fn commands_are_classified_case_insensitively() {
        assert_eq!(classify(&command(&["get", "k"])), Class::Shared);
        assert_eq!(classify(&command(&["select", "3"])), Class::Select(3));
        assert!(matches!(
            classify(&command(&["SELECT", "x"])),
            Class::Refused(_)
        ));
        assert_eq!(classify(&command(&["Quit"])), Class::Quit);
        assert_eq!(
            classify(&command(&["client", "setname", "app"])),
            Class::LocalOk
        );
        assert!(matches!(
            classify(&command(&["client", "reply", "off"])),
            Class::Refused(_)
        ));
        assert_eq!(classify(&command(&["multi"])), Class::Pinned);
        assert_eq!(classify(&command(&["blpop", "q", "0"])), Class::Pinned);
        assert_eq!(
            classify(&command(&["eval", "return 1", "0"])),
            Class::Pinned
        );
        assert_eq!(classify(&command(&["fcall_ro", "f", "0"])), Class::Pinned);
        assert_eq!(classify(&command(&["script", "kill"])), Class::Shared);
        assert_eq!(classify(&command(&["subscribe", "news"])), Class::Pinned);
        for unsubscribe in ["unsubscribe", "PUNSUBSCRIBE", "sunsubscribe"] {
            assert_eq!(
                classify(&command(&[unsubscribe, "a", "b"])),
                Class::Unsubscribed
            );
        }
        assert_eq!(
            classify(&command(&["exec"])),
            Class::Shared,
            "EXEC without MULTI errs upstream"
        );
        assert_eq!(
            classify(&command(&["xread", "streams", "s", "0"])),
            Class::Shared
        );
        assert_eq!(
            classify(&command(&["xread", "block", "0", "streams", "s", "$"])),
            Class::Pinned
        );
        assert_eq!(classify(&command(&["auth", "pw"])), Class::Auth);
        assert_eq!(
            classify(&command(&["client", "tracking", "on"])),
            Class::Pinned
        );
        assert_eq!(
            classify(&command(&["client", "pause", "10"])),
            Class::Shared,
            "server-wide"
        );
        assert!(matches!(
            classify(&command(&["client", "kill", "id", "1"])),
            Class::Refused(_)
        ));
        assert!(matches!(classify(&command(&["reset"])), Class::Refused(_)));
        assert_eq!(classify(&command(&["hello", "3"])), Class::Hello);
        assert!(is_read_only(&command(&["get", "k"])));
        assert!(!is_read_only(&command(&["incr", "k"])));
        assert!(
            READ_ONLY.windows(2).all(|pair| pair[0] < pair[1]),
            "kept sorted for readers"
        );
    }
}

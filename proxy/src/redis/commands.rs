//! Everything the ambassador knows about Redis commands, one row each: how
//! it is carried, whether it only reads, how long its reply may take, what
//! it does to a pinned session, and whether it is counted under its own
//! name. Commands not in the table are shared, not read-only, get the
//! command timeout, and count as `other`.
//!
//! `classify` turns a row (and, for a few commands, their arguments) into
//! what the client's connection does; `pinned` reads `wait` and `session`.

use std::sync::LazyLock;

use attache_resp::Command;

/// How a command is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Carried {
    /// On the client's shared connection.
    Shared,
    /// On a connection of the client's own, until its reply or its session
    /// ends (transactions, subscriptions, blocking commands, scripts).
    Pinned,
    /// Pinned only with the `BLOCK` option (`XREAD`, `XREADGROUP`).
    PinnedWhenBlocking,
    /// Answered or decided by attache itself (`AUTH`, `HELLO`, `SELECT`,
    /// `QUIT`, `CLIENT`, the `UNSUBSCRIBE` family): see `classify`.
    Local,
    /// Refused with `-ERR attache: <name> <this>`.
    Refused(&'static str),
}

/// How long a command's reply may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// The listener's `command_timeout`.
    CommandTimeout,
    /// Blocks for the seconds in its last argument (`BLPOP k 5`).
    LastArgumentSeconds,
    /// Blocks for the seconds in argument N (`BLMPOP 5 ...`).
    ArgumentSeconds(usize),
    /// Blocks for the milliseconds in argument N (`WAIT n 100`).
    ArgumentMilliseconds(usize),
    /// Blocks for the milliseconds after `BLOCK`, when present.
    BlockOption,
    /// No reply deadline: replies come when they come (subscriptions, MONITOR).
    Unbounded,
}

/// What a command does to a pinned session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionChange {
    Plain,
    Multi,
    /// EXEC or DISCARD.
    EndTransaction,
    Watch,
    Unwatch,
    Subscribe,
    Unsubscribe,
    Monitor,
    /// State kept for the rest of the connection (AUTH as another user).
    Sticky,
    Select,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec {
    /// Uppercase.
    pub(super) name: &'static str,
    pub(super) carried: Carried,
    /// Only reads: sending it again after its connection failed cannot
    /// change anything.
    pub(super) read_only: bool,
    pub(super) wait: Wait,
    pub(super) session: SessionChange,
    /// Counted under its own name in `attache_redis_commands_total`.
    pub(super) counted: bool,
}

const fn shared(name: &'static str) -> Spec {
    Spec {
        name,
        carried: Carried::Shared,
        read_only: false,
        wait: Wait::CommandTimeout,
        session: SessionChange::Plain,
        counted: false,
    }
}

const fn pinned(name: &'static str, wait: Wait) -> Spec {
    Spec {
        carried: Carried::Pinned,
        wait,
        ..shared(name)
    }
}

const fn local(name: &'static str) -> Spec {
    Spec {
        carried: Carried::Local,
        ..shared(name)
    }
}

const fn refused(name: &'static str, why: &'static str) -> Spec {
    Spec {
        carried: Carried::Refused(why),
        ..shared(name)
    }
}

impl Spec {
    const fn read_only(self) -> Self {
        Self {
            read_only: true,
            ..self
        }
    }

    const fn counted(self) -> Self {
        Self {
            counted: true,
            ..self
        }
    }

    const fn session(self, session: SessionChange) -> Self {
        Self { session, ..self }
    }
}

const CANNOT_BE_PROXIED: &str = "cannot be sent through a proxy";

/// Sorted by name (a test checks).
const TABLE: &[Spec] = &[
    shared("APPEND").counted(),
    local("AUTH").session(SessionChange::Sticky),
    shared("BITCOUNT").read_only(),
    shared("BITPOS").read_only(),
    pinned("BLMOVE", Wait::LastArgumentSeconds).counted(),
    pinned("BLMPOP", Wait::ArgumentSeconds(1)),
    pinned("BLPOP", Wait::LastArgumentSeconds).counted(),
    pinned("BRPOP", Wait::LastArgumentSeconds).counted(),
    pinned("BRPOPLPUSH", Wait::LastArgumentSeconds),
    pinned("BZMPOP", Wait::ArgumentSeconds(1)),
    pinned("BZPOPMAX", Wait::LastArgumentSeconds),
    pinned("BZPOPMIN", Wait::LastArgumentSeconds).counted(),
    local("CLIENT"),
    shared("DBSIZE").read_only(),
    shared("DECR").counted(),
    shared("DECRBY").counted(),
    shared("DEL").counted(),
    shared("DISCARD")
        .counted()
        .session(SessionChange::EndTransaction),
    shared("ECHO").read_only(),
    pinned("EVAL", Wait::CommandTimeout).counted(),
    pinned("EVALSHA", Wait::CommandTimeout).counted(),
    pinned("EVALSHA_RO", Wait::CommandTimeout),
    pinned("EVAL_RO", Wait::CommandTimeout),
    shared("EXEC")
        .counted()
        .session(SessionChange::EndTransaction),
    shared("EXISTS").read_only().counted(),
    shared("EXPIRE").counted(),
    pinned("FCALL", Wait::CommandTimeout).counted(),
    pinned("FCALL_RO", Wait::CommandTimeout),
    shared("GEODIST").read_only(),
    shared("GEOHASH").read_only(),
    shared("GEOPOS").read_only(),
    shared("GET").read_only().counted(),
    shared("GETBIT").read_only(),
    shared("GETDEL").counted(),
    shared("GETEX").counted(),
    shared("GETRANGE").read_only(),
    shared("GETSET").counted(),
    shared("HDEL").counted(),
    local("HELLO"),
    shared("HEXISTS").read_only().counted(),
    shared("HGET").read_only().counted(),
    shared("HGETALL").read_only().counted(),
    shared("HINCRBY").counted(),
    shared("HKEYS").read_only(),
    shared("HLEN").read_only(),
    shared("HMGET").read_only().counted(),
    shared("HSCAN").read_only(),
    shared("HSET").counted(),
    shared("HSTRLEN").read_only(),
    shared("HVALS").read_only(),
    shared("INCR").counted(),
    shared("INCRBY").counted(),
    shared("INFO").counted(),
    shared("KEYS").counted(),
    shared("LINDEX").read_only(),
    shared("LLEN").read_only().counted(),
    shared("LPOP").counted(),
    shared("LPOS").read_only(),
    shared("LPUSH").counted(),
    shared("LRANGE").read_only().counted(),
    shared("MGET").read_only().counted(),
    pinned("MONITOR", Wait::Unbounded)
        .counted()
        .session(SessionChange::Monitor),
    shared("MSET").counted(),
    pinned("MULTI", Wait::CommandTimeout)
        .counted()
        .session(SessionChange::Multi),
    shared("PEXPIRE").counted(),
    shared("PFCOUNT").read_only(),
    shared("PING").read_only().counted(),
    pinned("PSUBSCRIBE", Wait::Unbounded)
        .counted()
        .session(SessionChange::Subscribe),
    refused("PSYNC", CANNOT_BE_PROXIED),
    shared("PTTL").read_only(),
    shared("PUBLISH").counted(),
    local("PUNSUBSCRIBE")
        .session(SessionChange::Unsubscribe)
        .with_wait(Wait::Unbounded),
    local("QUIT"),
    refused("REPLCONF", CANNOT_BE_PROXIED),
    refused(
        "RESET",
        "would reset a connection other clients share; not served by attache",
    ),
    shared("RPOP").counted(),
    shared("RPUSH").counted(),
    shared("SADD").counted(),
    shared("SCAN").read_only().counted(),
    shared("SCARD").read_only().counted(),
    local("SELECT").counted().session(SessionChange::Select),
    shared("SET").counted(),
    shared("SETEX").counted(),
    refused("SHUTDOWN", CANNOT_BE_PROXIED),
    shared("SISMEMBER").read_only().counted(),
    shared("SMEMBERS").read_only().counted(),
    shared("SMISMEMBER").read_only(),
    shared("SREM").counted(),
    shared("SSCAN").read_only(),
    pinned("SSUBSCRIBE", Wait::Unbounded).session(SessionChange::Subscribe),
    shared("STRLEN").read_only(),
    pinned("SUBSCRIBE", Wait::Unbounded)
        .counted()
        .session(SessionChange::Subscribe),
    local("SUNSUBSCRIBE")
        .session(SessionChange::Unsubscribe)
        .with_wait(Wait::Unbounded),
    refused("SYNC", CANNOT_BE_PROXIED),
    shared("TTL").read_only().counted(),
    shared("TYPE").read_only().counted(),
    shared("UNLINK").counted(),
    local("UNSUBSCRIBE")
        .session(SessionChange::Unsubscribe)
        .with_wait(Wait::Unbounded),
    shared("UNWATCH").session(SessionChange::Unwatch),
    pinned("WAIT", Wait::ArgumentMilliseconds(2)),
    pinned("WAITAOF", Wait::ArgumentMilliseconds(3)),
    pinned("WATCH", Wait::CommandTimeout)
        .counted()
        .session(SessionChange::Watch),
    shared("XADD").counted(),
    shared("XLEN").read_only(),
    shared("XRANGE").read_only().counted(),
    Spec {
        carried: Carried::PinnedWhenBlocking,
        wait: Wait::BlockOption,
        ..shared("XREAD").counted()
    },
    Spec {
        carried: Carried::PinnedWhenBlocking,
        wait: Wait::BlockOption,
        ..shared("XREADGROUP")
    },
    shared("XREVRANGE").read_only(),
    shared("ZADD").counted(),
    shared("ZCARD").read_only(),
    shared("ZCOUNT").read_only(),
    shared("ZMSCORE").read_only(),
    shared("ZRANGE").read_only().counted(),
    shared("ZRANK").read_only(),
    shared("ZREM").counted(),
    shared("ZREVRANK").read_only(),
    shared("ZSCAN").read_only(),
    shared("ZSCORE").read_only(),
];

impl Spec {
    const fn with_wait(self, wait: Wait) -> Self {
        Self { wait, ..self }
    }
}

/// The row of a command not in the table.
const UNKNOWN: Spec = shared("");

/// The row for `name` (uppercase).
pub(super) fn spec_of(name: &str) -> &'static Spec {
    row_of(name).spec
}

/// The row for `command`.
pub(super) fn spec(command: &Command) -> &'static Spec {
    spec_of(command.upper_name(&mut [0; 32]))
}

/// A command's row and its place in the metric's label set, found once
/// per command: everything the hot path asks of the table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub(super) spec: &'static Spec,
    /// Index into [`counted`], or its length for `other`.
    pub(super) label: usize,
}

/// The row for `command`.
pub(super) fn row(command: &Command) -> Row {
    row_of(command.upper_name(&mut [0; 32]))
}

fn row_of(name: &str) -> Row {
    match TABLE.binary_search_by(|spec| spec.name.cmp(name)) {
        Ok(index) => Row {
            spec: &TABLE[index],
            label: LABELS[index],
        },
        Err(_) => Row {
            spec: &UNKNOWN,
            label: LABELS[TABLE.len()],
        },
    }
}

/// Per row, its index among the counted rows, or the number of counted
/// rows (`other`) when it is not counted; one more entry, `other`, for
/// commands not in the table.
const LABELS: [usize; TABLE.len() + 1] = {
    let mut labels = [0; TABLE.len() + 1];
    let mut counted = 0;
    let mut index = 0;
    while index < TABLE.len() {
        if TABLE[index].counted {
            labels[index] = counted;
            counted += 1;
        }
        index += 1;
    }
    let mut index = 0;
    while index <= TABLE.len() {
        if index == TABLE.len() || !TABLE[index].counted {
            labels[index] = counted;
        }
        index += 1;
    }
    labels
};

/// Whether `command` blocks its connection until its reply.
pub(super) fn is_blocking(command: &Command) -> bool {
    let spec = spec(command);
    match spec.wait {
        Wait::LastArgumentSeconds | Wait::ArgumentSeconds(_) | Wait::ArgumentMilliseconds(_) => {
            true
        }
        Wait::BlockOption => has_block_option(command),
        Wait::Unbounded => spec.session == SessionChange::Monitor,
        Wait::CommandTimeout => false,
    }
}

/// Whether `command` carries the `BLOCK` option.
pub(super) fn has_block_option(command: &Command) -> bool {
    command
        .args
        .iter()
        .any(|arg| arg.eq_ignore_ascii_case(b"BLOCK"))
}

/// The commands counted under their own name, sorted (the metric's closed
/// label set; everything else is `other`).
pub(super) fn counted() -> &'static [&'static str] {
    static COUNTED: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        TABLE
            .iter()
            .filter(|spec| spec.counted)
            .map(|spec| spec.name)
            .collect()
    });
    &COUNTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_names_each_command_once_in_uppercase() {
        assert!(TABLE.windows(2).all(|pair| pair[0].name < pair[1].name));
        assert!(
            TABLE
                .iter()
                .all(|spec| spec.name == spec.name.to_ascii_uppercase())
        );
        assert_eq!(counted().len(), 64);
        assert!(counted().windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn unknown_commands_are_shared_and_timed() {
        let spec = spec_of("OBJECT");
        assert_eq!(spec.carried, Carried::Shared);
        assert_eq!(spec.wait, Wait::CommandTimeout);
        assert!(!spec.read_only && !spec.counted);
        assert!(spec_of("GET").read_only);
        assert!(!spec_of("INCR").read_only);
    }

    #[test]
    fn a_rows_label_is_its_place_among_the_counted_commands() {
        let other = counted().len();
        for spec in TABLE.iter() {
            let label = row_of(spec.name).label;
            match counted().binary_search(&spec.name) {
                Ok(index) => assert_eq!(label, index, "{}", spec.name),
                Err(_) => assert_eq!(label, other, "{}", spec.name),
            }
        }
        assert_eq!(row_of("NOSUCHCOMMAND").label, other);
    }
}

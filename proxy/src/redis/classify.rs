//! What attache does with each command: forward it on a shared connection,
//! pin the client to a connection of its own, answer it locally, or refuse
//! it with an error reply that says why. The facts per command live in the
//! command table (`commands`); this adds what depends on arguments.

use attache_resp::Command;

use super::commands::{self, Carried, Spec};

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

/// What the client's connection does with `command`: its row in the
/// command table (`spec`), and for `SELECT`, `CLIENT` and the `BLOCK`
/// option its arguments.
pub(super) fn classify(command: &Command, spec: &Spec) -> Class {
    let name = spec.name;
    match spec.carried {
        Carried::Shared => Class::Shared,
        Carried::Pinned => Class::Pinned,
        Carried::PinnedWhenBlocking if commands::has_block_option(command) => Class::Pinned,
        Carried::PinnedWhenBlocking => Class::Shared,
        Carried::Refused(why) => Class::Refused(format!("ERR attache: {name} {why}")),
        Carried::Local => local(name, command),
    }
}

/// The commands attache answers or decides itself.
fn local(name: &str, command: &Command) -> Class {
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
            Some(sub) if is_sticky_client_subcommand(sub.as_bytes()) => Class::Pinned,
            Some("KILL") => Class::Refused(
                "ERR attache: CLIENT KILL could close connections other clients share; not served by attache"
                    .into(),
            ),
            _ => Class::Shared,
        },
        _ => Class::Shared,
    }
}

/// `CLIENT` subcommands whose state lasts for the rest of the connection.
pub(super) fn is_sticky_client_subcommand(subcommand: &[u8]) -> bool {
    [
        &b"TRACKING"[..],
        b"CACHING",
        b"NO-EVICT",
        b"NO-TOUCH",
        b"ID",
    ]
    .iter()
    .any(|sticky| subcommand.eq_ignore_ascii_case(sticky))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::test_command as command;

    fn classify(command: &Command) -> Class {
        super::classify(command, commands::spec(command))
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
    }
}

//! What a cache may hold: which keys (prefixes and `*`/`?` patterns), which
//! read commands, and the request each reply is stored under (the command
//! and its arguments after the key).

use attache_resp::Command;
use bytes::Bytes;

/// The keys a cache may hold.
pub(super) struct KeyPatterns {
    /// Keys starting with one of these.
    prefixes: Vec<Vec<u8>>,
    /// Keys matching one of these (`*` any run of bytes, `?` one byte).
    globs: Vec<Vec<u8>>,
}

impl KeyPatterns {
    pub(super) fn new(keys: &[String]) -> Self {
        let (globs, prefixes) = keys
            .iter()
            .map(|key| key.as_bytes().to_vec())
            .partition(|key| key.iter().any(|byte| matches!(byte, b'*' | b'?')));
        Self { prefixes, globs }
    }

    pub(super) fn matches(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|prefix| key.starts_with(prefix))
            || self.globs.iter().any(|glob| glob_matches(glob, key))
    }

    /// The prefixes Redis is asked to broadcast invalidations for: each
    /// pattern's text before its first wildcard, without prefixes another
    /// one covers (Redis refuses overlapping ones). Empty: every key.
    pub(super) fn tracked_prefixes(&self) -> Vec<Vec<u8>> {
        let mut prefixes: Vec<Vec<u8>> = self
            .prefixes
            .iter()
            .cloned()
            .chain(self.globs.iter().map(|glob| {
                let literal = glob
                    .iter()
                    .position(|byte| matches!(byte, b'*' | b'?'))
                    .unwrap_or(glob.len());
                glob[..literal].to_vec()
            }))
            .collect();
        if prefixes.iter().any(Vec::is_empty) {
            return Vec::new();
        }
        prefixes.sort();
        prefixes.dedup();
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for prefix in prefixes {
            // Sorted, so a covering prefix comes just before what it covers.
            if !kept.last().is_some_and(|last| prefix.starts_with(last)) {
                kept.push(prefix);
            }
        }
        kept
    }
}

/// `*` matches any run of bytes (none too), `?` exactly one; everything
/// else itself. Iterative, with one backtrack point: linear in practice
/// and never recursive, whatever the key.
fn glob_matches(glob: &[u8], key: &[u8]) -> bool {
    let (mut g, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, k));
                g += 1;
            }
            Some(&byte) if byte == b'?' || byte == key[k] => {
                g += 1;
                k += 1;
            }
            _ => match star {
                Some((star_at, matched)) => {
                    g = star_at + 1;
                    k = matched + 1;
                    star = Some((star_at, matched + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&byte| byte == b'*')
}

/// A read the cache can answer.
pub(super) enum Read<'a> {
    /// One key; the reply is stored under `request`.
    One { key: &'a Bytes, request: Vec<u8> },
    /// `MGET`: each key's element stored on its own.
    PerKey { keys: &'a [Bytes] },
}

/// The request under which `MGET` stores each key's element.
pub(super) const MGET_ELEMENT: &[u8] = b"MGET";

/// Which of the cacheable commands are on, by their index in
/// [`attache_config::model::CACHEABLE_COMMANDS`].
#[derive(Clone, Copy)]
pub(super) struct Commands(u16);

impl Commands {
    pub(super) fn new(names: &[String]) -> Self {
        let bits = attache_config::model::CACHEABLE_COMMANDS
            .iter()
            .enumerate()
            .filter(|(_, name)| names.iter().any(|given| given == *name))
            .fold(0, |bits, (index, _)| bits | (1 << index));
        Self(bits)
    }

    /// The read `command` is, when it is on, cacheable and reads keys
    /// `patterns` allow.
    pub(super) fn read<'a>(self, command: &'a Command, patterns: &KeyPatterns) -> Option<Read<'a>> {
        let mut buffer = [0; 32];
        let name = command.upper_name(&mut buffer);
        let index = attache_config::model::CACHEABLE_COMMANDS
            .binary_search(&name)
            .ok()?;
        if self.0 & (1 << index) == 0 {
            return None;
        }
        let args = &command.args;
        let key = args.get(1)?;
        match name {
            "MGET" => args[1..]
                .iter()
                .all(|key| patterns.matches(key))
                .then(|| Read::PerKey { keys: &args[1..] }),
            // Several keys count together; one is cached.
            "EXISTS" if args.len() != 2 => None,
            _ if !patterns.matches(key) => None,
            _ => {
                let mut request = name.as_bytes().to_vec();
                for arg in &args[2..] {
                    request.extend_from_slice(&u32::try_from(arg.len()).ok()?.to_le_bytes());
                    request.extend_from_slice(arg);
                }
                Some(Read::One { key, request })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::test_command as command;

    #[test]
    fn globs_match_like_redis_for_star_and_question_mark() {
        assert!(glob_matches(b"user:*", b"user:"));
        assert!(glob_matches(b"user:*", b"user:42"));
        assert!(glob_matches(b"s:*:profile", b"s:1:2:profile"));
        assert!(!glob_matches(b"s:*:profile", b"s:1:profiles"));
        assert!(glob_matches(b"a?c", b"abc"));
        assert!(!glob_matches(b"a?c", b"ac"));
        assert!(glob_matches(b"*", b""));
        assert!(!glob_matches(b"*x*x*x*x*y", &[b'x'; 64]));
    }

    #[test]
    fn tracked_prefixes_drop_what_another_covers() {
        let patterns = KeyPatterns::new(&[
            "user:".into(),
            "user:42:".into(),
            "session:*:profile".into(),
            "sess".into(),
        ]);
        assert_eq!(
            patterns.tracked_prefixes(),
            [b"sess".to_vec(), b"user:".to_vec()]
        );
        assert!(
            KeyPatterns::new(&["*".into()])
                .tracked_prefixes()
                .is_empty()
        );
    }

    #[test]
    fn reads_are_stored_under_their_arguments_and_only_for_listed_keys() {
        let patterns = KeyPatterns::new(&["user:".into()]);
        let commands = Commands::new(&["GET".into(), "HGET".into(), "MGET".into()]);
        let get = command(&["get", "user:1"]);
        assert!(
            matches!(commands.read(&get, &patterns), Some(Read::One { request, .. }) if request == b"GET")
        );
        let hget = command(&["HGET", "user:1", "name"]);
        let Some(Read::One { request, .. }) = commands.read(&hget, &patterns) else {
            panic!("HGET is cacheable");
        };
        assert_eq!(request, b"HGET\x04\0\0\0name");
        assert!(
            commands
                .read(&command(&["get", "order:1"]), &patterns)
                .is_none()
        );
        assert!(
            commands
                .read(&command(&["strlen", "user:1"]), &patterns)
                .is_none()
        );
        assert!(
            commands
                .read(&command(&["mget", "user:1", "order:1"]), &patterns)
                .is_none()
        );
        assert!(matches!(
            commands.read(&command(&["mget", "user:1", "user:2"]), &patterns),
            Some(Read::PerKey { keys }) if keys.len() == 2
        ));
    }
}

//! Where each key of a YAML document sits: a walk over the parser's events
//! that records, for every mapping value and sequence item, its key path
//! (`listeners[1].max_connections`), the line of its key, and the text it
//! spans. A shape or type error the deserializer reports at a position is
//! then named by the innermost key holding that position, at that key's
//! own line.

use granit_parser::{Event, Parser};

/// One node: its path, where its key starts, and where it ends.
#[derive(Debug)]
struct Node {
    path: String,
    /// (line, column), 1-based, of the key (or the item, in a sequence).
    start: (usize, usize),
    /// (line, column), 1-based, just past the node's last character.
    end: (usize, usize),
}

/// The key paths of a document.
#[derive(Debug, Default)]
pub(crate) struct KeyPaths {
    nodes: Vec<Node>,
}

enum Frame {
    Mapping {
        path: String,
        start: (usize, usize),
        /// The key read, waiting for its value, and where it was.
        key: Option<(String, (usize, usize))>,
    },
    Sequence {
        path: String,
        start: (usize, usize),
        next: usize,
    },
}

fn position(marker: granit_parser::Marker) -> (usize, usize) {
    (marker.line(), marker.col() + 1)
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl KeyPaths {
    /// Walks `text`; a text the parser refuses yields what was read before.
    pub(crate) fn of(text: &str) -> Self {
        let mut paths = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            // The path and start of the node this event opens or is, when
            // it is a value (not a key).
            let node = |stack: &mut Vec<Frame>| -> Option<(String, (usize, usize))> {
                match stack.last_mut()? {
                    Frame::Mapping { path, key, .. } => {
                        let (name, start) = key.take()?;
                        Some((join(path, &name), start))
                    }
                    Frame::Sequence { path, next, .. } => {
                        let item = format!("{path}[{next}]");
                        *next += 1;
                        Some((item, position(span.start)))
                    }
                }
            };
            match event {
                Event::Scalar(value, ..) => {
                    let is_key = matches!(stack.last(), Some(Frame::Mapping { key: None, .. }));
                    if is_key {
                        if let Some(Frame::Mapping { key, .. }) = stack.last_mut() {
                            *key = Some((value.into_owned(), position(span.start)));
                        }
                    } else if let Some((path, start)) = node(&mut stack) {
                        paths.nodes.push(Node {
                            path,
                            start,
                            end: position(span.end),
                        });
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let (path, start) =
                        node(&mut stack).unwrap_or_else(|| (String::new(), position(span.start)));
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Mapping {
                            path,
                            start,
                            key: None,
                        }
                    } else {
                        Frame::Sequence {
                            path,
                            start,
                            next: 0,
                        }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(
                        Frame::Mapping { path, start, .. } | Frame::Sequence { path, start, .. },
                    ) = stack.pop()
                        && !path.is_empty()
                    {
                        paths.nodes.push(Node {
                            path,
                            start,
                            end: position(span.end),
                        });
                    }
                }
                Event::Alias(_) => {
                    if let Some((path, start)) = node(&mut stack) {
                        paths.nodes.push(Node {
                            path,
                            start,
                            end: position(span.end),
                        });
                    }
                }
                _ => {}
            }
        }
        paths
    }

    /// Where the node at `path` starts (its key) and ends, 1-based
    /// (line, column) pairs.
    pub(crate) fn span_of(&self, path: &str) -> Option<((usize, usize), (usize, usize))> {
        self.nodes
            .iter()
            .find(|node| node.path == path)
            .map(|node| (node.start, node.end))
    }

    /// The line of the key (or item) at `path`.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        self.nodes
            .iter()
            .find(|node| node.path == path)
            .map(|node| node.start.0)
    }

    /// The innermost node holding (`line`, `column`), both 1-based: its
    /// path and its key's line.
    pub(crate) fn at(&self, line: usize, column: usize) -> Option<(&str, usize)> {
        let here = (line, column);
        self.nodes
            .iter()
            .filter(|node| node.start <= here && here <= node.end)
            .max_by_key(|node| (node.start, std::cmp::Reverse(node.end)))
            .map(|node| (node.path.as_str(), node.start.0))
    }
}

#[cfg(test)]
mod tests {
    use super::KeyPaths;

    const TEXT: &str = "\
listeners:
  - name: a
    listen: 127.0.0.1:7000
    max_connections: lots
  - name: b
    tls: {cert: x, key: y}
upstreams:
  db:
    endpoints: \"127.0.0.1:1\"
";

    #[test]
    fn positions_map_to_the_innermost_key_and_its_line() {
        let paths = KeyPaths::of(TEXT);
        assert_eq!(paths.at(4, 22), Some(("listeners[0].max_connections", 4)));
        assert_eq!(paths.at(6, 21), Some(("listeners[1].tls.key", 6)));
        assert_eq!(paths.at(9, 16), Some(("upstreams.db.endpoints", 9)));
        // A key of an item, and the dash before the item.
        assert_eq!(
            paths.at(5, 5).map(|(path, _)| path),
            Some("listeners[1].name")
        );
        assert_eq!(paths.at(2, 3).map(|(path, _)| path), Some("listeners"));
    }
}

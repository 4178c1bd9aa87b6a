//! `docs/config.md` checked against this crate, so the reference cannot
//! drift from the parser:
//!
//! - each section's table lists exactly the keys the parser accepts at that
//!   place (read from the parser's own "unknown field, expected one of"
//!   error, not from a list kept here);
//! - each section has an example, a whole config that parses without a
//!   problem and sets every key of its table;
//! - a default written as a literal means the same as leaving the key out
//!   (both configs parse to the same result, problems included);
//! - a key marked "required" cannot be left out;
//! - every value a type lists as an alternative (`tcp` \| `http`) is
//!   accepted by that key.

use std::collections::BTreeSet;
use std::path::Path;

use attache_config::{Config, ConfigError, Problem};
use serde_json::Value;

/// One row of a section's table.
#[derive(Debug)]
struct Row {
    /// The keys the row documents, relative to its section (`allow.uris`).
    keys: Vec<String>,
    kind: String,
    default: String,
}

/// A heading naming a config path, with its table and example.
#[derive(Debug)]
struct Section {
    /// `listeners[].tls`, `upstreams.<name>.retry`; empty for the top level.
    path: String,
    rows: Vec<Row>,
    example: Option<String>,
}

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The text of every `code span` in `cell`, in order.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// A table row's cells; `\|` inside a cell is not a separator.
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.iter().map(|cell| cell.trim().to_owned()).collect()
}

/// Every heading that names a config path (in backticks, or "Top level"),
/// with the table and the first YAML block under it.
fn sections(markdown: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut in_section = false;
    let mut yaml: Option<String> = None;
    for line in markdown.lines() {
        if let Some(block) = yaml.as_mut() {
            if line == "```" {
                let block = yaml.take().unwrap();
                if let Some(section) = sections.last_mut().filter(|_| in_section) {
                    section.example.get_or_insert(block);
                }
            } else {
                block.push_str(line);
                block.push('\n');
            }
            continue;
        }
        if line.starts_with('#') {
            let path = if line.ends_with("Top level") {
                Some(String::new())
            } else {
                code_spans(line).into_iter().next()
            };
            in_section = path.is_some();
            if let Some(path) = path {
                sections.push(Section {
                    path,
                    rows: Vec::new(),
                    example: None,
                });
            }
        } else if line == "```yaml" {
            yaml = Some(String::new());
        } else if in_section && line.starts_with("| `") {
            let cells = cells(line);
            sections.last_mut().unwrap().rows.push(Row {
                keys: code_spans(&cells[0]),
                kind: cells[1].clone(),
                default: cells[2].clone(),
            });
        }
    }
    sections
}

/// `listeners[].http` → `["listeners[]", "http"]`.
fn segments(path: &str) -> Vec<&str> {
    path.split('.')
        .filter(|segment| !segment.is_empty())
        .collect()
}

/// JSON pointers of every node `segments` reaches from `value`: `name[]`
/// is each element of the list `name`, `<name>` each entry of a map.
fn locate(value: &Value, segments: &[&str]) -> Vec<String> {
    fn walk(value: &Value, segments: &[&str], pointer: String, found: &mut Vec<String>) {
        let Some((segment, rest)) = segments.split_first() else {
            found.push(pointer);
            return;
        };
        if *segment == "<name>" {
            for (name, child) in value.as_object().into_iter().flatten() {
                walk(child, rest, format!("{pointer}/{name}"), found);
            }
        } else if let Some(list) = segment.strip_suffix("[]") {
            for (index, child) in value[list].as_array().into_iter().flatten().enumerate() {
                walk(child, rest, format!("{pointer}/{list}/{index}"), found);
            }
        } else if let Some(child) = value.get(*segment) {
            walk(child, rest, format!("{pointer}/{segment}"), found);
        }
    }
    let mut found = Vec::new();
    walk(value, segments, String::new(), &mut found);
    found
}

/// The pointer of the first object reached by `parent` that holds `key`.
fn first_holding(value: &Value, parent: &[&str], key: &str) -> Option<String> {
    locate(value, parent).into_iter().find(|pointer| {
        value
            .pointer(pointer)
            .and_then(|node| node.get(key))
            .is_some()
    })
}

/// `name` without a list marker: `listeners[]` and `listeners` are one key.
fn bare(segment: &str) -> &str {
    segment.trim_end_matches("[]")
}

/// Whether `path` starts with `prefix`, list markers aside.
fn starts_with(path: &[&str], prefix: &[&str]) -> bool {
    path.len() >= prefix.len() && path.iter().zip(prefix).all(|(a, b)| bare(a) == bare(b))
}

/// The keys the reference documents directly under `place`: rows of any
/// section that reach one level below it, and sections one level below it.
fn documented_at(sections: &[Section], place: &[&str]) -> BTreeSet<String> {
    let mut documented = BTreeSet::new();
    for section in sections {
        let base = segments(&section.path);
        if base.len() == place.len() + 1 && starts_with(&base, place) {
            documented.insert(bare(base[place.len()]).to_owned());
        }
        for key in section.rows.iter().flat_map(|row| &row.keys) {
            let full: Vec<&str> = base.iter().copied().chain(segments(key)).collect();
            if full.len() > place.len() && starts_with(&full, place) {
                documented.insert(bare(full[place.len()]).to_owned());
            }
        }
    }
    documented
}

/// A type's alternatives when it is a choice of literals
/// (`` `tcp` \| `http` ``); `None` for anything else.
fn alternatives(kind: &str) -> Option<Vec<String>> {
    let alternatives: Vec<&str> = kind.split('|').map(str::trim).collect();
    if alternatives.len() < 2 {
        return None;
    }
    alternatives
        .iter()
        .map(|alternative| {
            let spans = code_spans(alternative);
            (spans.len() == 1 && *alternative == format!("`{}`", spans[0]))
                .then(|| spans[0].clone())
        })
        .collect()
}

/// What attache makes of `value` as a config file.
fn parse(value: &Value) -> Result<Config, Vec<Problem>> {
    let text = serde_json::to_string(value).unwrap();
    attache_config::parse(&text, "example", &|_| None).map_err(|error| match error {
        ConfigError::Invalid { problems, .. } => problems,
        ConfigError::Read { .. } => unreachable!("nothing is read"),
    })
}

/// A section's example as a JSON value, after interpolation: the examples
/// may use `${VAR:-default}`, and `${..._PASSWORD}` for secrets.
fn example_value(section: &Section) -> Value {
    let example = section
        .example
        .as_deref()
        .unwrap_or_else(|| panic!("section `{}` has no ```yaml example", section.path));
    let env = |name: &str| {
        name.ends_with("PASSWORD")
            .then(|| "example-secret".to_owned())
    };
    let text = attache_config::interpolate::interpolate(example, &env)
        .unwrap_or_else(|problems| panic!("`{}` example: {problems:?}", section.path));
    attache_config::parse(&text, "example", &env)
        .unwrap_or_else(|error| panic!("the `{}` example does not pass: {error}", section.path));
    serde_saphyr::from_str(&text).unwrap()
}

/// The keys the parser accepts in the object at `pointer`: an unknown key
/// makes it list them.
fn accepted_keys(example: &Value, pointer: &str) -> BTreeSet<String> {
    let mut probe = example.clone();
    probe
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer:?}"))
        .insert("zz_not_a_key".into(), Value::Null);
    let problems = parse(&probe).expect_err("an unknown key is refused");
    let message = &problems[0].message;
    let listed = message
        .split_once("expected one of ")
        .map(|(_, rest)| {
            rest.rsplit_once(" (column")
                .map_or(rest, |(listed, _)| listed)
        })
        .unwrap_or_else(|| panic!("no key list in {message:?}"));
    listed.split(", ").map(str::to_owned).collect()
}

/// The value a literal stands for (`5s`, `"1.2"`, `[502, 503]`). Typed
/// fields read `off` as text; untyped, YAML 1.1 would make it a boolean.
fn literal(text: &str) -> Value {
    match serde_saphyr::from_str(text) {
        Ok(Value::Bool(_)) if text != "true" && text != "false" => Value::String(text.to_owned()),
        Ok(value) => value,
        Err(error) => panic!("literal {text:?}: {error}"),
    }
}

fn set(example: &Value, pointer: &str, key: &str, value: Option<Value>) -> Value {
    let mut changed = example.clone();
    let object = changed
        .pointer_mut(pointer)
        .unwrap()
        .as_object_mut()
        .unwrap();
    match value {
        Some(value) => object.insert(key.to_owned(), value),
        None => object.remove(key),
    };
    changed
}

#[test]
fn every_section_lists_exactly_the_keys_the_parser_accepts() {
    let sections = sections(&reference());
    let paths: Vec<&str> = sections
        .iter()
        .map(|section| section.path.as_str())
        .collect();
    // Guards the Markdown reading itself: a reader that found nothing would pass.
    for expected in [
        "",
        "listeners[]",
        "listeners[].http.routes[]",
        "upstreams.<name>.health_check",
        "log",
    ] {
        assert!(
            paths.contains(&expected),
            "no section `{expected}` found in {paths:?}"
        );
    }
    for section in &sections {
        let example = example_value(section);
        let base = segments(&section.path);
        // The section's own object, and each object a dotted key reaches into.
        let mut places: BTreeSet<Vec<&str>> = BTreeSet::from([base.clone()]);
        for row in &section.rows {
            for key in &row.keys {
                let key = segments(key);
                for depth in 1..key.len() {
                    places.insert(base.iter().chain(&key[..depth]).copied().collect());
                }
            }
        }
        for place in places {
            let documented = documented_at(&sections, &place);
            let pointer = locate(&example, &place)
                .into_iter()
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "the `{}` example has no `{}`",
                        section.path,
                        place.join(".")
                    )
                });
            assert_eq!(
                documented,
                accepted_keys(&example, &pointer),
                "documented keys (left) differ from the parser's (right) at `{}`",
                place.join(".")
            );
        }
    }
}

#[test]
fn every_example_sets_its_keys_and_every_default_and_alternative_holds() {
    let sections = sections(&reference());
    let child_names: BTreeSet<String> = sections
        .iter()
        .map(|section| section.path.clone())
        .collect();
    let mut checked_defaults = 0;
    for section in &sections {
        let example = example_value(section);
        for row in &section.rows {
            for key in &row.keys {
                let full = if section.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", section.path)
                };
                if child_names.iter().any(|child| bare(child) == full) {
                    continue; // documented, with its own example, as a section
                }
                let full = segments(&full);
                let (name, parent) = full.split_last().unwrap();
                let Some(pointer) = first_holding(&example, parent, name) else {
                    panic!("the `{}` example does not set `{key}`", section.path);
                };
                let removed = parse(&set(&example, &pointer, name, None));
                let spans = code_spans(&row.default);
                if row.default.starts_with("required") {
                    assert!(
                        removed.is_err(),
                        "`{key}` is documented as required but may be left out"
                    );
                } else if spans.len() == 1 && row.default == format!("`{}`", spans[0]) {
                    let explicit = parse(&set(&example, &pointer, name, Some(literal(&spans[0]))));
                    assert_eq!(
                        removed, explicit,
                        "`{key}`: the documented default {} is not the default",
                        row.default
                    );
                    checked_defaults += 1;
                }
                // Placeholders such as `IP:PORT` are not literal values.
                let literal_alternatives =
                    alternatives(&row.kind)
                        .into_iter()
                        .flatten()
                        .filter(|value| {
                            value.chars().all(|c| {
                                c.is_ascii_lowercase() || c.is_ascii_digit() || "_.\"/".contains(c)
                            })
                        });
                for value in literal_alternatives {
                    let result = parse(&set(&example, &pointer, name, Some(literal(&value))));
                    for problem in result.err().into_iter().flatten() {
                        assert!(
                            !problem.path.is_empty()
                                && !problem.path.ends_with(&format!(".{name}")),
                            "`{key}: {value}` is documented but refused: {problem}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        checked_defaults > 50,
        "only {checked_defaults} defaults were checked"
    );
}

#[test]
fn every_yaml_block_in_the_reference_is_a_valid_config() {
    let markdown = reference();
    let blocks: Vec<&str> = markdown
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .collect();
    assert!(blocks.len() > 17, "{} blocks", blocks.len());
    let env = |name: &str| {
        name.ends_with("PASSWORD")
            .then(|| "example-secret".to_owned())
    };
    for block in blocks {
        if let Err(error) = attache_config::parse(block, "block", &env) {
            panic!("{block}\n{error}");
        }
    }
}

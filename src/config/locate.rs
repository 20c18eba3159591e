//! Where each value of a pipeline file sits: a map from a config path such as
//! `kpis[2].objective` to its line and column, so that checks made after
//! deserialisation (undefined references, missing files) can point at the text.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// A 1-based line and column in a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

/// Positions of every node of a YAML document, keyed by config path, plus the
/// first duplicated mapping key, which serde reports only at its mapping's start.
#[derive(Debug, Default)]
pub struct SourceMap {
    positions: HashMap<String, Position>,
    pub duplicate_key: Option<(String, Position)>,
}

enum Frame {
    /// A mapping: the key seen last (when the next node is its value) and the keys so far.
    Mapping {
        path: String,
        key: Option<String>,
        seen: Vec<String>,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

impl SourceMap {
    /// Indexes `text`. A YAML syntax error yields an empty map: serde reports it
    /// with a better message, so it is not repeated here.
    pub fn build(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else {
                return SourceMap::default();
            };
            let pos = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping { path, key, seen }) = stack.last_mut()
                        && key.is_none()
                    {
                        let child = join(path, &value);
                        if seen.iter().any(|k| *k == value) && map.duplicate_key.is_none() {
                            map.duplicate_key = Some((child.clone(), pos));
                        }
                        seen.push(value.to_string());
                        map.positions.insert(child, pos);
                        *key = Some(value.to_string());
                        continue;
                    }
                    let path = child_path(&mut stack);
                    map.positions.entry(path).or_insert(pos);
                }
                Event::MappingStart(..) => {
                    let path = child_path(&mut stack);
                    map.positions.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Mapping {
                        path,
                        key: None,
                        seen: Vec::new(),
                    });
                }
                Event::SequenceStart(..) => {
                    let path = child_path(&mut stack);
                    map.positions.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Sequence { path, index: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(_) => {
                    child_path(&mut stack);
                }
                _ => {}
            }
        }
        map
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(pos) = self.positions.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// The path of the node that starts now, advancing the parent's cursor.
fn child_path(stack: &mut [Frame]) -> String {
    match stack.last_mut() {
        None => String::new(),
        Some(Frame::Mapping { path, key, .. }) => join(path, &key.take().unwrap_or_default()),
        Some(Frame::Sequence { path, index }) => {
            *index += 1;
            format!("{path}[{}]", *index - 1)
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: x\nsources:\n  orders:\n    file: a.csv\nkpis:\n  - id: a\n    objective: o\n  - {id: b, objective: p}\n";

    #[test]
    fn finds_nested_values() {
        let map = SourceMap::build(DOC);
        assert_eq!(
            map.find("sources.orders.file"),
            Some(Position { line: 4, column: 5 })
        );
        assert_eq!(
            map.find("kpis[1].objective"),
            Some(Position {
                line: 8,
                column: 13
            })
        );
        assert_eq!(map.find("kpis[0]"), Some(Position { line: 6, column: 5 }));
        // Falls back to the nearest ancestor.
        assert_eq!(
            map.find("kpis[0].nothing"),
            Some(Position { line: 6, column: 5 })
        );
        assert!(map.duplicate_key.is_none());
    }

    #[test]
    fn reports_the_duplicate_key_itself() {
        let map =
            SourceMap::build("name: x\nkpis:\n  - id: a\n    grain: month\n    grain: week\n");
        let (path, pos) = map.duplicate_key.expect("duplicate found");
        assert_eq!(path, "kpis[0].grain");
        assert_eq!(pos, Position { line: 5, column: 5 });
    }
}

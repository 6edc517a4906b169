//! Finds the line and column of a field path in YAML text, so that errors found after
//! parsing (a missing reference, a bad regex, a policy's own checks) still point at the source.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

use crate::error::Segment;
use crate::FieldPath;

/// Positions (1-based line and column) of every node of one YAML document, keyed by path.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    positions: HashMap<String, (u64, u64)>,
}

enum Frame {
    Mapping { path: String, pending_key: Option<String> },
    Sequence { path: String, next_index: usize },
}

impl Locator {
    /// Indexes `text`; a syntax error ends indexing early (the parse itself reports it).
    pub(crate) fn index(text: &str) -> Self {
        let mut positions = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut started = false;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let position = (span.start.line() as u64, span.start.col() as u64 + 1);
            let is_node = matches!(
                event,
                Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) | Event::Alias(..)
            );
            if is_node {
                let node_path = match stack.last_mut() {
                    None if started => break, // only the first document is read
                    None => {
                        started = true;
                        Some(String::new())
                    }
                    Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
                        Some(key) => Some(join(path, &key)),
                        None => {
                            // This node is a key: remember where it is written, and its text.
                            let key = match &event {
                                Event::Scalar(value, ..) => value.to_string(),
                                _ => "?".to_owned(),
                            };
                            positions.entry(join(path, &key)).or_insert(position);
                            *pending_key = Some(key);
                            None
                        }
                    },
                    Some(Frame::Sequence { path, next_index }) => {
                        let item_path = join(path, &next_index.to_string());
                        *next_index += 1;
                        Some(item_path)
                    }
                };
                if let Some(node_path) = node_path {
                    positions.entry(node_path.clone()).or_insert(position);
                    match event {
                        Event::MappingStart(..) => stack.push(Frame::Mapping { path: node_path, pending_key: None }),
                        Event::SequenceStart(..) => stack.push(Frame::Sequence { path: node_path, next_index: 0 }),
                        _ => {}
                    }
                } else if matches!(event, Event::MappingStart(..) | Event::SequenceStart(..)) {
                    // A complex key: its contents are not addressable by a field path.
                    stack.push(Frame::Sequence { path: "\u{0}".to_owned(), next_index: 0 });
                }
            } else if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
            }
        }
        Self { positions }
    }

    /// True when `path` itself is written in the text.
    pub(crate) fn contains(&self, path: &FieldPath) -> bool {
        self.positions.contains_key(&path_keys(path.segments()).join("/"))
    }

    /// The position of `path`, or of its closest ancestor that exists in the text.
    pub(crate) fn find(&self, path: &FieldPath) -> Option<(u64, u64)> {
        let keys = path_keys(path.segments());
        (0..=keys.len()).rev().find_map(|len| self.positions.get(&keys[..len].join("/")).copied())
    }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}/{child}")
    }
}

fn path_keys(segments: &[Segment]) -> Vec<String> {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Key(key) => key.clone(),
            Segment::Index { index, .. } => index.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "routes:\n  - id: a\n    paths: [/x]\n  - id: b\n    upstream: up\n";

    #[test]
    fn finds_nested_fields_by_index_path() {
        let locator = Locator::index(TEXT);
        let path = FieldPath::root().key("routes").item(1, "b").key("upstream");
        assert_eq!(locator.find(&path), Some((5, 5)));
        assert_eq!(locator.find(&FieldPath::root().key("routes").index(0)), Some((2, 5)));
    }

    #[test]
    fn falls_back_to_the_closest_existing_ancestor() {
        let locator = Locator::index(TEXT);
        let path = FieldPath::root().key("routes").index(0).key("service");
        assert_eq!(locator.find(&path), Some((2, 5)));
    }
}

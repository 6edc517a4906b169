//! The four JOLT operations, compiled from their specs once at load and applied to parsed
//! documents. Semantics follow Java JOLT's `Shiftr`, `Defaultr`, `Removr` and `Sortr` for the
//! subset documented in `jolt.md`.

use gantry_config::{ConfigErrors, FieldPath};
use serde_json::{Map, Value};

/// A key on the left of a spec: a literal, or a pattern with `*`s whose matches are captured.
#[derive(Debug)]
enum KeyMatcher {
    Literal(String),
    /// The text between the stars: `rating-*` is `["rating-", ""]`.
    Pattern(Vec<String>),
}

impl KeyMatcher {
    fn parse(text: &str) -> Self {
        if text.contains('*') {
            KeyMatcher::Pattern(text.split('*').map(str::to_owned).collect())
        } else {
            KeyMatcher::Literal(text.to_owned())
        }
    }

    fn stars(&self) -> usize {
        match self {
            KeyMatcher::Literal(_) => 0,
            KeyMatcher::Pattern(parts) => parts.len() - 1,
        }
    }

    /// The captures of a match: the whole key first, then what each `*` matched.
    fn captures(&self, key: &str) -> Option<Vec<String>> {
        match self {
            KeyMatcher::Literal(literal) => (literal == key).then(|| vec![key.to_owned()]),
            KeyMatcher::Pattern(parts) => {
                let (first, rest) = parts.split_first()?;
                let mut remaining = key.strip_prefix(first.as_str())?;
                let mut captures = vec![key.to_owned()];
                for (position, part) in rest.iter().enumerate() {
                    if position == rest.len() - 1 {
                        let captured = remaining.strip_suffix(part.as_str())?;
                        captures.push(captured.to_owned());
                        remaining = "";
                    } else {
                        // Each star takes as little as it can.
                        let at = remaining.find(part.as_str())?;
                        captures.push(remaining[..at].to_owned());
                        remaining = &remaining[at + part.len()..];
                    }
                }
                remaining.is_empty().then_some(captures)
            }
        }
    }

    /// More literal text matches more specifically: such keys are tried first.
    fn literal_len(&self) -> usize {
        match self {
            KeyMatcher::Literal(literal) => literal.len(),
            KeyMatcher::Pattern(parts) => parts.iter().map(String::len).sum(),
        }
    }
}

/// `a|b*`: alternatives, the first that matches wins.
#[derive(Debug)]
struct KeySelector(Vec<KeyMatcher>);

impl KeySelector {
    fn parse(text: &str) -> Self {
        KeySelector(text.split('|').map(KeyMatcher::parse).collect())
    }

    fn is_literal(&self) -> bool {
        self.0.iter().all(|matcher| matches!(matcher, KeyMatcher::Literal(_)))
    }

    fn captures(&self, key: &str) -> Option<Vec<String>> {
        self.0.iter().find_map(|matcher| matcher.captures(key))
    }

    /// The captures every alternative has, for checking `&(N,M)` references.
    fn stars(&self) -> usize {
        self.0.iter().map(KeyMatcher::stars).min().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// shift

/// One level of the walk: the key matched there and the captures of its `*`s.
struct Level {
    captures: Vec<String>,
    /// The position of this match among the matches of its parent level (`[#N]`).
    ordinal: usize,
}

/// A reference to a matched key: `&`, `&N`, `&(N,M)`.
#[derive(Debug, Clone, Copy)]
struct KeyReference {
    level: usize,
    capture: usize,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Key(KeyReference),
}

#[derive(Debug)]
enum IndexSpec {
    /// `[]`: appended.
    Append,
    /// `[3]`.
    At(usize),
    /// `[&N]`: the matched key, which must read as a number.
    Key(KeyReference),
    /// `[#N]`: how many keys the level N up has matched before the current one.
    Ordinal(usize),
}

#[derive(Debug)]
struct OutputSegment {
    key: Vec<Piece>,
    index: Option<IndexSpec>,
}

/// An output path such as `data.&1.items[].&`.
#[derive(Debug)]
struct OutputPath(Vec<OutputSegment>);

enum ResolvedIndex {
    Append,
    At(usize),
}

struct ResolvedSegment {
    key: Option<String>,
    index: Option<ResolvedIndex>,
}

/// Largest `[N]` index written: a bigger one would fill memory with nulls.
const MAX_INDEX: usize = 10_000;

/// Reads `&`, `&N` or `&(N,M)` from the start of `text`; gives the reference and the rest.
fn parse_key_reference(text: &str) -> Result<(KeyReference, &str), String> {
    let rest = &text[1..];
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')').ok_or("`&(` without `)`")?;
        let (level, capture) = inner[..close].split_once(',').unwrap_or((&inner[..close], "0"));
        let level = level.trim().parse().map_err(|_| format!("`&({})`: the level is not a number", &inner[..close]))?;
        let capture =
            capture.trim().parse().map_err(|_| format!("`&({})`: the capture is not a number", &inner[..close]))?;
        return Ok((KeyReference { level, capture }, &inner[close + 1..]));
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let level = if digits == 0 { 0 } else { rest[..digits].parse().map_err(|_| "`&N`: N is too large")? };
    Ok((KeyReference { level, capture: 0 }, &rest[digits..]))
}

fn parse_pieces(mut text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    while !text.is_empty() {
        if text.starts_with('&') {
            let (reference, rest) = parse_key_reference(text)?;
            pieces.push(Piece::Key(reference));
            text = rest;
        } else {
            let end = text.find('&').unwrap_or(text.len());
            let literal = &text[..end];
            if literal.contains(['*', '@', '$', '#', '[', ']', '(', ')']) {
                return Err(format!(
                    "`{literal}`: `*`, `@`, `$`, `#`, brackets and parentheses are not supported in output keys"
                ));
            }
            pieces.push(Piece::Text(literal.to_owned()));
            text = &text[end..];
        }
    }
    Ok(pieces)
}

/// Splits on dots outside parentheses (`&(1,0).x` is two segments).
fn split_segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (at, char) in path.char_indices() {
        match char {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                segments.push(&path[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    segments
}

impl OutputPath {
    fn parse(path: &str) -> Result<Self, String> {
        if path.is_empty() {
            return Err("an empty output path".into());
        }
        let mut segments = Vec::new();
        for segment in split_segments(path) {
            let (key, index) = match segment.find('[') {
                Some(open) => {
                    let inner = segment[open + 1..]
                        .strip_suffix(']')
                        .ok_or_else(|| format!("`{segment}`: an index must close the segment with `]`"))?;
                    (&segment[..open], Some(parse_index(inner)?))
                }
                None => (segment, None),
            };
            if key.is_empty() && index.is_none() {
                return Err(format!("`{path}` has an empty segment"));
            }
            segments.push(OutputSegment { key: parse_pieces(key)?, index });
        }
        Ok(OutputPath(segments))
    }

    fn check_references(&self, depth: usize, stars: &[usize]) -> Result<(), String> {
        let check = |reference: &KeyReference| check_reference(reference, depth, stars);
        for segment in &self.0 {
            for piece in &segment.key {
                if let Piece::Key(reference) = piece {
                    check(reference)?;
                }
            }
            match &segment.index {
                Some(IndexSpec::Key(reference)) => check(reference)?,
                Some(IndexSpec::Ordinal(level)) if *level == 0 || *level > depth => {
                    return Err(format!("`[#{level}]` needs a level from 1 to {depth}"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn resolve(&self, levels: &[Level]) -> Option<Vec<ResolvedSegment>> {
        let mut resolved = Vec::with_capacity(self.0.len());
        for segment in &self.0 {
            let key = if segment.key.is_empty() {
                None
            } else {
                let mut key = String::new();
                for piece in &segment.key {
                    match piece {
                        Piece::Text(text) => key.push_str(text),
                        Piece::Key(reference) => key.push_str(lookup(levels, *reference)?),
                    }
                }
                Some(key)
            };
            let index = match &segment.index {
                None => None,
                Some(IndexSpec::Append) => Some(ResolvedIndex::Append),
                Some(IndexSpec::At(at)) => Some(ResolvedIndex::At(*at)),
                Some(IndexSpec::Key(reference)) => {
                    let at: usize = lookup(levels, *reference)?.parse().ok()?;
                    Some(ResolvedIndex::At(at))
                }
                // As JOLT counts it: how many keys level N has matched before this one,
                // which is the position of the level below it among its siblings.
                Some(IndexSpec::Ordinal(level)) => {
                    Some(ResolvedIndex::At(levels.get(levels.len().checked_sub(*level)?)?.ordinal))
                }
            };
            if matches!(index, Some(ResolvedIndex::At(at)) if at > MAX_INDEX) {
                return None;
            }
            resolved.push(ResolvedSegment { key, index });
        }
        Some(resolved)
    }
}

fn check_reference(reference: &KeyReference, depth: usize, stars: &[usize]) -> Result<(), String> {
    let KeyReference { level, capture } = *reference;
    if level > depth {
        return Err(format!("`&({level},{capture})` refers above the top of the spec ({depth} levels)"));
    }
    // `stars` holds the number of `*`s of each level, the innermost last.
    let available = stars.len().checked_sub(level + 1).and_then(|at| stars.get(at)).copied().unwrap_or(0);
    if capture > available {
        return Err(format!("`&({level},{capture})`: that key has {available} `*` to capture"));
    }
    Ok(())
}

fn lookup(levels: &[Level], reference: KeyReference) -> Option<&str> {
    let level = levels.get(levels.len().checked_sub(reference.level + 1)?)?;
    level.captures.get(reference.capture).map(String::as_str)
}

fn parse_index(inner: &str) -> Result<IndexSpec, String> {
    if inner.is_empty() {
        Ok(IndexSpec::Append)
    } else if inner.starts_with('&') {
        let (reference, rest) = parse_key_reference(inner)?;
        if !rest.is_empty() {
            return Err(format!("`[{inner}]`: only a key reference may stand in an index"));
        }
        Ok(IndexSpec::Key(reference))
    } else if let Some(level) = inner.strip_prefix('#') {
        level.parse().map(IndexSpec::Ordinal).map_err(|_| format!("`[#{level}]`: the level is not a number"))
    } else {
        match inner.parse::<usize>() {
            Ok(at) if at <= MAX_INDEX => Ok(IndexSpec::At(at)),
            _ => Err(format!("`[{inner}]`: an index is `[]`, a number up to {MAX_INDEX}, `[&N]` or `[#N]`")),
        }
    }
}

#[derive(Debug)]
enum ShiftTarget {
    Paths(Vec<OutputPath>),
    Node(ShiftNode),
}

#[derive(Debug)]
struct ShiftEntry {
    keys: KeySelector,
    target: ShiftTarget,
}

/// A level of a shift spec.
#[derive(Debug, Default)]
pub(crate) struct ShiftNode {
    literal: Vec<ShiftEntry>,
    /// Tried in order when no literal matched: the most literal text first.
    computed: Vec<ShiftEntry>,
    /// `@`: the value at this level.
    at: Option<Box<ShiftTarget>>,
    /// `$`, `$N`: the key matched N levels up, written as a value.
    dollar: Vec<(usize, Vec<OutputPath>)>,
    /// `#text`: the text written as a value.
    hash: Vec<(String, Vec<OutputPath>)>,
}

fn compile_paths(
    value: &Value,
    depth: usize,
    stars: &[usize],
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Vec<OutputPath> {
    let texts: Vec<(FieldPath, &str)> = match value {
        Value::String(text) => vec![(path.clone(), text.as_str())],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| match item.as_str() {
                Some(text) => Some((path.index(index), text)),
                None => {
                    errors.push(path.index(index), "an output path must be a string");
                    None
                }
            })
            .collect(),
        _ => {
            errors.push(path.clone(), "must be an output path, a list of them, or an object of more keys");
            return Vec::new();
        }
    };
    texts
        .into_iter()
        .filter_map(|(at, text)| {
            match OutputPath::parse(text).and_then(|output| {
                output.check_references(depth, stars)?;
                Ok(output)
            }) {
                Ok(output) => Some(output),
                Err(message) => {
                    errors.push(at, message);
                    None
                }
            }
        })
        .collect()
}

impl ShiftNode {
    fn compile_special(
        &mut self,
        key: &str,
        value: &Value,
        stars: &mut Vec<usize>,
        at: &FieldPath,
        errors: &mut ConfigErrors,
    ) {
        let depth = stars.len();
        if key == "@" {
            let target = if value.is_object() {
                ShiftTarget::Node(ShiftNode::compile(value, stars, at, errors))
            } else {
                ShiftTarget::Paths(compile_paths(value, depth, stars, at, errors))
            };
            self.at = Some(Box::new(target));
        } else if let Some(level) = key.strip_prefix('$') {
            let level = if level.is_empty() { Ok(0) } else { level.parse::<usize>() };
            match level {
                Ok(level) if level < depth => self.dollar.push((level, compile_paths(value, depth, stars, at, errors))),
                _ => errors.push(at.clone(), format!("`$N` needs a level from 0 to {}", depth - 1)),
            }
        } else if let Some(text) = key.strip_prefix('#') {
            self.hash.push((text.to_owned(), compile_paths(value, depth, stars, at, errors)));
        }
    }

    /// `stars` holds the `*` count of each enclosing level; its length is the depth.
    pub(crate) fn compile(spec: &Value, stars: &mut Vec<usize>, path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut node = ShiftNode::default();
        let Some(spec) = spec.as_object() else {
            errors.push(path.clone(), "a shift spec is an object");
            return node;
        };
        let depth = stars.len();
        for (key, value) in spec {
            let at = path.key(key);
            if key == "@" || key.starts_with('$') || key.starts_with('#') {
                // As in JOLT, these apply at this level under one more level whose key is
                // this level's key: `&1` in their output paths is this level's key.
                stars.push(stars.last().copied().unwrap_or(0));
                node.compile_special(key, value, stars, &at, errors);
                stars.pop();
            } else if key.starts_with('&') || key.starts_with('@') || key.is_empty() {
                errors.push(at, "keys made of `&` or `@(...)` references, and empty keys, are not supported");
            } else {
                let keys = KeySelector::parse(key);
                stars.push(keys.stars());
                let target = if value.is_object() {
                    ShiftTarget::Node(ShiftNode::compile(value, stars, &at, errors))
                } else {
                    ShiftTarget::Paths(compile_paths(value, depth + 1, stars, &at, errors))
                };
                stars.pop();
                let literal = keys.is_literal();
                let entry = ShiftEntry { keys, target };
                if literal {
                    node.literal.push(entry)
                } else {
                    node.computed.push(entry)
                }
            }
        }
        node.computed.sort_by_key(|entry| std::cmp::Reverse(entry.keys.0.iter().map(KeyMatcher::literal_len).max()));
        node
    }

    /// Applies this level to `value`, reached through `levels`.
    fn apply(&self, value: &Value, levels: &mut Vec<Level>, output: &mut Value) {
        if self.at.is_some() || !self.dollar.is_empty() || !self.hash.is_empty() {
            let (captures, ordinal) =
                levels.last().map(|level| (level.captures.clone(), level.ordinal)).unwrap_or_default();
            levels.push(Level { captures, ordinal });
            if let Some(target) = &self.at {
                match target.as_ref() {
                    ShiftTarget::Paths(paths) => write_all(paths, levels, value, output),
                    ShiftTarget::Node(node) => node.apply(value, levels, output),
                }
            }
            for (level, paths) in &self.dollar {
                // `$` is read below the level just added: `$0` is this level's key.
                let key = lookup(levels, KeyReference { level: level + 1, capture: 0 }).map(str::to_owned);
                if let Some(key) = key {
                    write_all(paths, levels, &Value::String(key), output);
                }
            }
            for (text, paths) in &self.hash {
                write_all(paths, levels, &Value::String(text.clone()), output);
            }
            levels.pop();
        }
        if self.literal.is_empty() && self.computed.is_empty() {
            return;
        }
        let children: Box<dyn Iterator<Item = (String, &Value)>> = match value {
            Value::Object(map) => Box::new(map.iter().map(|(key, child)| (key.clone(), child))),
            Value::Array(items) => Box::new(items.iter().enumerate().map(|(index, child)| (index.to_string(), child))),
            _ => return,
        };
        let mut ordinal = 0;
        for (key, child) in children {
            let matched = self
                .literal
                .iter()
                .chain(&self.computed)
                .find_map(|entry| entry.keys.captures(&key).map(|captures| (entry, captures)));
            let Some((entry, captures)) = matched else { continue };
            levels.push(Level { captures, ordinal });
            ordinal += 1;
            match &entry.target {
                ShiftTarget::Paths(paths) => write_all(paths, levels, child, output),
                ShiftTarget::Node(node) => node.apply(child, levels, output),
            }
            levels.pop();
        }
    }

    pub(crate) fn run(&self, input: &Value) -> Value {
        let mut output = Value::Null;
        // The root level: its key is empty, as in JOLT.
        let mut levels = vec![Level { captures: vec![String::new()], ordinal: 0 }];
        self.apply(input, &mut levels, &mut output);
        output
    }
}

fn write_all(paths: &[OutputPath], levels: &[Level], value: &Value, output: &mut Value) {
    for path in paths {
        // A reference that cannot be resolved here (a key that is not a number in `[&N]`)
        // writes nothing, as in JOLT.
        if let Some(segments) = path.resolve(levels) {
            write(output, &segments, value.clone());
        }
    }
}

/// Puts `value` at the resolved path, creating objects and arrays on the way; a value already
/// at the end becomes an array that collects both, as JOLT's shift does.
fn write(output: &mut Value, segments: &[ResolvedSegment], value: Value) {
    let mut slot = output;
    for segment in segments {
        if let Some(key) = &segment.key {
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            let Value::Object(map) = slot else { return };
            slot = map.entry(key.clone()).or_insert(Value::Null);
        }
        if let Some(index) = &segment.index {
            if slot.is_null() {
                *slot = Value::Array(Vec::new());
            }
            let Value::Array(items) = slot else { return };
            let at = match index {
                ResolvedIndex::Append => {
                    items.push(Value::Null);
                    items.len() - 1
                }
                ResolvedIndex::At(at) => {
                    if items.len() <= *at {
                        items.resize(at + 1, Value::Null);
                    }
                    *at
                }
            };
            slot = &mut items[at];
        }
    }
    match slot {
        Value::Null => *slot = value,
        Value::Array(items) => items.push(value),
        existing => {
            let first = std::mem::take(existing);
            *existing = Value::Array(vec![first, value]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// default

#[derive(Debug)]
enum DefaultValue {
    Leaf(Value),
    Node { array: bool, node: DefaultNode },
}

#[derive(Debug)]
struct DefaultEntry {
    keys: KeySelector,
    value: DefaultValue,
}

#[derive(Debug, Default)]
pub(crate) struct DefaultNode {
    literal: Vec<DefaultEntry>,
    /// `*` entries: they apply to children that are already there.
    wildcard: Vec<DefaultEntry>,
}

impl DefaultNode {
    pub(crate) fn compile(spec: &Value, path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut node = DefaultNode::default();
        let Some(spec) = spec.as_object() else {
            errors.push(path.clone(), "a default spec is an object");
            return node;
        };
        for (key, value) in spec {
            let at = path.key(key);
            let (name, array) = match key.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            if name.is_empty() || name.contains(['&', '@', '$', '#']) {
                errors.push(at, "a default key is a name, `a|b` or `*`, with `[]` when its value is an array");
                continue;
            }
            let keys = KeySelector::parse(name);
            let value = match value {
                Value::Object(_) => DefaultValue::Node { array, node: DefaultNode::compile(value, &at, errors) },
                _ if array => {
                    errors.push(at, "a key ending in `[]` needs an object of its items' defaults");
                    continue;
                }
                leaf => DefaultValue::Leaf(leaf.clone()),
            };
            let entry = DefaultEntry { keys, value };
            if entry.keys.is_literal() {
                node.literal.push(entry)
            } else {
                node.wildcard.push(entry)
            }
        }
        node
    }

    pub(crate) fn apply(&self, target: &mut Value) {
        for entry in &self.literal {
            for matcher in &entry.keys.0 {
                let KeyMatcher::Literal(key) = matcher else { continue };
                let Some(slot) = child_slot(target, key) else {
                    continue;
                };
                match &entry.value {
                    DefaultValue::Leaf(value) => {
                        if slot.is_null() {
                            *slot = value.clone();
                        }
                    }
                    DefaultValue::Node { array, node } => {
                        if slot.is_null() {
                            *slot = if *array { Value::Array(Vec::new()) } else { Value::Object(Map::new()) };
                        }
                        if slot.is_array() == *array {
                            node.apply(slot);
                        }
                    }
                }
            }
        }
        for entry in &self.wildcard {
            let children: Vec<(String, &mut Value)> = match &mut *target {
                Value::Object(map) => map.iter_mut().map(|(key, child)| (key.clone(), child)).collect(),
                Value::Array(items) => {
                    items.iter_mut().enumerate().map(|(index, child)| (index.to_string(), child)).collect()
                }
                _ => return,
            };
            for (key, child) in children {
                if entry.keys.captures(&key).is_none() {
                    continue;
                }
                match &entry.value {
                    DefaultValue::Leaf(value) if child.is_null() => *child = value.clone(),
                    DefaultValue::Leaf(_) => {}
                    DefaultValue::Node { array, node } if child.is_array() == *array && !child.is_null() => {
                        if child.is_object() || child.is_array() {
                            node.apply(child);
                        }
                    }
                    DefaultValue::Node { .. } => {}
                }
            }
        }
    }
}

/// The slot of `key` in an object (created as null when missing), or of an existing index in
/// an array; `None` when `target` holds neither.
fn child_slot<'a>(target: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match target {
        Value::Object(map) => Some(map.entry(key.to_owned()).or_insert(Value::Null)),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|index| items.get_mut(index)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// remove

#[derive(Debug)]
enum RemoveTarget {
    /// `""`: the matched key goes.
    Key,
    Node(RemoveNode),
}

#[derive(Debug, Default)]
pub(crate) struct RemoveNode {
    entries: Vec<(KeySelector, RemoveTarget)>,
}

impl RemoveNode {
    pub(crate) fn compile(spec: &Value, path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut node = RemoveNode::default();
        let Some(spec) = spec.as_object() else {
            errors.push(path.clone(), "a remove spec is an object");
            return node;
        };
        for (key, value) in spec {
            let at = path.key(key);
            if key.is_empty() || key.contains(['&', '@', '$', '#']) {
                errors.push(at, "a remove key is a name, `a|b` or a pattern with `*`");
                continue;
            }
            let target = match value {
                Value::String(text) if text.is_empty() => RemoveTarget::Key,
                Value::Object(_) => RemoveTarget::Node(RemoveNode::compile(value, &at, errors)),
                _ => {
                    errors.push(at, "must be `\"\"` (remove the key) or an object of keys inside it");
                    continue;
                }
            };
            node.entries.push((KeySelector::parse(key), target));
        }
        node
    }

    pub(crate) fn apply(&self, target: &mut Value) {
        for (keys, removal) in &self.entries {
            match (&mut *target, removal) {
                (Value::Object(map), RemoveTarget::Key) => map.retain(|key, _| keys.captures(key).is_none()),
                (Value::Array(items), RemoveTarget::Key) => {
                    let mut index = 0;
                    items.retain(|_| {
                        index += 1;
                        keys.captures(&(index - 1).to_string()).is_none()
                    });
                }
                (Value::Object(map), RemoveTarget::Node(node)) => {
                    for (key, child) in map.iter_mut() {
                        if keys.captures(key).is_some() {
                            node.apply(child);
                        }
                    }
                }
                (Value::Array(items), RemoveTarget::Node(node)) => {
                    for (index, child) in items.iter_mut().enumerate() {
                        if keys.captures(&index.to_string()).is_some() {
                            node.apply(child);
                        }
                    }
                }
                _ => return,
            }
        }
    }
}

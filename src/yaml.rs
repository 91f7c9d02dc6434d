//! YAML for the project's own files (configuration, policies, Kubernetes manifests): a tree of
//! located nodes built from `saphyr-parser`'s events, then read into typed values with serde.
//!
//! Why not a serde YAML crate end to end: these files come from operators, ConfigMaps and
//! templates, and a loader must refuse hostile or broken input quickly, with a position, and
//! without running out of memory. Building the tree here lets every limit be enforced while
//! reading ([`Limits`]: bytes, nesting, nodes, alias expansion), makes duplicate mapping keys and
//! unknown tags errors instead of silent choices, keeps a position on every node (so an error
//! found after parsing, by a cross-field rule, can still name its line), and lets one error
//! in a document not hide the others ([`from_node_all`]).
//!
//! Scalars follow the YAML 1.2 core schema (`yes` is a string, not a boolean). A plain scalar
//! read into a string field is taken as written (`namespace: 123` is the name "123").
//!
//! This module is a leaf: it knows nothing of Palisade's types.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

/// What a reader accepts. Every limit is checked as the input is read, so input over a limit
/// costs no more than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    /// Nesting of sequences and mappings.
    pub max_depth: usize,
    /// Nodes in all documents, aliases counted as the nodes they expand to. The bytes of every
    /// value, aliases counted as what they expand to, are held to `max_bytes` too: a file within
    /// its size limit could otherwise repeat one long anchored value thousands of times.
    pub max_nodes: usize,
}

impl Limits {
    /// A configuration or policy file. 1 MiB is also the most a Kubernetes ConfigMap holds, so
    /// no policy that could be deployed is refused; 64 levels is far beyond any real document.
    pub const FILE: Limits = Limits { max_bytes: 1 << 20, max_depth: 64, max_nodes: 200_000 };
    /// Manifests given to `palisade inject` (a `kubectl get -o yaml` of a whole namespace).
    pub const MANIFESTS: Limits = Limits { max_bytes: 64 << 20, max_depth: 128, max_nodes: 4_000_000 };
}

/// A position in the text: line and column, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

/// A node and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
    /// The characters (not bytes) of the text this node was read from, end exclusive; empty for
    /// nodes made in code. Editors that must keep comments splice the text at these places.
    pub span: (usize, usize),
    /// Where the value came from when not from the text: an environment variable's name.
    pub origin: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// The text as written, and whether it was quoted (a quoted `"8080"` is a string).
    Scalar(String, Quoted),
    Seq(Vec<Node>),
    /// Entries in document order; keys are unique.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoted {
    Plain,
    /// Quoted, a block scalar, or tagged `!!str`: a string whatever it looks like.
    Yes,
}

/// An error, with the position of the node it concerns when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub mark: Option<Mark>,
    /// The environment variable the node came from, when it did.
    pub origin: Option<Arc<str>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mark {
            Some(m) => write!(f, "line {} column {}: {}", m.line, m.column, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error { message: msg.to_string(), mark: None, origin: None }
    }
}

impl Error {
    fn at(message: impl Into<String>, mark: Mark) -> Self {
        Error { message: message.into(), mark: Some(mark), origin: None }
    }

    /// Gives the error the node's position unless a node inside it was more precise.
    fn within(mut self, node: &Node) -> Self {
        if self.mark.is_none() {
            self.mark = Some(node.mark);
            self.origin = node.origin.clone();
        }
        self
    }
}

// === impl Node ===

impl Node {
    /// A node made in code (no position), e.g. from an environment variable.
    pub fn new(value: Value) -> Node {
        Node { value, mark: Mark::default(), span: (0, 0), origin: None }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            Value::Map(entries) => entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at a path of mapping keys and sequence indexes, as serde_path_to_error spells
    /// it (`inbound.mtls`, `rules[2].name`).
    pub fn find(&self, path: &str) -> Option<&Node> {
        path_steps(path).try_fold(self, |node, step| match step {
            Step::Key(k) => node.get(k),
            Step::Index(i) => match &node.value {
                Value::Seq(items) => items.get(i),
                _ => None,
            },
        })
    }

    /// Removes the entry or item at `path` (a map entry, or a sequence item); false when there
    /// is none. Used to read past an error to the next one.
    fn remove(&mut self, path: &str) -> bool {
        let steps: Vec<Step<'_>> = path_steps(path).collect();
        let Some((last, parents)) = steps.split_last() else { return false };
        let mut node = self;
        for step in parents {
            let next = match (step, &mut node.value) {
                (Step::Key(k), Value::Map(entries)) => entries.iter_mut().find(|(key, _)| key.as_str() == Some(k)),
                (Step::Index(i), Value::Seq(items)) => {
                    node = match items.get_mut(*i) {
                        Some(item) => item,
                        None => return false,
                    };
                    continue;
                }
                _ => return false,
            };
            node = match next {
                Some((_, value)) => value,
                None => return false,
            };
        }
        match (last, &mut node.value) {
            (Step::Key(k), Value::Map(entries)) => {
                let before = entries.len();
                entries.retain(|(key, _)| key.as_str() != Some(k));
                entries.len() != before
            }
            (Step::Index(i), Value::Seq(items)) if *i < items.len() => {
                items.remove(*i);
                true
            }
            _ => false,
        }
    }

    /// Reads a JSON value as a tree (for values made in code, and AdmissionReview objects).
    pub fn from_json(value: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        Node::new(match value {
            J::Null => Value::Null,
            J::Bool(b) => Value::Scalar(b.to_string(), Quoted::Plain),
            J::Number(n) => Value::Scalar(n.to_string(), Quoted::Plain),
            J::String(s) => Value::Scalar(s.clone(), Quoted::Yes),
            J::Array(items) => Value::Seq(items.iter().map(Node::from_json).collect()),
            J::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| (Node::new(Value::Scalar(k.clone(), Quoted::Yes)), Node::from_json(v)))
                    .collect(),
            ),
        })
    }

    /// The tree as JSON, scalars resolved by the core schema.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Scalar(s, Quoted::Yes) => J::String(s.clone()),
            Value::Scalar(s, Quoted::Plain) => match resolve(s) {
                Resolved::Null => J::Null,
                Resolved::Bool(b) => J::Bool(b),
                Resolved::Int(i) => J::from(i),
                Resolved::UInt(u) => J::from(u),
                Resolved::Float(f) => serde_json::Number::from_f64(f).map_or_else(|| J::String(s.clone()), J::Number),
                Resolved::Str => J::String(s.clone()),
            },
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json())).collect(),
            ),
        }
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` as steps; a key with dots in it cannot be addressed, which no schema here needs.
fn path_steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    let path = if path == "." { "" } else { path };
    path.split('.').filter(|p| !p.is_empty()).flat_map(|part| {
        let (key, indexes) = part.split_once('[').map_or((part, ""), |(k, rest)| (k, rest));
        let key = (!key.is_empty()).then_some(Step::Key(key));
        let indexes = indexes.split('[').filter_map(|i| i.trim_end_matches(']').parse().ok()).map(Step::Index);
        key.into_iter().chain(indexes.collect::<Vec<_>>())
    })
}

// === reading ===

/// Reads a file of at most `max_bytes` as UTF-8 text ([`crate::files::read_regular`]).
pub fn read_file(path: &Path, max_bytes: usize) -> std::io::Result<String> {
    use std::io::{Error as IoError, ErrorKind};
    let bytes = crate::files::read_regular(path, max_bytes)?;
    String::from_utf8(bytes).map_err(|e| {
        IoError::new(
            ErrorKind::InvalidData,
            format!("the file is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// A document of a YAML stream and where it starts.
#[derive(Debug, Clone)]
pub struct Document {
    pub root: Node,
    /// `Null` roots are documents with no content (a trailing `---`, a file of comments).
    pub start: Mark,
    /// Where the document first names an anchor (`&x`) or an alias (`*x`): its nodes are copies,
    /// so editing its text in place would edit one copy only.
    pub first_anchor: Option<Mark>,
}

/// Parses every document of `text`. A syntax error, a duplicate key, a tag, or input over a
/// limit fails the whole stream: what follows a syntax error cannot be read reliably.
pub fn parse(text: &str, limits: &Limits) -> Result<Vec<Document>, Error> {
    if text.len() > limits.max_bytes {
        return Err(Error {
            message: format!("the text has {} bytes, more than the limit of {}", text.len(), limits.max_bytes),
            mark: None,
            origin: None,
        });
    }
    Builder::new(limits).run(text)
}

/// An open collection while its events arrive.
enum Open {
    Seq { node: Node, items: Vec<Node>, anchor: usize },
    Map { node: Node, entries: Vec<(Node, Node)>, key: Option<Node>, seen: HashSet<String>, anchor: usize },
}

struct Builder<'l> {
    limits: &'l Limits,
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    /// The bytes of every scalar read, an alias's expansion included.
    value_bytes: usize,
    /// The current document's first anchor or alias.
    first_anchor: Option<Mark>,
    documents: Vec<Document>,
}

fn mark_of(m: &saphyr_parser::Marker) -> Mark {
    Mark { line: m.line(), column: m.col() + 1 }
}

fn tag_refused(tag: &saphyr_parser::Tag, mark: Mark) -> Error {
    // As it was written: the parser's own spelling puts a `!` between a resolved prefix and
    // the name (`tag:yaml.org,2002:!map` for `!!map`).
    let written = match tag.handle.as_str() {
        _ if tag.is_yaml_core_schema() => format!("!!{}", tag.suffix),
        "!" => format!("!{}", tag.suffix),
        handle => format!("{handle}{}", tag.suffix),
    };
    Error::at(format!("tags such as {written} are not supported here; write the value without it"), mark)
}

impl<'l> Builder<'l> {
    fn new(limits: &'l Limits) -> Self {
        Builder {
            limits,
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            value_bytes: 0,
            first_anchor: None,
            documents: Vec::new(),
        }
    }

    fn run(mut self, text: &str) -> Result<Vec<Document>, Error> {
        let mut start = Mark::default();
        let mut root: Option<Node> = None;
        for event in Parser::new_from_str(text) {
            let (event, span) = event.map_err(|e| Error::at(e.info().to_string(), mark_of(e.marker())))?;
            let mark = mark_of(&span.start);
            let range = (span.start.index(), span.end.index());
            let node = match event {
                Event::StreamStart | Event::StreamEnd | Event::Nothing => continue,
                Event::DocumentStart(_) => {
                    start = mark;
                    self.anchors.clear();
                    continue;
                }
                Event::DocumentEnd => {
                    let root = root.take().unwrap_or(Node { mark: start, ..Node::new(Value::Null) });
                    let first_anchor = self.first_anchor.take();
                    self.documents.push(Document { root, start, first_anchor });
                    continue;
                }
                Event::Alias(id) => {
                    self.first_anchor.get_or_insert(mark);
                    let target = self.anchors.get(&id).ok_or_else(|| Error::at("alias to an unknown anchor", mark))?;
                    // An alias costs the nodes it expands to, so a "billion laughs" stays small.
                    let (cost, bytes) = (count_nodes(target), value_bytes(target));
                    let node = Node { mark, span: range, ..target.clone() };
                    self.count(cost, mark)?;
                    self.count_bytes(bytes, mark)?;
                    node
                }
                Event::Scalar(value, style, anchor, tag) => {
                    let quoted = match (&tag, style) {
                        (Some(tag), _) if tag.is_yaml_core_schema() && tag.suffix == "str" => Quoted::Yes,
                        (Some(tag), _) => return Err(tag_refused(tag, mark)),
                        (None, ScalarStyle::Plain) => Quoted::Plain,
                        (None, _) => Quoted::Yes,
                    };
                    self.count(1, mark)?;
                    self.count_bytes(value.len(), mark)?;
                    let value = if quoted == Quoted::Plain && resolve(&value) == Resolved::Null {
                        Value::Null
                    } else {
                        Value::Scalar(value.into_owned(), quoted)
                    };
                    self.anchored(Node { value, mark, span: range, origin: None }, anchor, mark)?
                }
                Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) if tag.is_some() => {
                    let _ = anchor;
                    return Err(tag_refused(tag.as_deref().expect("checked"), mark));
                }
                Event::SequenceStart(anchor, _) => {
                    self.open(mark)?;
                    let node = Node { value: Value::Null, mark, span: range, origin: None };
                    self.stack.push(Open::Seq { node, items: Vec::new(), anchor });
                    continue;
                }
                Event::MappingStart(anchor, _) => {
                    self.open(mark)?;
                    let node = Node { value: Value::Null, mark, span: range, origin: None };
                    self.stack.push(Open::Map { node, entries: Vec::new(), key: None, seen: HashSet::new(), anchor });
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (mut node, value, anchor) = match self.stack.pop() {
                        Some(Open::Seq { node, items, anchor }) => (node, Value::Seq(items), anchor),
                        Some(Open::Map { node, entries, anchor, .. }) => (node, Value::Map(entries), anchor),
                        None => return Err(Error::at("a collection ends that never started", mark)),
                    };
                    node.value = value;
                    node.span.1 = range.1.max(node.span.1);
                    self.anchored(node, anchor, mark)?
                }
            };
            match self.stack.last_mut() {
                None => root = Some(node),
                Some(Open::Seq { items, .. }) => items.push(node),
                Some(Open::Map { entries, key, seen, .. }) => match key.take() {
                    None => {
                        let name = match &node.value {
                            Value::Scalar(s, _) => s.clone(),
                            Value::Null => String::new(),
                            _ => return Err(Error::at("a mapping key must be a plain value, not a collection", mark)),
                        };
                        if !seen.insert(name.clone()) {
                            return Err(Error::at(format!("duplicate key {name:?} in this mapping"), mark));
                        }
                        *key = Some(node);
                    }
                    Some(k) => entries.push((k, node)),
                },
            }
        }
        Ok(self.documents)
    }

    fn open(&mut self, mark: Mark) -> Result<(), Error> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(Error::at(format!("nested more than {} levels deep", self.limits.max_depth), mark));
        }
        self.count(1, mark)
    }

    fn count(&mut self, nodes: usize, mark: Mark) -> Result<(), Error> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > self.limits.max_nodes {
            return Err(Error::at(format!("more than {} values in the text", self.limits.max_nodes), mark));
        }
        Ok(())
    }

    fn count_bytes(&mut self, bytes: usize, mark: Mark) -> Result<(), Error> {
        self.value_bytes = self.value_bytes.saturating_add(bytes);
        if self.value_bytes > self.limits.max_bytes {
            return Err(Error::at(
                format!(
                    "the values, with what aliases repeat, come to more than {} bytes; write the repeated value out, or fewer times",
                    self.limits.max_bytes
                ),
                mark,
            ));
        }
        Ok(())
    }

    /// Keeps a copy of an anchored node for its aliases. The copy costs what the node does, and
    /// is counted so: anchors nested in anchors copy the same subtree once per level, and a file of
    /// a few hundred KB nested sixty deep took 1.4 GB before these copies counted.
    fn anchored(&mut self, node: Node, anchor: usize, mark: Mark) -> Result<Node, Error> {
        if anchor != 0 {
            self.first_anchor.get_or_insert(node.mark);
            self.count(count_nodes(&node), mark)?;
            self.count_bytes(value_bytes(&node), mark)?;
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn value_bytes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(text, _) => text.len(),
        Value::Seq(items) => items.iter().map(value_bytes).fold(0, usize::saturating_add),
        Value::Map(entries) => {
            entries.iter().map(|(k, v)| value_bytes(k).saturating_add(value_bytes(v))).fold(0, usize::saturating_add)
        }
        _ => 0,
    }
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Map(entries) => entries.iter().map(|(k, v)| count_nodes(k) + count_nodes(v)).sum(),
        _ => 0,
    }
}

// === the core schema ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resolved {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str,
}

/// What a plain scalar means in the YAML 1.2 core schema.
fn resolve(s: &str) -> Resolved {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Resolved::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let int = |digits: &str, radix: u32| u64::from_str_radix(digits, radix).ok().map(Resolved::UInt);
    if let Some(hex) = s.strip_prefix("0x") {
        return int(hex, 16).unwrap_or(Resolved::Str);
    }
    if let Some(oct) = s.strip_prefix("0o") {
        return int(oct, 8).unwrap_or(Resolved::Str);
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        return match (s.starts_with('-'), s.parse::<i64>(), body.parse::<u64>()) {
            (true, Ok(i), _) => Resolved::Int(i),
            (false, _, Ok(u)) => Resolved::UInt(u),
            _ => Resolved::Float(s.parse().unwrap_or(f64::NAN)),
        };
    }
    let float_like = body.bytes().any(|b| b.is_ascii_digit())
        && body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && body.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    match (float_like, s.parse::<f64>()) {
        (true, Ok(f)) => Resolved::Float(f),
        _ => Resolved::Str,
    }
}

// === reading typed values ===

/// Reads a node into `T`; the error names the field's path (`spec.rules[0].name`) and position.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, (String, Error)> {
    serde_path_to_error::deserialize(node).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut inner = e.into_inner();
        if inner.mark.is_none() {
            // Errors raised after a node was read (a missing field) belong to the node at the path.
            if let Some(at) = node.find(&path) {
                inner = inner.within(at);
            }
        }
        (path, inner)
    })
}

/// Reads a node into `T`, reporting every independent error: after each one the offending
/// entry is removed and the node read again, until it reads (up to `max_errors`). The value
/// is the one read without the bad entries, so later checks can still run on it.
pub fn from_node_all<T: DeserializeOwned>(node: &Node, max_errors: usize) -> (Option<T>, Vec<(String, Error)>) {
    let mut errors: Vec<(String, Error)> = Vec::new();
    let mut pruned = node.clone();
    // What was removed, as paths in the document as written.
    let mut removed: Vec<String> = Vec::new();
    loop {
        match from_node::<T>(&pruned) {
            Ok(value) => return (Some(value), errors),
            Err((pruned_path, error)) => {
                let path = original_path(&pruned_path, &removed);
                let again = errors.iter().any(|(p, e)| *p == path && *e == error);
                // Removing a bad entry can make its parent wrong (a required field missing, a
                // list left empty): that is the same mistake, said once.
                let echo = errors.iter().any(|(p, _)| {
                    p.len() > path.len()
                        && p.starts_with(path.as_str())
                        && (path.is_empty() || matches!(p.as_bytes()[path.len()], b'.' | b'['))
                });
                if !again && !echo {
                    errors.push((path.clone(), error));
                }
                if again || errors.len() >= max_errors || path.is_empty() || !pruned.remove(&pruned_path) {
                    return (None, errors);
                }
                removed.push(path);
            }
        }
    }
}

/// `path` in a copy with the `removed` entries taken out, as a path in the document as written:
/// each index moved past the elements removed before it from the same list (`ports[1]` after
/// `ports[1]` was removed is `ports[2]`).
fn original_path(path: &str, removed: &[String]) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for step in path_steps(path) {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => {
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter_map(|r| r.strip_prefix(out.as_str())?.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
                    .collect();
                gone.sort_unstable();
                let index = gone.into_iter().fold(i, |index, g| if g <= index { index + 1 } else { index });
                out.push_str(&format!("[{index}]"));
            }
        }
    }
    out
}

/// The deserializer for one node.
impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar(s, Quoted::Yes) => visitor.visit_borrowed_str(s),
            Value::Scalar(s, Quoted::Plain) => match resolve(s) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::UInt(u) => visitor.visit_u64(u),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str => visitor.visit_borrowed_str(s),
            },
            Value::Seq(items) => visitor.visit_seq(SeqAccess { items: items.iter() }),
            Value::Map(entries) => visitor.visit_map(MapAccess { entries: entries.iter(), value: None }),
        };
        result.map_err(|e: Error| e.within(self))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            Value::Scalar(s, Quoted::Plain) => match resolve(s) {
                Resolved::Bool(b) => visitor.visit_bool(b).map_err(|e: Error| e.within(self)),
                _ => Err(self.invalid("true or false")),
            },
            _ => Err(self.invalid("true or false")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            // A plain scalar is the string it spells: `serviceAccount: 123` names "123".
            Value::Scalar(s, _) => visitor.visit_borrowed_str(s).map_err(|e: Error| e.within(self)),
            _ => Err(self.invalid("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e: Error| e.within(self))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            Value::Null => visitor.visit_unit().map_err(|e: Error| e.within(self)),
            _ => Err(self.invalid("nothing (null)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self).map_err(|e: Error| e.within(self))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            Value::Seq(items) => visitor.visit_seq(SeqAccess { items: items.iter() }),
            // `rules:` with nothing after it: an empty list, as the key was written to say.
            Value::Null => visitor.visit_seq(SeqAccess { items: [].iter() }),
            _ => return Err(self.invalid("a list")),
        }
        .map_err(|e: Error| e.within(self))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            Value::Map(entries) => visitor.visit_map(MapAccess { entries: entries.iter(), value: None }),
            // `identity:` with nothing after it: every setting takes its default.
            Value::Null => visitor.visit_map(MapAccess { entries: [].iter(), value: None }),
            _ => return Err(self.invalid("a mapping of keys to values")),
        }
        .map_err(|e: Error| e.within(self))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.value {
            Value::Scalar(s, _) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Map(entries) if entries.len() == 1 => {
                visitor.visit_enum(EnumAccess { key: &entries[0].0, value: &entries[0].1 })
            }
            _ => {
                let listed: Vec<String> = variants.iter().map(|v| format!("`{v}`")).collect();
                let expected = match listed.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => "one of the listed values".to_string(),
                };
                return Err(self.invalid(&expected));
            }
        }
        .map_err(|e: Error| e.within(self))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 bytes byte_buf
    }
}

impl Node {
    fn invalid(&self, expected: &str) -> Error {
        let found = match &self.value {
            Value::Null => "nothing".to_string(),
            Value::Scalar(s, _) if s.chars().count() > 40 => format!("{:?}...", s.chars().take(40).collect::<String>()),
            Value::Scalar(s, _) => format!("{s:?}"),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        };
        Error {
            message: format!("expected {expected}, got {found}"),
            mark: Some(self.mark),
            origin: self.origin.clone(),
        }
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(node) => seed.deserialize(node).map(Some).map_err(|e: Error| e.within(node)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (Node, Node)>,
    value: Option<&'de Node>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key).map(Some).map_err(|e: Error| e.within(key))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self.value.take().ok_or_else(|| <Error as de::Error>::custom("a value without its key"))?;
        seed.deserialize(value).map_err(|e: Error| e.within(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'de> {
    key: &'de Node,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = Error;
    type Variant = &'de Node;

    fn variant_seed<V: de::DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, &'de Node), Error> {
        let variant = seed.deserialize(self.key).map_err(|e: Error| e.within(self.key))?;
        Ok((variant, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for &'de Node {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

// === writing ===

/// Writes a value as block-style YAML, keys in the value's order, strings quoted wherever a
/// reader could take them for something else.
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = String::new();
    emit(&value, 0, &mut out);
    Ok(out)
}

fn emit(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value as J;
    match value {
        J::Object(map) if !map.is_empty() => {
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(&" ".repeat(indent));
                }
                scalar_text(k, out);
                out.push(':');
                emit_child(v, indent, out);
            }
        }
        J::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&" ".repeat(indent));
                }
                out.push_str("- ");
                match item {
                    J::Object(m) if !m.is_empty() => emit(item, indent + 2, out),
                    J::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        out.push_str(&" ".repeat(indent + 2));
                        emit(item, indent + 2, out);
                    }
                    _ => {
                        inline(item, out);
                        out.push('\n');
                    }
                }
            }
        }
        _ => {
            inline(value, out);
            out.push('\n');
        }
    }
}

/// A mapping's value: on the key's line when it is a scalar, indented below it otherwise.
fn emit_child(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value as J;
    match value {
        J::Object(m) if !m.is_empty() => {
            out.push('\n');
            out.push_str(&" ".repeat(indent + 2));
            emit(value, indent + 2, out);
        }
        J::Array(a) if !a.is_empty() => {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            emit(value, indent, out);
        }
        _ => {
            out.push(' ');
            inline(value, out);
            out.push('\n');
        }
    }
}

fn inline(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match value {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => out.push_str(&n.to_string()),
        J::String(s) => scalar_text(s, out),
        J::Array(_) => out.push_str("[]"),
        J::Object(_) => out.push_str("{}"),
    }
}

/// A string plain when it reads back as the same string, else double-quoted (JSON escapes are
/// YAML's too).
fn scalar_text(s: &str, out: &mut String) {
    let plain = !s.is_empty()
        && resolve(s) == Resolved::Str
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./@ ".contains(&b))
        && !s.starts_with([' ', '-', '.', '@'])
        && !s.ends_with(' ');
    if plain {
        out.push_str(s);
    } else {
        out.push_str(&serde_json::Value::String(s.to_string()).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    fn one(text: &str) -> Node {
        let mut docs = parse(text, &Limits::FILE).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(docs.len(), 1, "{text:?}");
        docs.remove(0).root
    }

    fn refused(text: &str) -> Error {
        parse(text, &Limits::FILE).expect_err(text)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Settings {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        enabled: bool,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[allow(clippy::upper_case_acronyms)]
    enum Mode {
        STRICT,
        PERMISSIVE,
    }

    #[test]
    fn syntax_errors_are_one_located_error_and_end_the_stream() {
        for (text, line) in [
            ("a: [}\n", 1),
            ("a:\n\tb: 1\n", 2),
            ("spec: a: b\n", 1),
            ("x: 1\nname: \"p\n", 2),
            ("a: 1\n---\nb: [\n", 4),
        ] {
            let e = refused(text);
            assert!(e.mark.is_some_and(|m| m.line >= line.min(2) && m.line <= line + 1), "{text:?}: {e}");
        }
    }

    #[test]
    fn duplicate_keys_tags_and_complex_keys_are_refused_where_they_are() {
        let e = refused("matchLabels: {app: a, app: b}\n");
        assert!(e.message.contains("duplicate key \"app\""), "{e}");
        assert_eq!(e.mark.map(|m| m.line), Some(1));
        let e = refused("a: 1\nb:\n  c: 1\n  c: 2\n");
        assert_eq!(e.mark.map(|m| m.line), Some(4), "{e}");
        let e = refused("a: !Evil x\n");
        assert!(e.message.contains("!Evil"), "{e}");
        let e = refused("a: !!python/object:os.system {}\n");
        assert!(e.message.contains("not supported"), "{e}");
        // Named as written (it read `tag:yaml.org,2002:!map`).
        let e = refused("a: !!map {b: c}\n");
        assert!(e.message.contains("tags such as !!map are"), "{e}");
        let e = refused("? [a, b]\n: c\n");
        assert!(e.message.contains("plain value"), "{e}");
        // The core schema's !!str is a way of quoting, so it stays.
        assert_eq!(one("a: !!str 123\n").get("a").unwrap().value, Value::Scalar("123".into(), Quoted::Yes));
    }

    #[test]
    fn deep_nesting_is_refused_quickly_at_the_limit() {
        let text = "[".repeat(100_000);
        let started = std::time::Instant::now();
        let e = refused(&text);
        // The parser's own flow-nesting limit may come first; either way it stops early.
        assert!(e.message.contains("64 levels") || e.message.contains("recursion limit"), "{e}");
        // Not a timing assertion on the machine's speed: 100k levels took 37 s before; the
        // limit stops reading at level 65.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let block: String = (0..100).map(|i| format!("{}a{i}:\n", " ".repeat(i))).collect();
        assert!(refused(&block).message.contains("levels"));
    }

    #[test]
    fn alias_expansion_counts_against_the_node_limit() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs: Vec<String> = (0..10).map(|_| format!("*a{}", i - 1)).collect();
            text.push_str(&format!("a{i}: &a{i} [{}]\n", refs.join(", ")));
        }
        let e = refused(&text);
        assert!(e.message.contains("more than 200000 values"), "{e}");
        // A modest alias is fine.
        let node = one("base: &b {x: 1}\nother: *b\n");
        assert_eq!(node.get("other").and_then(|o| o.get("x")).and_then(Node::as_str), Some("1"));
    }

    #[test]
    fn anchors_nested_in_anchors_count_each_copy() {
        // 60 anchored sequences, each inside the last, around 4,000 values: each level keeps a
        // copy of all that is inside it for its aliases.
        let inner = vec!["a"; 4_000].join(", ");
        let mut text = String::from("x: ");
        for level in 0..60 {
            text.push_str(&format!("&a{level} ["));
        }
        text.push_str(&inner);
        text.push_str(&"]".repeat(60));
        text.push('\n');
        let e = refused(&text);
        assert!(e.message.contains("more than 200000 values"), "{e}");
        // A few anchors of modest size read as before.
        let node = one("a: &x [1, 2, 3]\nb: &y {k: *x}\nc: *y\n");
        assert!(node.get("c").and_then(|c| c.get("k")).is_some());
    }

    #[test]
    fn alias_expansion_counts_against_the_byte_limit() {
        // 100 KB of text: one 10 KB value, then 200 aliases of it (2 MB of values, in few nodes).
        let long = "p".repeat(10_000);
        let mut text = format!("a: &long /{long}\nrefs:\n");
        text.push_str(&"  - *long\n".repeat(200));
        let e = refused(&text);
        assert!(e.message.contains("come to more than 1048576 bytes"), "{e}");
        // The anchor's own copy counts once, then each alias.
        assert_eq!(e.mark.map(|m| m.line), Some(2 + 103), "stops at the alias that crosses the limit, not at the end");
        // What aliases repeat within the limit is read.
        let fine = format!("a: &long /{long}\nrefs:\n{}", "  - *long\n".repeat(50));
        let refs = one(&fine).get("refs").map(|r| r.value.clone());
        assert!(matches!(refs, Some(Value::Seq(items)) if items.len() == 50));
    }

    #[test]
    fn over_the_byte_limit_is_refused_before_parsing() {
        let small = Limits { max_bytes: 10, ..Limits::FILE };
        let e = parse("name: a-long-name\n", &small).unwrap_err();
        assert!(e.message.contains("more than the limit of 10"), "{e}");
    }

    #[test]
    fn empty_documents_and_comment_only_files_are_null_documents() {
        for text in ["", "# only a comment\n", "---\n"] {
            let docs = parse(text, &Limits::FILE).unwrap();
            assert!(docs.iter().all(|d| d.root.is_null()), "{text:?}: {docs:?}");
        }
        let docs = parse("a: 1\n---\n---\nb: 2\n", &Limits::FILE).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].start.line, 3);
    }

    #[test]
    fn typed_reading_follows_the_core_schema_and_locates_errors() {
        let node = one("name: 123\nport: 8080\nenabled: true\nlabels: {app: orders, version: 2}\nmode: STRICT\n");
        let s: Settings = from_node(&node).unwrap();
        assert_eq!((s.name.as_str(), s.port, s.enabled, s.mode), ("123", 8080, true, Some(Mode::STRICT)));
        assert_eq!(s.labels["version"], "2");

        let cases = [
            ("name: a\nport: lots\n", "port", 2, "lots"),
            ("name: a\nport: 70000\n", "port", 2, "70000"),
            ("name: a\nenabled: yes\n", "enabled", 2, "true or false"),
            ("name: a\nmode: STRIKT\n", "mode", 2, "STRICT"),
            ("name: a\nmode: [1, 2]\n", "mode", 2, "expected `STRICT` or `PERMISSIVE`, got a list"),
            ("name: a\nitems:\n  - id: 1\n  - id: x\n", "items[1].id", 4, "x"),
            ("name: a\nitems:\n  - {id: 1, extra: 2}\n", "items[0].extra", 3, "unknown field `extra`"),
            ("port: 1\n", "", 1, "missing field `name`"),
            ("name: [a]\n", "name", 1, "a string"),
            ("name: a\nport: \"8080\"\n", "port", 2, "8080"),
        ];
        for (text, field, line, words) in cases {
            let (path, e) = from_node::<Settings>(&one(text)).expect_err(text);
            assert_eq!(path, field, "{text:?}: {e}");
            assert_eq!(e.mark.map(|m| m.line), Some(line), "{text:?}: {e}");
            assert!(e.message.contains(words), "{text:?}: {e}");
        }
    }

    #[test]
    fn every_independent_error_is_reported() {
        let text = "name: a\nport: lots\nenabled: maybe\nitems:\n  - id: x\nmode: SOMETIMES\n";
        let (value, errors) = from_node_all::<Settings>(&one(text), 10);
        let found: Vec<(&str, usize)> =
            errors.iter().map(|(p, e)| (p.as_str(), e.mark.map_or(0, |m| m.line))).collect();
        assert_eq!(found, [("port", 2), ("enabled", 3), ("items[0].id", 5), ("mode", 6)]);
        assert_eq!(value.map(|v| v.name), Some("a".to_string()));
    }

    #[test]
    fn paths_find_nodes() {
        let node = one("a:\n  b:\n    - {c: 1}\n    - {c: 2}\n");
        assert_eq!(node.find("a.b[1].c").and_then(Node::as_str), Some("2"));
        assert_eq!(node.find("a.b[1].c").map(|n| n.mark.line), Some(4));
        assert!(node.find("a.x").is_none());
    }

    #[test]
    fn written_yaml_reads_back_as_the_same_value() {
        let value = serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "metadata": {"name": "p", "labels": {"app": "a b", "n": "123", "t": "true", "e": ""}},
            "spec": {"rules": [{"name": "r", "paths": ["/a*", "-x"]}, {"name": "s"}], "empty": [], "none": {},
                     "nested": [[1, 2], []], "quote": "say \"hi\": now", "multi": "a\nb", "n": 1.5, "z": null}
        });
        let text = to_string(&value).unwrap();
        let back = one(&text).to_json();
        assert_eq!(back, value, "{text}");
    }

    #[test]
    fn files_are_read_only_when_regular_and_small() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        assert_eq!(read_file(&file, 100).unwrap(), "a: 1\n");
        std::fs::write(&file, "a".repeat(101)).unwrap();
        assert!(read_file(&file, 100).unwrap_err().to_string().contains("limit of 100"));
        std::fs::write(&file, b"a: \xff\n").unwrap();
        assert!(read_file(&file, 100).unwrap_err().to_string().contains("UTF-8"));
        assert!(read_file(Path::new("/dev/zero"), 100).unwrap_err().to_string().contains("regular"));
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        assert!(read_file(&fifo, 100).unwrap_err().to_string().contains("regular"));
    }
}

//! A JSON Patch applied to YAML text: every add or replace becomes an insertion (or a scalar's
//! replacement) at the place the parser located, written as YAML indented for that place, so
//! everything the patch does not touch (comments, key order, quoting, unknown fields) stays
//! byte for byte as it was.
//!
//! New mapping entries go before the mapping's first key and new sequence items before the
//! item they precede, because the start of a node is exact in the parser's spans while the end
//! of a block collection is not (it is where the next token begins, after any comments).

use std::collections::HashMap;

use serde_json::Value;

use super::patch::{tokens, Op};
use crate::yaml::{Node, Value as Y};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path.is_empty() {
            true => f.write_str(&self.message),
            false => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for TextError {}

/// An insertion (or, with `end`, a replacement) at a character position of the text.
#[derive(Debug, Clone)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// The edits that apply `ops` (paths from the document's root `root`) to `text`.
pub fn edits(text: &Chars<'_>, root: &Node, ops: &[Op]) -> Result<Vec<Edit>, TextError> {
    let mut out = Vec::new();
    // Items already inserted into each sequence: an op's index counts them, the text does not.
    let mut inserted: HashMap<String, usize> = HashMap::new();
    for op in ops {
        let path = op.path();
        let fail = |message: &str| TextError { path: path.to_string(), message: message.to_string() };
        let tokens = tokens(path);
        let Some((last, parents)) = tokens.split_last() else {
            return Err(fail("the whole document cannot be replaced"));
        };
        let mut parent = root;
        // The path of the node being walked, as the ops write it (the key of `inserted`).
        let mut walked = String::new();
        for (t, raw) in parents.iter().zip(path.split('/').skip(1)) {
            parent = match &parent.value {
                Y::Map(_) => parent.get(t),
                // An index past items an earlier op inserted here is that many fewer in the text.
                Y::Seq(items) => t
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(inserted.get(&walked).copied().unwrap_or(0)))
                    .and_then(|i| items.get(i)),
                _ => None,
            }
            .ok_or_else(|| fail("its parent is not in the text"))?;
            walked.push('/');
            walked.push_str(raw);
        }
        let entry = |name: &str| match &parent.value {
            Y::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(name)),
            _ => None,
        };
        match (&parent.value, op) {
            (Y::Map(_), Op::Remove { .. }) => {
                let (key, value) = entry(last).ok_or_else(|| fail("nothing to remove"))?;
                out.push(remove_entry(text, parent, key, value).map_err(|m| fail(&m))?);
            }
            (Y::Map(_), Op::Move { from, .. }) => {
                // A rename within one mapping: the key's text is rewritten, its value stays.
                let from = super::patch::tokens(from);
                let (Some(name), true) = (from.last(), from[..from.len().saturating_sub(1)] == *parents) else {
                    return Err(fail("only a rename within one mapping is written as text"));
                };
                let (key, _) = entry(name).ok_or_else(|| fail("nothing to move"))?;
                // In a flow mapping the key is written as JSON, so a JSON manifest stays JSON.
                let renamed = match is_flow(text, parent, '{') {
                    true => json(&Value::String(last.clone())),
                    false => scalar_key(last),
                };
                out.push(Edit { start: key.span.0, end: key.span.1, text: renamed });
            }
            (Y::Map(entries), Op::Add { value, .. } | Op::Replace { value, .. }) => match entry(last) {
                Some((key, old)) => out.push(replace_value(text, key, old, value).map_err(|m| fail(&m))?),
                None if matches!(op, Op::Replace { .. }) => return Err(fail("nothing to replace")),
                None => out.push(add_entry(text, parent, entries, last, value).map_err(|m| fail(&m))?),
            },
            (Y::Seq(items), Op::Add { value, .. }) => {
                let parent_path = path[..path.len() - last.len() - 1].to_string();
                let before = inserted.entry(parent_path).or_default();
                let index: usize = last.parse().map_err(|_| fail("expected an index"))?;
                let original = index.checked_sub(*before).ok_or_else(|| fail("index before an earlier insertion"))?;
                out.push(add_item(text, parent, items, original, *before, value).map_err(|m| fail(&m))?);
                *before += 1;
            }
            _ => return Err(fail("only mappings and sequences are edited")),
        }
    }
    Ok(out)
}

/// Applies edits (positions in characters) to the text.
pub fn apply(text: &Chars<'_>, mut edits: Vec<Edit>) -> Result<String, TextError> {
    // Stable: edits at one place keep the order of their operations.
    edits.sort_by_key(|e| e.start);
    let mut out = String::with_capacity(text.text.len() + edits.iter().map(|e| e.text.len()).sum::<usize>());
    let mut at = 0;
    for e in edits {
        let (start, end) = (text.byte(e.start), text.byte(e.end));
        if start < at {
            return Err(TextError { path: String::new(), message: "two edits overlap".into() });
        }
        out.push_str(&text.text[at..start]);
        out.push_str(&e.text);
        at = end;
    }
    out.push_str(&text.text[at..]);
    Ok(out)
}

/// The text, with character positions (the parser's) turned into byte offsets.
pub struct Chars<'t> {
    pub text: &'t str,
    /// The byte offset of every 64th character; empty for ASCII text, where they are equal.
    every_64th: Vec<usize>,
}

impl<'t> Chars<'t> {
    pub fn new(text: &'t str) -> Self {
        let every_64th =
            if text.is_ascii() { Vec::new() } else { text.char_indices().step_by(64).map(|(b, _)| b).collect() };
        Chars { text, every_64th }
    }

    pub fn byte(&self, char_pos: usize) -> usize {
        if self.every_64th.is_empty() {
            return char_pos.min(self.text.len());
        }
        let Some(&from) = self.every_64th.get(char_pos / 64) else { return self.text.len() };
        self.text[from..].char_indices().nth(char_pos % 64).map_or(self.text.len(), |(b, _)| from + b)
    }

    fn char_pos(&self, byte: usize) -> usize {
        if self.every_64th.is_empty() {
            byte
        } else {
            self.text[..byte].chars().count()
        }
    }

    /// The byte offset where the line holding `byte` starts.
    fn line_start(&self, byte: usize) -> usize {
        self.text[..byte].rfind('\n').map_or(0, |i| i + 1)
    }
}

/// Where a block item or entry whose first character is at `byte` can take a line before it:
/// the start of its line when only spaces precede it there (moved above any comment lines of
/// the same indentation directly above, so a comment stays with what it describes), or `None`
/// when something precedes it on its line (a `- `).
fn line_before(text: &Chars<'_>, byte: usize) -> Option<(usize, usize)> {
    let start = text.line_start(byte);
    let indent = byte - start;
    if !text.text[start..byte].bytes().all(|b| b == b' ') {
        return None;
    }
    let mut at = start;
    while at > 0 {
        let prev = text.line_start(at - 1);
        let line = &text.text[prev..at - 1];
        let trimmed = line.trim_start_matches(' ');
        if trimmed.starts_with('#') && line.len() - trimmed.len() == indent {
            at = prev;
        } else {
            break;
        }
    }
    Some((at, indent))
}

fn column(text: &Chars<'_>, byte: usize) -> usize {
    text.text[text.line_start(byte)..byte].chars().count()
}

fn is_flow(text: &Chars<'_>, node: &Node, open: char) -> bool {
    text.text[text.byte(node.span.0)..].starts_with(open)
}

fn add_entry(text: &Chars<'_>, map: &Node, entries: &[(Node, Node)], key: &str, value: &Value) -> Result<Edit, String> {
    if is_flow(text, map, '{') {
        let at = map.span.0 + 1;
        let comma = if entries.is_empty() { "" } else { ", " };
        let entry = format!("{}: {}{comma}", json(&Value::String(key.into())), json(value));
        return Ok(Edit { start: at, end: at, text: entry });
    }
    let first = entries.first().map(|(k, _)| k).ok_or("an empty block mapping")?;
    let byte = text.byte(first.span.0);
    let edit = match line_before(text, byte) {
        Some((at, indent)) => Edit {
            start: text.char_pos(at),
            end: text.char_pos(at),
            text: format!("{}{}", " ".repeat(indent), entry(key, value, indent)),
        },
        None => {
            let indent = column(text, byte);
            Edit {
                start: first.span.0,
                end: first.span.0,
                text: format!("{}{}", entry(key, value, indent), " ".repeat(indent)),
            }
        }
    };
    Ok(edit)
}

/// `inserted`: how many items earlier operations put before this one at the same place.
fn add_item(
    text: &Chars<'_>,
    seq: &Node,
    items: &[Node],
    index: usize,
    inserted: usize,
    value: &Value,
) -> Result<Edit, String> {
    if is_flow(text, seq, '[') {
        if index != 0 {
            return Err("flow sequences take items at the front only".into());
        }
        let at = seq.span.0 + 1;
        // Each inserted item is followed by a comma when the text's own items follow; into an
        // empty `[]`, every item after the first is preceded by one.
        let before = if items.is_empty() && inserted > 0 { ", " } else { "" };
        let after = if items.is_empty() { "" } else { ", " };
        return Ok(Edit { start: at, end: at, text: format!("{before}{}{after}", json(value)) });
    }
    let next = items.get(index).ok_or("block sequences take items before an existing one only")?;
    let item_byte = text.byte(next.span.0);
    // The item's `-`: the last non-space before its content.
    let dash =
        text.text[..item_byte].trim_end_matches(' ').len().checked_sub(1).filter(|&d| text.text.as_bytes()[d] == b'-');
    let dash = dash.ok_or("a block sequence item without its dash")?;
    let edit = match line_before(text, dash) {
        Some((at, indent)) => Edit {
            start: text.char_pos(at),
            end: text.char_pos(at),
            text: format!("{}- {}", " ".repeat(indent), item(value, indent + 2)),
        },
        None => {
            let indent = column(text, dash);
            let at = text.char_pos(dash);
            Edit { start: at, end: at, text: format!("- {}{}", item(value, indent + 2), " ".repeat(indent)) }
        }
    };
    Ok(edit)
}

/// A member that is there, a scalar or nothing, replaced by a value on its key's line.
fn replace_value(text: &Chars<'_>, key: &Node, old: &Node, value: &Value) -> Result<Edit, String> {
    if matches!(old.value, Y::Map(_) | Y::Seq(_)) {
        return Err("only a scalar or an empty value is replaced".into());
    }
    if old.span.1 > old.span.0 {
        return Ok(Edit { start: old.span.0, end: old.span.1, text: json(value) });
    }
    // An empty value (`annotations:`) has no text of its own: write after the key's colon.
    let after_key = text.byte(key.span.1);
    let colon = text.text[after_key..].find(':').map(|i| after_key + i).ok_or("a key without its colon")?;
    let at = text.char_pos(colon + 1);
    Ok(Edit { start: at, end: at, text: format!(" {}", json(value)) })
}

/// Removes a member whose value is a scalar (an exact span): in a block mapping its whole line,
/// in a flow mapping the member and one comma beside it.
fn remove_entry(text: &Chars<'_>, map: &Node, key: &Node, value: &Node) -> Result<Edit, String> {
    if matches!(value.value, Y::Map(_) | Y::Seq(_)) {
        return Err("only a member with a scalar value is removed".into());
    }
    let Y::Map(entries) = &map.value else { return Err("not a mapping".into()) };
    if is_flow(text, map, '{') {
        let at = entries.iter().position(|(k, _)| k.span == key.span).ok_or("not a member of its mapping")?;
        let (start, end) = match (at.checked_sub(1).map(|i| &entries[i]), entries.get(at + 1)) {
            // After an earlier member: from the end of its value, taking the comma before.
            (Some((_, before)), _) => (before.span.1, value.span.1),
            // The first of several: up to the next member, taking the comma after.
            (None, Some((next, _))) => (key.span.0, next.span.0),
            (None, None) => (key.span.0, value.span.1),
        };
        return Ok(Edit { start, end, text: String::new() });
    }
    let byte = text.byte(key.span.0);
    let line = text.line_start(byte);
    if !text.text[line..byte].bytes().all(|b| b == b' ') {
        return Err("a member that shares its line with another is not removed".into());
    }
    // Its value's lines: the key's, then every line indented deeper than the key (a block
    // scalar's, a plain scalar's continuation), blank ones among them. The parser's end of an
    // empty value (`service:`) or a block scalar (`service: >-`) is not exact.
    let indent = byte - line;
    let mut line_end = text.text[byte..].find('\n').map_or(text.text.len(), |i| byte + i + 1);
    while line_end < text.text.len() {
        let next = &text.text[line_end..];
        let this = &next[..next.find('\n').map_or(next.len(), |i| i + 1)];
        let deeper = this.len() - this.trim_start_matches(' ').len() > indent;
        if !(deeper || this.trim().is_empty()) {
            break;
        }
        line_end += this.len();
    }
    Ok(Edit { start: text.char_pos(line), end: text.char_pos(line_end), text: String::new() })
}

fn json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

// === writing block YAML for a place in the text ===
//
// Strings are double-quoted unless they read as the same string in both YAML 1.1 and 1.2
// (Kubernetes tools still read 1.1, where `on` and `0755` are not strings); multi-line strings
// are literal blocks. Each function writes its first line without indentation and every other
// line indented in full; the text ends with a newline.

/// `key: value` for a mapping whose keys are at column `indent`.
pub fn entry(key: &str, value: &Value, indent: usize) -> String {
    let key = scalar_key(key);
    match value {
        Value::Object(m) if !m.is_empty() => format!("{key}:\n{}", map_body(m, indent + 2)),
        Value::Array(a) if !a.is_empty() => format!("{key}:\n{}", seq_body(a, indent)),
        Value::String(s) if literal_ok(s) => format!("{key}: {}", literal(s, indent + 2)),
        _ => format!("{key}: {}\n", inline(value)),
    }
}

/// A sequence item's content after its `- `, its own lines at column `indent`.
pub fn item(value: &Value, indent: usize) -> String {
    match value {
        Value::Object(m) if !m.is_empty() => {
            let mut out = String::new();
            for (i, (k, v)) in ordered(m).enumerate() {
                if i > 0 {
                    out.push_str(&" ".repeat(indent));
                }
                out.push_str(&entry(k, v, indent));
            }
            out
        }
        Value::Array(a) if !a.is_empty() => format!("\n{}", seq_body(a, indent)),
        _ => format!("{}\n", inline(value)),
    }
}

/// A mapping's entries as Kubernetes writes them: `name` first, then the others in order.
fn ordered(map: &serde_json::Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    let name = map.get_key_value("name");
    name.into_iter().chain(map.iter().filter(|(k, _)| k.as_str() != "name"))
}

fn map_body(map: &serde_json::Map<String, Value>, indent: usize) -> String {
    ordered(map).map(|(k, v)| format!("{}{}", " ".repeat(indent), entry(k, v, indent))).collect()
}

fn seq_body(items: &[Value], indent: usize) -> String {
    items.iter().map(|v| format!("{}- {}", " ".repeat(indent), item(v, indent + 2))).collect()
}

fn inline(value: &Value) -> String {
    match value {
        Value::String(s) if plain_ok(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => json(other),
    }
}

fn scalar_key(key: &str) -> String {
    if plain_ok(key) {
        key.to_string()
    } else {
        json(&Value::String(key.into()))
    }
}

/// Read as this very string by YAML 1.1 and 1.2 alike.
fn plain_ok(s: &str) -> bool {
    const WORDS: [&str; 12] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf", "~"];
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && s.ends_with('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with([' ', '\n'])
        && s.lines().all(|l| l == l.trim_end() && !l.chars().any(char::is_control))
}

/// A `|` block: the string's lines at column `indent`, its one final newline kept.
fn literal(s: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in s.lines() {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{parse, Limits};
    use serde_json::json;

    fn patched(text: &str, ops: &[Op]) -> String {
        let docs = parse(text, &Limits::MANIFESTS).unwrap();
        let chars = Chars::new(text);
        let edits = edits(&chars, &docs[0].root, ops).unwrap_or_else(|e| panic!("{text}: {e}"));
        let out = apply(&chars, edits).unwrap();
        // The text says what the patch says.
        let mut expected = docs[0].root.to_json();
        super::super::patch::apply(&mut expected, ops).unwrap();
        let reread = parse(&out, &Limits::MANIFESTS).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(reread[0].root.to_json(), expected, "{out}");
        out
    }

    fn add(path: &str, value: Value) -> Op {
        Op::Add { path: path.into(), value }
    }

    #[test]
    fn operations_the_text_cannot_take_are_errors() {
        let text = "a:\n  - 1\n  - 2\nb: {x: 1}\n";
        let docs = parse(text, &Limits::FILE).unwrap();
        let chars = Chars::new(text);
        for op in [
            add("/a/2", json!(3)),
            add("/c/d", json!(1)),
            Op::Replace { path: "/z".into(), value: json!(1) },
            Op::Replace { path: "/a".into(), value: json!(1) },
            add("", json!(1)),
        ] {
            assert!(edits(&chars, &docs[0].root, std::slice::from_ref(&op)).is_err(), "{op:?}");
        }
    }

    /// A gRPC probe turned into an HTTP one: its port replaced, `service` removed, a path added
    /// and the member renamed, in block and flow style; the comments and the rest stay.
    #[test]
    fn a_member_is_renamed_and_a_scalar_one_removed_in_place() {
        let ops = |service: bool| {
            let mut ops = vec![
                Op::Replace { path: "/probe/grpc/port".into(), value: json!(15000) },
                add("/probe/grpc/path", json!("/app-health/app/liveness")),
            ];
            if service {
                ops.push(Op::Remove { path: "/probe/grpc/service".into() });
            }
            ops.push(Op::Move { from: "/probe/grpc".into(), path: "/probe/httpGet".into() });
            ops
        };
        let block =
            "probe:\n  # the app's health\n  grpc:\n    service: shop   # ours\n    port: 9090\n  periodSeconds: 5\n";
        assert_eq!(
            patched(block, &ops(true)),
            "probe:\n  # the app's health\n  httpGet:\n    path: /app-health/app/liveness\n    port: 15000\n  periodSeconds: 5\n"
        );
        for (flow, expected) in [
            (
                "probe: {grpc: {port: 9090, service: shop}}\n",
                "probe: {\"httpGet\": {\"path\": \"/app-health/app/liveness\", port: 15000}}\n",
            ),
            (
                "probe: {grpc: {service: shop, port: 9090}}\n",
                "probe: {\"httpGet\": {\"path\": \"/app-health/app/liveness\", port: 15000}}\n",
            ),
        ] {
            assert_eq!(patched(flow, &ops(true)), expected, "{flow}");
        }
        assert_eq!(
            patched(
                "probe:\n  tcpSocket: {port: http}\n",
                &ops(false)
                    .iter()
                    .map(|op| match op {
                        Op::Move { .. } => Op::Move { from: "/probe/tcpSocket".into(), path: "/probe/httpGet".into() },
                        Op::Replace { value, .. } =>
                            Op::Replace { path: "/probe/tcpSocket/port".into(), value: value.clone() },
                        Op::Add { value, .. } => add("/probe/tcpSocket/path", value.clone()),
                        Op::Remove { .. } => unreachable!(),
                    })
                    .collect::<Vec<_>>()
            ),
            "probe:\n  httpGet: {\"path\": \"/app-health/app/liveness\", port: 15000}\n"
        );
        // A JSON manifest stays JSON; an empty `service:` and a block scalar are removed whole.
        let json_text = "{\"probe\": {\"grpc\": {\"port\": 9090, \"service\": \"shop\"}}}\n";
        let out = patched(json_text, &ops(true));
        assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
        for block in [
            "probe:\n  grpc:\n    service:\n    port: 9090\n  periodSeconds: 5\n",
            "probe:\n  grpc:\n    service: >-\n      shop.Orders\n    port: 9090\n  periodSeconds: 5\n",
            "probe:\n  grpc:\n    port: 9090\n    service: >-\n      shop.Orders\n  periodSeconds: 5\n",
            "probe:\n  grpc:\n    port: 9090\n    service:\n  periodSeconds: 5\n",
        ] {
            let out = patched(block, &ops(true));
            assert!(out.ends_with("port: 15000\n  periodSeconds: 5\n"), "{block:?} -> {out:?}");
        }
        // What the text cannot take: a mapping removed, a move to another mapping.
        let text = "a:\n  b: {c: 1}\n  d: 2\n";
        let docs = parse(text, &Limits::FILE).unwrap();
        let chars = Chars::new(text);
        for op in [
            Op::Remove { path: "/a/b".into() },
            Op::Remove { path: "/a/z".into() },
            Op::Move { from: "/a/b/c".into(), path: "/a/c".into() },
        ] {
            assert!(edits(&chars, &docs[0].root, std::slice::from_ref(&op)).is_err(), "{op:?}");
        }
    }

    #[test]
    fn entries_go_before_the_first_key_with_its_indentation_and_comments_stay_with_their_keys() {
        let text = "# top\nmetadata:\n  # the name\n  name: x   # trailing\n  labels: {app: a}\nspec:\n  - name: c\n    image: i\n";
        let out = patched(
            text,
            &[add("/metadata/annotations", json!({"palisade.dev/injected": "0.1.0", "team": "on", "y": "1"}))],
        );
        assert_eq!(
            out,
            "# top\nmetadata:\n  annotations:\n    palisade.dev/injected: \"0.1.0\"\n    team: \"on\"\n    \"y\": \"1\"\n  # the name\n  name: x   # trailing\n  labels: {app: a}\nspec:\n  - name: c\n    image: i\n"
        );
        // After a dash, the new entry takes the key's place and the key moves to the next line.
        let out = patched(text, &[add("/spec/0/ports", json!([{"containerPort": 80}]))]);
        assert!(out.ends_with("spec:\n  - ports:\n    - containerPort: 80\n    name: c\n    image: i\n"), "{out}");
    }

    #[test]
    fn items_go_before_the_item_they_precede_and_counts_follow_earlier_insertions() {
        let text = "list:\n# about one\n- one\n- two\nflow: [a]\nempty: []\nmap: {}\n";
        let out = patched(
            text,
            &[
                add("/list/0", json!({"name": "first", "args": ["x", "*"]})),
                add("/list/1", json!("s")),
                add("/flow/0", json!({"k": 1})),
                add("/empty/0", json!("e")),
                add("/map/k", json!([1])),
            ],
        );
        assert!(out.starts_with("list:\n- name: first\n  args:\n  - x\n  - \"*\"\n- s\n# about one\n- one\n"), "{out}");
        assert!(out.ends_with("flow: [{\"k\":1}, a]\nempty: [\"e\"]\nmap: {\"k\": [1]}\n"), "{out}");
    }

    #[test]
    fn empty_values_and_scalars_are_replaced_on_their_line() {
        let text = "metadata:\n  annotations:\n  name: x\nother: ~\nv: old # why\n";
        let out = patched(
            text,
            &[
                add("/metadata/annotations", json!({"a": "b"})),
                add("/other", json!([1])),
                Op::Replace { path: "/v".into(), value: json!("new") },
            ],
        );
        assert_eq!(out, "metadata:\n  annotations: {\"a\":\"b\"}\n  name: x\nother: [1]\nv: \"new\" # why\n");
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_and_non_ascii_text_is_placed_by_character() {
        let text = "é: ü\nm:\n  k: v\n";
        let out = patched(text, &[add("/m/cfg", json!("a: 1\nb:\n  c: 2\n"))]);
        assert_eq!(out, "é: ü\nm:\n  cfg: |\n    a: 1\n    b:\n      c: 2\n  k: v\n");
    }
}

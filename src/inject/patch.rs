//! JSON Patch (RFC 6902), the operations injection uses: the webhook sends them to the API
//! server, `palisade inject` turns them into text edits, and tests apply them to JSON.

use serde::Serialize;
use serde_json::Value;

/// One operation. Injection adds (members, or items at an index) and replaces a member that is
/// there; to turn a probe into one the sidecar answers, it also renames a member (a `move`
/// within one object) and removes a scalar member.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
    Move { from: String, path: String },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Add { path, .. } | Op::Replace { path, .. } | Op::Remove { path } | Op::Move { path, .. } => path,
        }
    }
}

/// A JSON Pointer token for a member name (`palisade.dev/injected` → `palisade.dev~1injected`).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The tokens of a JSON Pointer.
pub fn tokens(path: &str) -> Vec<String> {
    path.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect()
}

/// Applies `ops` to `doc` as an API server would; the first operation that cannot apply stops it.
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        let tokens = tokens(op.path());
        let Some((last, parents)) = tokens.split_last() else {
            match op {
                Op::Add { value, .. } | Op::Replace { value, .. } => *doc = value.clone(),
                _ => return Err("the whole document cannot be moved or removed".into()),
            }
            continue;
        };
        let mut node = &mut *doc;
        for t in parents {
            node = match node {
                Value::Object(m) => m.get_mut(t),
                Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| format!("{}: no such parent", op.path()))?;
        }
        match (op, node) {
            (Op::Remove { .. }, Value::Object(m)) => {
                m.remove(last).ok_or_else(|| format!("{}: nothing to remove", op.path()))?;
            }
            (Op::Move { from, .. }, Value::Object(m)) => {
                // Only within one object (a rename), which is all injection asks.
                let from = self::tokens(from);
                let (Some(name), true) = (from.last(), from[..from.len().saturating_sub(1)] == *parents) else {
                    return Err(format!("{}: moved from another object", op.path()));
                };
                let value = m.remove(name).ok_or_else(|| format!("{}: nothing to move", op.path()))?;
                m.insert(last.clone(), value);
            }
            (Op::Add { value, .. }, Value::Object(m)) => {
                m.insert(last.clone(), value.clone());
            }
            (Op::Replace { value, .. }, Value::Object(m)) if m.contains_key(last) => {
                m.insert(last.clone(), value.clone());
            }
            (Op::Add { value, .. }, Value::Array(a)) => {
                let index = if last == "-" {
                    a.len()
                } else {
                    last.parse().map_err(|_| format!("{}: bad index", op.path()))?
                };
                if index > a.len() {
                    return Err(format!("{}: index out of range", op.path()));
                }
                a.insert(index, value.clone());
            }
            (Op::Replace { value, .. }, Value::Array(a)) => {
                let slot = last.parse::<usize>().ok().and_then(|i| a.get_mut(i));
                *slot.ok_or_else(|| format!("{}: no such item", op.path()))? = value.clone();
            }
            _ => return Err(format!("{}: cannot apply here", op.path())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_that_cannot_apply_are_errors() {
        let mut doc = json!({"a": [1], "s": "x"});
        for op in [
            Op::Add { path: "/b/c".into(), value: json!(1) },
            Op::Add { path: "/a/5".into(), value: json!(1) },
            Op::Replace { path: "/missing".into(), value: json!(1) },
            Op::Add { path: "/s/x".into(), value: json!(1) },
        ] {
            assert!(apply(&mut doc, std::slice::from_ref(&op)).is_err(), "{op:?}");
        }
    }

    #[test]
    fn adds_and_replaces_follow_rfc_6902() {
        let mut doc = json!({"metadata": {"annotations": {"a/b": "1"}}, "list": [1, 2]});
        let ops = [
            Op::Add { path: format!("/metadata/annotations/{}", escape("x/y~z")), value: json!("v") },
            Op::Replace { path: "/metadata/annotations/a~1b".into(), value: json!("2") },
            Op::Add { path: "/list/0".into(), value: json!(0) },
            Op::Add { path: "/list/-".into(), value: json!(3) },
        ];
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, json!({"metadata": {"annotations": {"a/b": "2", "x/y~z": "v"}}, "list": [0, 1, 2, 3]}));
        assert_eq!(serde_json::to_value(&ops[0]).unwrap()["op"], "add");
    }

    #[test]
    fn a_member_is_renamed_and_removed_as_rfc_6902_says() {
        let mut doc = json!({"probe": {"grpc": {"port": 9090, "service": "shop"}, "periodSeconds": 5}});
        let ops = [
            Op::Remove { path: "/probe/grpc/service".into() },
            Op::Move { from: "/probe/grpc".into(), path: "/probe/httpGet".into() },
        ];
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, json!({"probe": {"httpGet": {"port": 9090}, "periodSeconds": 5}}));
        assert_eq!(
            serde_json::to_value(&ops[1]).unwrap(),
            json!({"op": "move", "from": "/probe/grpc", "path": "/probe/httpGet"})
        );
        for op in [
            Op::Remove { path: "/probe/gone".into() },
            Op::Move { from: "/probe/gone".into(), path: "/probe/x".into() },
            Op::Move { from: "/other/httpGet".into(), path: "/probe/x".into() },
        ] {
            assert!(apply(&mut doc, std::slice::from_ref(&op)).is_err(), "{op:?}");
        }
    }
}

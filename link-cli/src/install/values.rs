//! Chart values the way helm builds them: the chart's `values.yaml`, overlaid by
//! `values-ha.yaml` (maps merge deeply, everything else is replaced), then `--set`
//! assignments with helm's typing (`true`/`false`, integers, `null` deletes, `{a,b}`
//! lists, `a.b[0].c` paths). Pure, so unit tests pin the semantics.

use serde_json::{Map, Value};

/// Parses a chart's YAML values file (embedded, so an error is a packaging bug).
pub fn parse_yaml(name: &str, text: &str) -> Result<Value, String> {
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("chart file {name}: {e}"))?;
    Ok(if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    })
}

/// Overlays `top` on `base` as helm coalesces values files.
pub fn merge(base: &mut Value, top: &Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, t) => *b = t.clone(),
    }
}

/// One `--set` assignment: a path and a typed value (`None` deletes).
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Path segments: map keys and list indexes.
    pub path: Vec<Segment>,
    /// The value; `None` for `null`.
    pub value: Option<Value>,
}

/// A step in a `--set` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `key`
    Key(String),
    /// `[n]`
    Index(usize),
}

impl Assignment {
    /// The top-level key this assignment changes.
    pub fn root(&self) -> &str {
        match self.path.first() {
            Some(Segment::Key(k)) => k,
            _ => "",
        }
    }
}

/// Parses one `--set` argument (`a.b=1,c[0].d=x,e={p,q}`) into assignments.
pub fn parse_set(text: &str) -> Result<Vec<Assignment>, String> {
    split_top_level(text)
        .into_iter()
        .map(|item| {
            let (key, raw) = item
                .split_once('=')
                .ok_or_else(|| format!("--set {item:?}: expected key=value"))?;
            let path = parse_path(key).map_err(|e| format!("--set {item:?}: {e}"))?;
            let value = match raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some("") => Some(Value::Array(Vec::new())),
                Some(list) => Some(Value::Array(
                    list.split(',')
                        .map(|v| typed(v).unwrap_or(Value::Null))
                        .collect(),
                )),
                None => typed(raw),
            };
            Ok(Assignment { path, value })
        })
        .collect()
}

/// Splits on commas outside `{...}`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn parse_path(key: &str) -> Result<Vec<Segment>, String> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() || name.contains(['=', ']', ' ']) {
            return Err(format!("bad key {key:?}"));
        }
        path.push(Segment::Key(name.to_owned()));
        while !rest.is_empty() {
            let (index, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("unclosed [ in {key:?}"))?;
            let index = index
                .parse()
                .map_err(|_| format!("bad list index {index:?} in {key:?}"))?;
            path.push(Segment::Index(index));
            rest = after.strip_prefix('[').unwrap_or(after);
            if !after.is_empty() && !after.starts_with('[') {
                return Err(format!("bad key {key:?}"));
            }
        }
    }
    Ok(path)
}

/// helm's `--set` typing: booleans, `null`, integers without a leading zero, else a string.
fn typed(raw: &str) -> Option<Value> {
    match raw {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        "null" => None,
        _ if raw.len() > 1 && raw.starts_with('0') => Some(Value::String(raw.to_owned())),
        _ => Some(
            raw.parse::<i64>()
                .map_or_else(|_| Value::String(raw.to_owned()), Value::from),
        ),
    }
}

/// Applies an assignment to `values`, creating maps and growing lists on the way.
pub fn apply(values: &mut Value, assignment: &Assignment) -> Result<(), String> {
    let Some((last, parents)) = assignment.path.split_last() else {
        return Err("empty --set key".into());
    };
    let mut node = values;
    for (i, segment) in parents.iter().enumerate() {
        let next_is_index = matches!(assignment.path.get(i + 1), Some(Segment::Index(_)));
        let fresh = || {
            if next_is_index {
                Value::Array(Vec::new())
            } else {
                Value::Object(Map::new())
            }
        };
        node = child(node, segment, fresh)?;
    }
    match (last, &assignment.value) {
        (Segment::Key(k), None) => {
            if let Value::Object(map) = node {
                map.remove(k);
            }
        }
        (segment, value) => {
            *child(node, segment, || Value::Null)? = value.clone().unwrap_or(Value::Null)
        }
    }
    Ok(())
}

fn child<'a>(
    node: &'a mut Value,
    segment: &Segment,
    fresh: impl Fn() -> Value,
) -> Result<&'a mut Value, String> {
    match segment {
        Segment::Key(k) => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            let map = node.as_object_mut().ok_or("not a map")?;
            let slot = map.entry(k.clone()).or_insert_with(&fresh);
            if slot.is_null() {
                *slot = fresh();
            }
            Ok(slot)
        }
        Segment::Index(i) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            let list = node.as_array_mut().ok_or("not a list")?;
            if *i > 10_000 {
                return Err(format!("list index {i} is too large"));
            }
            while list.len() <= *i {
                list.push(Value::Null);
            }
            let slot = &mut list[*i];
            if slot.is_null() {
                *slot = fresh();
            }
            Ok(slot)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(values: &mut Value, text: &str) {
        for a in parse_set(text).unwrap() {
            apply(values, &a).unwrap();
        }
    }

    #[test]
    fn set_types_values_like_helm() {
        let mut v = json!({"a": {"keep": 1}});
        set(
            &mut v,
            "a.n=3,a.b=true,a.s=1.5,a.z=007,a.l={x,2},a.keep=null,e={}",
        );
        assert_eq!(
            v,
            json!({"a": {"n": 3, "b": true, "s": "1.5", "z": "007", "l": ["x", 2]}, "e": []})
        );
    }

    #[test]
    fn set_builds_lists_of_maps() {
        let mut v = json!({"links": []});
        set(&mut v, "links[1].name=north,links[0].name=east");
        assert_eq!(v, json!({"links": [{"name": "east"}, {"name": "north"}]}));
    }

    #[test]
    fn bad_set_arguments_are_named() {
        assert!(
            parse_set("novalue")
                .unwrap_err()
                .contains("expected key=value")
        );
        assert!(parse_set("a[x]=1").unwrap_err().contains("bad list index"));
        assert!(parse_set("a[1=1").unwrap_err().contains("unclosed"));
        assert!(parse_set(".a=1").unwrap_err().contains("bad key"));
    }

    #[test]
    fn merge_is_deep_for_maps_and_replaces_the_rest() {
        let mut base = json!({"c": {"replicas": 1, "pdb": {"enabled": false, "max": 1}}, "l": [1]});
        merge(
            &mut base,
            &json!({"c": {"pdb": {"enabled": true}}, "l": [2, 3]}),
        );
        assert_eq!(
            base,
            json!({"c": {"replicas": 1, "pdb": {"enabled": true, "max": 1}}, "l": [2, 3]})
        );
    }
}

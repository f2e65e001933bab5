//! Chart values checked against the chart's own `values.schema.json`, the file
//! helm checks them with, so `meshlink install` refuses what `helm template`
//! refuses and names the same field. It implements the JSON Schema keywords the
//! charts' schemas use; a schema with any other keyword is refused, so a schema
//! edit cannot make this check less than helm's without a failing test.

use regex::Regex;
use serde_json::{Map, Value};

/// The keywords understood here; annotations (`$schema`, `title`,
/// `description`) are read past.
const KEYWORDS: [&str; 14] = [
    "$schema",
    "title",
    "description",
    "type",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "properties",
    "required",
    "additionalProperties",
    "items",
];

/// Checks `value` against `schema`; the error is the first violation as
/// `field.path: problem`.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, value, &mut Vec::new())
}

/// Every keyword of `schema` and its subschemas is one [`validate`] implements.
#[cfg(test)]
pub fn unsupported_keywords(schema: &Value) -> Vec<String> {
    let Value::Object(map) = schema else {
        return vec![format!("non-object schema {schema}")];
    };
    let mut bad: Vec<String> = map
        .keys()
        .filter(|k| !KEYWORDS.contains(&k.as_str()))
        .cloned()
        .collect();
    let nested = map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.values())
        .chain(map.get("items"))
        .chain(map.get("additionalProperties").filter(|a| a.is_object()));
    for sub in nested {
        bad.extend(unsupported_keywords(sub));
    }
    bad
}

fn check(schema: &Value, value: &Value, path: &mut Vec<String>) -> Result<(), String> {
    let Value::Object(s) = schema else {
        return Err(format!("{}: the schema is not an object", at(path)));
    };
    here(s, value).map_err(|problem| format!("{}: {problem}", at(path)))?;
    match value {
        Value::Object(map) => {
            let properties = s.get("properties").and_then(Value::as_object);
            for (key, item) in map {
                let sub = properties
                    .and_then(|p| p.get(key))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(sub) = sub {
                    path.push(format!(".{key}"));
                    check(sub, item, path)?;
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    path.push(format!("[{i}]"));
                    check(sub, item, path)?;
                    path.pop();
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The problem with `value` itself (not its members) under schema `s`.
fn here(s: &Map<String, Value>, value: &Value) -> Result<(), String> {
    if let Some(k) = s.keys().find(|k| !KEYWORDS.contains(&k.as_str())) {
        return Err(format!("schema keyword {k:?} is not supported"));
    }
    if let Some(types) = s.get("type") {
        let allowed: Vec<&str> = match types {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        if !allowed.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "got {}, want {}",
                describe(value),
                allowed.join(" or ")
            ));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.contains(value)
    {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        return Err(format!("got {value}, want one of {}", options.join(", ")));
    }
    match value {
        Value::Number(n) => number(s, n.as_f64().unwrap_or(f64::NAN)),
        Value::String(text) => string(s, text),
        Value::Object(map) => members(s, map),
        _ => Ok(()),
    }
}

/// Required members are there, and no unknown one where none is allowed.
fn members(s: &Map<String, Value>, map: &Map<String, Value>) -> Result<(), String> {
    let required = s.get("required").and_then(Value::as_array);
    for key in required.into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(key) {
            return Err(format!("missing required value {key:?}"));
        }
    }
    let properties = s.get("properties").and_then(Value::as_object);
    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
        let known = |k: &String| properties.is_some_and(|p| p.contains_key(k));
        if let Some(key) = map.keys().find(|k| !known(k)) {
            let names: Vec<&str> = properties
                .into_iter()
                .flat_map(|p| p.keys())
                .map(String::as_str)
                .collect();
            return Err(format!(
                "unknown value {key:?} (known: {})",
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// `want at least 1` or `want at most 63 characters` when `size` is outside the
/// bounds the keywords `min` and `max` of `s` set.
fn bounds(s: &Map<String, Value>, [min, max]: [&str; 2], size: f64, unit: &str) -> Option<String> {
    let limit = |key: &str| s.get(key).and_then(Value::as_f64);
    match (limit(min), limit(max)) {
        (Some(low), _) if size < low => Some(format!("want at least {low}{unit}")),
        (_, Some(high)) if size > high => Some(format!("want at most {high}{unit}")),
        _ => None,
    }
}

fn number(s: &Map<String, Value>, n: f64) -> Result<(), String> {
    match bounds(s, ["minimum", "maximum"], n, "") {
        Some(want) => Err(format!("got {n}, {want}")),
        None => Ok(()),
    }
}

fn string(s: &Map<String, Value>, text: &str) -> Result<(), String> {
    let len = text.chars().count() as f64;
    if let Some(want) = bounds(s, ["minLength", "maxLength"], len, " character(s)") {
        return Err(format!("got {text:?}, {want}"));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        let re = Regex::new(pattern).map_err(|e| format!("schema pattern {pattern:?}: {e}"))?;
        if !re.is_match(text) {
            return Err(format!("got {text:?}, which does not match {pattern:?}"));
        }
    }
    Ok(())
}

/// JSON Schema's types; an integer is any whole number, as helm's validator has it.
fn has_type(value: &Value, name: &str) -> bool {
    match (name, value) {
        ("integer", Value::Number(n)) => n.as_f64().is_some_and(|f| f.fract() == 0.0),
        ("number", Value::Number(_))
        | ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("object", Value::Object(_))
        | ("array", Value::Array(_))
        | ("null", Value::Null) => true,
        _ => false,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
    }
}

/// `gateway.port`, `links[0].name`; the top level is `values`.
fn at(path: &[String]) -> String {
    if path.is_empty() {
        "values".to_owned()
    } else {
        path.concat().trim_start_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object", "additionalProperties": false, "required": ["port"],
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "policy": {"type": "string", "enum": ["tiered", "all"]},
                "budget": {"type": ["integer", "string"], "minimum": 0, "pattern": "^[0-9]+%$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "links": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 3}}}},
            },
        })
    }

    fn error(value: Value) -> String {
        validate(&schema(), &value).unwrap_err()
    }

    #[test]
    fn valid_values_pass() {
        let ok = json!({"port": 8080, "policy": "all", "budget": "50%", "labels": {"a": "b"},
                        "links": [{"name": "e"}]});
        validate(&schema(), &ok).unwrap();
        validate(&schema(), &json!({"port": 1, "budget": 0})).unwrap();
    }

    #[test]
    fn each_violation_names_its_field() {
        assert_eq!(
            error(json!({"port": "http"})),
            "port: got string \"http\", want integer"
        );
        assert_eq!(error(json!({"port": 0})), "port: got 0, want at least 1");
        assert_eq!(
            error(json!({"port": 70000})),
            "port: got 70000, want at most 65535"
        );
        assert_eq!(
            error(json!({"port": 1, "policy": "fastest"})),
            "policy: got \"fastest\", want one of \"tiered\", \"all\""
        );
        assert_eq!(
            error(json!({"port": 1, "budget": "half"})),
            "budget: got \"half\", which does not match \"^[0-9]+%$\""
        );
        assert_eq!(
            error(json!({"port": 1, "labels": {"a": 1}})),
            "labels.a: got number 1, want string"
        );
        assert_eq!(
            error(json!({"port": 1, "links": [{"name": "east"}]})),
            "links[0].name: got \"east\", want at most 3 character(s)"
        );
        assert_eq!(
            error(json!({"prot": 1})),
            "values: missing required value \"port\""
        );
        assert!(
            error(json!({"port": 1, "prot": 1}))
                .starts_with("values: unknown value \"prot\" (known: ")
        );
    }

    #[test]
    fn unknown_keywords_are_refused_not_ignored() {
        let schema = json!({"type": "object", "properties": {"a": {"oneOf": []}}});
        assert_eq!(unsupported_keywords(&schema), ["oneOf"]);
        let err = validate(&schema, &json!({"a": 1})).unwrap_err();
        assert_eq!(err, "a: schema keyword \"oneOf\" is not supported");
    }
}

//! Printing: manifests as YAML documents or a JSON `List`, listings as aligned
//! columns. Everything returns a `String` so golden tests compare exact output.

use serde_json::Value;

use crate::cli::OutputFormat;
use crate::error::CliError;

/// Renders objects for `kubectl apply -f -` (YAML, the default) or as JSON.
pub fn manifests(objects: &[Value], format: Option<OutputFormat>) -> Result<String, CliError> {
    manifest_format(format)?;
    if format == Some(OutputFormat::Json) {
        let list = match objects {
            [one] => one.clone(),
            many => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": many}),
        };
        return to_json(&list);
    }
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&to_yaml(object)?);
    }
    Ok(out)
}

/// Refuses `-o table` for commands that print manifests, before they do any work.
pub fn manifest_format(format: Option<OutputFormat>) -> Result<(), CliError> {
    match format {
        Some(OutputFormat::Table) => Err(CliError::Usage(
            "-o table is not available for manifests; use -o yaml or -o json".into(),
        )),
        _ => Ok(()),
    }
}

/// One YAML document.
pub fn to_yaml(value: &Value) -> Result<String, CliError> {
    serde_yaml_ng::to_string(value).map_err(|e| CliError::Failed(format!("rendering YAML: {e}")))
}

/// Pretty JSON with a trailing newline.
pub fn to_json(value: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| CliError::Failed(format!("rendering JSON: {e}")))
}

/// Serializes a typed object into a JSON value.
pub fn value<T: serde::Serialize>(object: &T) -> Result<Value, CliError> {
    serde_json::to_value(object).map_err(|e| CliError::Failed(format!("serializing: {e}")))
}

/// Left-aligned columns separated by three spaces, kubectl style.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("   ").trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec![
                "Link".to_owned(),
                "meshlink-multicluster".to_owned(),
                "east".to_owned(),
            ],
            vec![
                "Service".to_owned(),
                "shop".to_owned(),
                "web-east".to_owned(),
            ],
        ];
        assert_eq!(
            table(&["KIND", "NAMESPACE", "NAME"], &rows),
            "KIND      NAMESPACE               NAME\n\
             Link      meshlink-multicluster   east\n\
             Service   shop                    web-east\n"
        );
    }

    #[test]
    fn several_objects_become_a_json_list_and_table_is_refused() {
        let objs = [
            serde_json::json!({"kind": "A"}),
            serde_json::json!({"kind": "B"}),
        ];
        let json = manifests(&objs, Some(OutputFormat::Json)).unwrap();
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["kind"], "List");
        assert_eq!(parsed["items"][1]["kind"], "B");
        assert!(matches!(
            manifests(&objs, Some(OutputFormat::Table)),
            Err(CliError::Usage(_))
        ));
    }
}

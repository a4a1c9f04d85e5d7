//! JSON values written as block YAML, the way `kubectl get -o yaml` lays them out: what `weir snapshot` and
//! the synthetic demo cluster write, and what [`crate::ClusterState::load`] reads back.

use serde_json::Value;

/// The value as a YAML document (maps in insertion order).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_list(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first key of a list item sits on the item's `- ` line.
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str(&string_text(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

fn write_list(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(out, map, indent + 2),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_list(out, inner, indent + 2);
            }
            scalar => {
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        // kubectl puts a map's lists at the map's own indentation.
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_list(out, items, indent);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
    }
}

/// Plain when it is made of harmless characters and every YAML reader reads it back as this very string,
/// double-quoted otherwise (JSON escapes are valid YAML). Two kinds of reader matter: the YAML 1.2 one weir
/// uses, and the YAML 1.1 ones of kubectl, kustomize and PyYAML, which also read `1_000` and `0b11` as
/// numbers, `0o17`-like and `2026-01-01` as other types, and `yes`, `on`, `y`, `~` as booleans or null.
fn string_text(s: &str) -> String {
    let harmless = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-'))
        && !s.starts_with(['-', '.'])
        && !yaml_1_1_non_string(s);
    let plain = harmless
        && serde_saphyr::from_str::<serde_json::Value>(s).is_ok_and(|v| v.as_str() == Some(s));
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
    }
}

/// Whether a YAML 1.1 reader could resolve a plain scalar to something other than a string: its booleans and
/// nulls (any case), and what looks like one of its numbers or dates: `0x`, `0b` (and YAML 1.2's `0o`)
/// numbers, and anything starting with a digit or dot made only of digits, `_`, signs, colons, `e` and at
/// most one dot (integers with `_`, floats, sexagesimals, `2026-01-01`). A bit wider than the 1.1 rules, on
/// purpose: quoting a string that needed none costs nothing, the reverse changes the object. Dotted quads and
/// UIDs stay plain.
fn yaml_1_1_non_string(s: &str) -> bool {
    let keyword = matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
    );
    keyword || number_like(s)
}

fn number_like(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = body.to_ascii_lowercase();
    let digits_of = |prefix: &str, ok: fn(char) -> bool| {
        lower
            .strip_prefix(prefix)
            .map(|rest| rest.chars().all(|c| ok(c) || c == '_'))
    };
    if let Some(hex) = digits_of("0x", |c| c.is_ascii_hexdigit()) {
        return hex;
    }
    if let Some(binary) = digits_of("0b", |c| matches!(c, '0' | '1')) {
        return binary;
    }
    if let Some(octal) = digits_of("0o", |c| matches!(c, '0'..='7')) {
        return octal;
    }
    body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | 'e' | 'E' | '+' | '-'))
        && body.matches('.').count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_layout() {
        let v = serde_json::json!({"apiVersion": "v1", "items": [{"kind": "Pod", "metadata": {"name": "a",
            "labels": {"app": "x"}}, "spec": {"ports": [{"port": 80}], "empty": {}}}], "flag": "true",
            "time": "2026-11-22T10:00:00Z"});
        let text = to_yaml(&v);
        assert_eq!(
            text,
            "apiVersion: v1\nitems:\n- kind: Pod\n  metadata:\n    name: a\n    labels:\n      app: x\n  spec:\n    \
             ports:\n    - port: 80\n    empty: {}\nflag: \"true\"\ntime: \"2026-11-22T10:00:00Z\"\n"
        );
    }
}

//! What `weir snapshot` writes reads back as the same objects, whatever the cluster's strings hold: label
//! values that look like numbers or booleans, annotations with newlines, quotes, colons, `#`, tabs, control
//! characters and non-ASCII text, empty maps and lists.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use weir_cluster::yaml::to_yaml;

fn read(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::String),
        "[ -~\t\n]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "yes",
            "No",
            "on",
            "~",
            "null",
            "true",
            "1e3",
            "0x1F",
            "0o17",
            "-",
            "- a",
            "a: b",
            "#x",
            "'q'",
            "\"",
            " lead",
            "trail ",
            "",
            "2026-11-22T10:00:00Z",
            ".inf",
            "-.5",
            "1_000",
            "@x",
            "`x",
            "!tag",
            "&a",
            "*a",
            "%d",
            "|",
            ">",
            "{}",
            "[]",
            "?",
            "a #b",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        any::<i64>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[ -~]{0,8}|\\PC{0,4}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn yaml_reads_back_as_written(v in value()) {
        let text = to_yaml(&v);
        prop_assert_eq!(read(&text), v, "{}", text);
    }
}

#[test]
fn an_object_with_awkward_strings_round_trips() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "shop",
        "labels": {"version": "1.10", "canary": "true", "empty": ""},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}\n",
                        "note": "line one\nline two: with # and 'quotes' and \"dq\"\tand ünïcödé \u{1}"}},
        "spec": {"containers": [{"name": "c", "ports": [], "env": [{"name": "X", "value": "- not a list"}]}]}});
    assert_eq!(read(&to_yaml(&pod)), pod);
}

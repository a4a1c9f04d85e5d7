//! Label selectors (`matchLabels` AND `matchExpressions`), compiled once and matched many times.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use weir_cluster::Labels;

/// A compiled label selector. The empty selector matches every label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Requirement {
    /// `matchLabels` entries and `In` with one value: the label is present with this value.
    Equals(String, String),
    In(String, Vec<String>),
    /// True when the label is absent, or present with a value not listed.
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Compiles a selector; `field` names it in errors (`spec.podSelector`).
    pub(crate) fn compile(
        selector: &LabelSelector,
        field: &str,
    ) -> Result<Selector, (String, String)> {
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("operator {} needs at least one value", expr.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("operator {} takes no values", expr.operator),
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err((
                        format!("{at}.operator"),
                        format!(
                            "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                        ),
                    ));
                }
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// The selector that matches everything (`{}`).
    pub fn everything() -> Selector {
        Selector {
            requirements: Vec::new(),
        }
    }

    /// True for `{}`.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for Selector {
    /// `app=web,tier in (a,b),!legacy`, the way `kubectl get -l` writes selectors; `{}` for everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::In(k, values) => write!(f, "{k} in ({})", values.join(","))?,
                Requirement::NotIn(k, values) => write!(f, "{k} notin ({})", values.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn operators_truth_table() {
        let none = labels(&[]);
        let a = labels(&[("env", "a")]);
        let b = labels(&[("env", "b")]);
        // (selector, matches {}, matches env=a, matches env=b)
        let cases = [
            (expr("env", "In", &["a"]), false, true, false),
            (expr("env", "NotIn", &["a"]), true, false, true),
            (expr("env", "Exists", &[]), false, true, true),
            (expr("env", "DoesNotExist", &[]), true, false, false),
            (LabelSelector::default(), true, true, true),
        ];
        for (selector, on_none, on_a, on_b) in cases {
            let s = Selector::compile(&selector, "s").unwrap();
            assert_eq!(
                (s.matches(&none), s.matches(&a), s.matches(&b)),
                (on_none, on_a, on_b),
                "{s}"
            );
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let mut selector = expr("tier", "In", &["web", "api"]);
        selector.match_labels = Some([("app".to_string(), "shop".to_string())].into());
        let s = Selector::compile(&selector, "s").unwrap();
        assert!(s.matches(&labels(&[("app", "shop"), ("tier", "api")])));
        assert!(!s.matches(&labels(&[("app", "shop"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("tier", "api")])));
        assert_eq!(s.to_string(), "app=shop,tier in (web,api)");
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let err = Selector::compile(&expr("k", "Matches", &["x"]), "spec.podSelector").unwrap_err();
        assert_eq!(err.0, "spec.podSelector.matchExpressions[0].operator");
        let err = Selector::compile(&expr("k", "In", &[]), "spec.podSelector").unwrap_err();
        assert_eq!(err.0, "spec.podSelector.matchExpressions[0].values");
        let err = Selector::compile(&expr("k", "Exists", &["x"]), "p").unwrap_err();
        assert!(err.1.contains("takes no values"));
    }
}

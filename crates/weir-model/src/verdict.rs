//! How an edge's flows were judged: the one verdict taxonomy of reports, the live engine, the map and the API.

use serde::{Deserialize, Serialize};

/// How the flows of an edge (a source, a destination, a port) were judged. Serialized in kebab-case
/// (`denied`, `mixed`, `not-isolated`, `allowed`, `unknown`), the names in every JSON format weir writes. The
/// order is the report's: findings first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeVerdict {
    /// Observed, but the policies in force deny it.
    Denied,
    /// A Service whose backends get different verdicts.
    Mixed,
    /// Allowed only because an end is not isolated: no policy rule allowed it.
    NotIsolated,
    /// Allowed by policy rules (or always allowed: a pod and its node, nodes and the outside).
    Allowed,
    /// Not judged (a Service without backends, say).
    Unknown,
}

impl EdgeVerdict {
    /// The name in JSON, CSS classes and filters.
    pub fn name(self) -> &'static str {
        match self {
            EdgeVerdict::Denied => "denied",
            EdgeVerdict::Mixed => "mixed",
            EdgeVerdict::NotIsolated => "not-isolated",
            EdgeVerdict::Allowed => "allowed",
            EdgeVerdict::Unknown => "unknown",
        }
    }

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            EdgeVerdict::Denied => "denied by policy",
            EdgeVerdict::NotIsolated => "allowed only because not isolated",
            EdgeVerdict::Mixed => "mixed (backends judged differently)",
            EdgeVerdict::Allowed => "allowed by policy",
            EdgeVerdict::Unknown => "not judged",
        }
    }

    /// The one to show when edges are shown as one: denied before mixed before allowed-because-not-isolated
    /// before not judged before allowed.
    pub fn worst(self, other: EdgeVerdict) -> EdgeVerdict {
        let rank = |v: EdgeVerdict| match v {
            EdgeVerdict::Denied => 0,
            EdgeVerdict::Mixed => 1,
            EdgeVerdict::NotIsolated => 2,
            EdgeVerdict::Unknown => 3,
            EdgeVerdict::Allowed => 4,
        };
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }
}

/// The verdict on one flow: what the flows of reports, the aggregator's API and its stored flows say.
/// Serialized in kebab-case: `allowed`, `denied`, `mixed` (a Service's backends disagree), `unknown` (not
/// judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowVerdict {
    /// The policies in force allow it (in both directions).
    Allowed,
    /// The policies in force deny it (in at least one direction).
    Denied,
    /// A Service's backends would get different verdicts.
    Mixed,
    /// Not judged.
    Unknown,
}

impl FlowVerdict {
    /// The name in JSON and in API filters.
    pub fn name(self) -> &'static str {
        match self {
            FlowVerdict::Allowed => "allowed",
            FlowVerdict::Denied => "denied",
            FlowVerdict::Mixed => "mixed",
            FlowVerdict::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FlowVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::{EdgeVerdict, FlowVerdict};

    #[test]
    fn flow_verdict_names_are_the_json_spelling() {
        for v in [
            FlowVerdict::Allowed,
            FlowVerdict::Denied,
            FlowVerdict::Mixed,
            FlowVerdict::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(v).ok(),
                Some(serde_json::Value::from(v.name()))
            );
            assert_eq!(v.to_string(), v.name());
        }
    }

    #[test]
    fn names_are_the_json_spelling_and_the_worst_wins() {
        for v in [
            EdgeVerdict::Denied,
            EdgeVerdict::Mixed,
            EdgeVerdict::NotIsolated,
            EdgeVerdict::Allowed,
            EdgeVerdict::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(v).ok(),
                Some(serde_json::Value::from(v.name()))
            );
        }
        assert_eq!(
            EdgeVerdict::Allowed.worst(EdgeVerdict::Unknown),
            EdgeVerdict::Unknown
        );
        assert_eq!(
            EdgeVerdict::NotIsolated.worst(EdgeVerdict::Mixed),
            EdgeVerdict::Mixed
        );
        assert_eq!(
            EdgeVerdict::Denied.worst(EdgeVerdict::Mixed),
            EdgeVerdict::Denied
        );
    }
}

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

#[cfg(test)]
mod tests {
    use super::EdgeVerdict;

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

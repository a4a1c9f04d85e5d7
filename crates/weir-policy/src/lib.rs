//! Exact Kubernetes NetworkPolicy (networking.k8s.io/v1) evaluation, with explanations. No I/O.
//!
//! [`PolicySet::new`] compiles a cluster's policies (applying the API's `policyTypes` defaulting and
//! rejecting what the API server would reject) and precomputes each pod's identity; [`PolicySet::judge`]
//! gives a [`Verdict`] for a connection, memoized in a per-worker [`VerdictCache`]; [`PolicySet::explain`]
//! says which policies isolate each end and which rules allow or fail to; [`PolicySet::reach_matrix`] judges
//! every pair of pods on a probe.
//!
//! The semantics, as the Kubernetes API defines them:
//! - A pod is isolated for ingress (egress) only when a policy selecting it has that policy type; `policyTypes`
//!   defaults to Ingress, plus Egress when the policy has egress rules.
//! - Isolated traffic is allowed when any rule of any selecting policy allows it (a union). Pod-to-pod traffic
//!   needs both the source's egress and the destination's ingress.
//! - In a rule, an empty or missing `from`/`to` matches every peer and an empty or missing `ports` matches every
//!   port. Within one peer, `podSelector` and `namespaceSelector` must both match; separate peers are ORed.
//! - Named ports resolve against the destination pod's container ports and protocol; `endPort` makes a range.
//! - An `ipBlock` matches every address in its range outside its `except` blocks, pod addresses included.
//! - hostNetwork pods are not subject to policy, and selectors never match them: their traffic is their
//!   node's. A pod can always reach itself, and a pod and its own node can always reach each other.

#![deny(missing_docs)]

mod compile;
mod engine;
mod selector;
mod tier;

pub use compile::{
    CompiledPolicy, Direction, NamespaceScope, Peer, PolicyError, PortMatch, PortSpec, Rule,
};
pub use engine::{
    Address, Ambiguity, CacheStats, DecidingTier, Decision, DirectionDetail, Endpoint, Explanation,
    Grounds, PolicySet, ProbePort, ReachMatrix, RuleMiss, RuleRef, TierCheck, TierOutcome,
    TierRuleRef, Verdict, VerdictCache,
};
pub use selector::Selector;
pub use tier::{Effect, TierPeer, TierPolicy, TierRule};
pub use weir_cluster::cnp::{Action, Tier};
pub use weir_model::Cidr;

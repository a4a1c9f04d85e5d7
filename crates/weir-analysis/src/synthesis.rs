//! Policy synthesis end to end: the suggested policies as objects the engine takes, the proof that they allow
//! what was observed (and what else they allow), and what they would deny ([`synthesize`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use weir_cluster::{PodId, PolicyObject};
use weir_model::{FlowRecord, Protocol};
use weir_policy::{PolicyError, PolicySet};

use crate::analyze::{Analyzer, JudgedFlow, Judgement};
use crate::attribute::Party;
use crate::suggest::{Coverage, Selectors, SuggestOptions, Suggestion, coverage, suggest};

/// Why the suggestion could not be checked: the engine could not compile the suggested policies (a bug in the
/// writer, never the input's fault; not retryable).
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The engine could not compile the suggested policies.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The suggested policies as objects the engine (and `kubectl`) take, built as k8s-openapi values.
pub fn policy_objects(suggestion: &Suggestion) -> Vec<PolicyObject> {
    suggestion
        .policies
        .iter()
        .map(|p| PolicyObject {
            policy: crate::suggest_yaml::policy_object(p),
            source: Arc::from("weir suggest"),
        })
        .collect()
}

/// The proof: the suggested policies alone, evaluated by the engine against the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proof {
    /// Observed flows the suggestion must allow.
    pub covered: u64,
    /// Of those, how many the suggested policies allow (all of them, or the suggestion is wrong).
    pub allowed: u64,
    /// The ones denied, as `source -> destination port/proto` (should be empty).
    pub denied: Vec<String>,
    /// Ordered pod pairs and ports the policies allow, among the pods and ports they govern.
    pub allowed_tuples: u64,
    /// Of those, the ones some observed flow used.
    pub observed_tuples: u64,
}

impl Proof {
    /// Allowed but never observed.
    pub fn slack(&self) -> u64 {
        self.allowed_tuples.saturating_sub(self.observed_tuples)
    }
}

/// An observed flow the suggested policies alone would deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WouldDeny {
    /// Its source.
    pub source: Party,
    /// Its destination (the backend for Service traffic).
    pub destination: Party,
    /// The source address.
    pub src: IpAddr,
    /// The destination address (the backend's).
    pub dst: IpAddr,
    /// The port as policy judges it.
    pub port: Option<u16>,
    /// The protocol.
    pub proto: Protocol,
    /// Flows it stands for ([`SuggestOptions::weight_of`]).
    pub flows: u64,
    /// Whether the suggestion had to allow it (a covered flow denied is a wrong suggestion; an uncovered one,
    /// such as a failed attempt or an outside address nobody held, is denied on purpose).
    pub covered: bool,
}

/// What policy synthesis gives: the suggestion, its proof, and every observed flow it would deny.
#[derive(Clone, Debug)]
pub struct Synthesis {
    /// The suggested policies.
    pub suggestion: Suggestion,
    /// The proof that they allow what was observed, and what else they allow.
    pub proof: Proof,
    /// Observed flows the suggested policies alone deny, in the order of the records.
    pub would_deny: Vec<WouldDeny>,
}

/// Policy synthesis, the one place analyze → suggest → prove is spelled out: suggests policies for `flows`
/// (judged against `set`), then re-judges `records` (the records the flows came from) with only the suggested
/// policies in force. A suggested policy the engine cannot take is an error naming it, never dropped.
pub fn synthesize(
    set: &PolicySet,
    flows: &[JudgedFlow],
    records: &[FlowRecord],
    options: &SuggestOptions,
) -> Result<Synthesis, ProofError> {
    let suggestion = suggest(set, flows, options);
    let (proof, would_deny) = check(set, &suggestion, records, options)?;
    Ok(Synthesis {
        suggestion,
        proof,
        would_deny,
    })
}

/// Re-judges `records` with only the suggested policies in force, and measures what else they allow: for every
/// port a rule opens, every ordered pair of pods at least one of which a suggested policy selects.
pub fn prove(
    set: &PolicySet,
    suggestion: &Suggestion,
    records: &[FlowRecord],
    options: &SuggestOptions,
) -> Result<Proof, ProofError> {
    check(set, suggestion, records, options).map(|(proof, _)| proof)
}

fn check(
    set: &PolicySet,
    suggestion: &Suggestion,
    records: &[FlowRecord],
    options: &SuggestOptions,
) -> Result<(Proof, Vec<WouldDeny>), ProofError> {
    let cluster = set.cluster();
    let mut state = cluster.with_policies(policy_objects(suggestion));
    if let Some(baseline) = &suggestion.baseline {
        let mut cluster_policies = cluster.cluster_policies().to_vec();
        cluster_policies.push(baseline.clone());
        state = state.with_cluster_policies(cluster_policies);
    }
    let proven = PolicySet::new(Arc::new(state))?;
    let analysis = Analyzer::new(&proven, &options.cluster_ranges).analyze_sorted(records.to_vec());
    let mut proof = Proof::default();
    let mut would_deny = Vec::new();
    let mut observed: BTreeSet<(PodId, PodId, Protocol, u16)> = BTreeSet::new();
    let mut selectors = Selectors::new(cluster);
    for flow in &analysis.flows {
        let covered = matches!(
            coverage(cluster, flow, options, &mut selectors),
            Coverage::Covered
        );
        let denied =
            matches!(&flow.judgement, Judgement::Judged { verdict, .. } if !verdict.allowed());
        if denied {
            would_deny.push(WouldDeny {
                source: flow.source,
                destination: flow.destination,
                src: flow.record.src,
                dst: flow.destination_ip(),
                port: flow.judged_port(),
                proto: flow.record.proto,
                flows: options.weight_of(&flow.record).flows,
                covered,
            });
        }
        if !covered {
            continue;
        }
        proof.covered += 1;
        let allowed = match &flow.judgement {
            Judgement::Judged { verdict, .. } => verdict.allowed(),
            Judgement::Mixed(_) | Judgement::Unjudged(_) => false,
        };
        if allowed {
            proof.allowed += 1;
        } else {
            proof.denied.push(format!(
                "{} -> {} {}/{}",
                flow.record.src,
                flow.destination_ip(),
                flow.judged_port().unwrap_or(0),
                flow.record.proto
            ));
        }
        if let (Party::Pod(s), Party::Pod(d), Some(port)) =
            (flow.source, flow.destination, flow.judged_port())
        {
            observed.insert((s, d, flow.record.proto, port));
        }
    }

    // Slack: pod pairs on the ports the observed flows used.
    let pods: Vec<PodId> = cluster.running_pods().collect();
    let governed: Vec<bool> = pods
        .iter()
        .map(|&p| {
            let (ingress, egress) = proven.isolating(p);
            !ingress.is_empty() || !egress.is_empty()
        })
        .collect();
    let ports: BTreeSet<(Protocol, u16)> = observed.iter().map(|&(_, _, pr, p)| (pr, p)).collect();
    for &(proto, port) in &ports {
        let matrix = proven.reach_matrix(&pods, &weir_policy::ProbePort::Number(port), proto);
        for (i, &src) in pods.iter().enumerate() {
            for (j, &dst) in pods.iter().enumerate() {
                if !(governed[i] || governed[j]) {
                    continue;
                }
                if matrix.get(i, j) == (true, true) {
                    proof.allowed_tuples += 1;
                    proof.observed_tuples += u64::from(observed.contains(&(src, dst, proto, port)));
                }
            }
        }
    }
    Ok((proof, would_deny))
}

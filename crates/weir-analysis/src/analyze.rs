//! Flow records to judged flows: attribution, Service resolution, DNAT joins and verdicts.

use std::net::IpAddr;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};
use weir_cluster::{ClusterState, PodId, ResolvedBackend, ServiceFrontend, ServiceId};
use weir_model::{Cidr, FlowRecord, Protocol};
use weir_policy::{Grounds, PolicySet, Verdict, VerdictCache};

use crate::attribute::{Attributor, Party};

/// A connection to a Service: which one, the port the client used, and the backend that took it when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceHit {
    /// The Service.
    pub service: ServiceId,
    /// The Service port (on the ClusterIP).
    pub port: u16,
    /// Whether the Service exposes that port and protocol.
    pub served: bool,
    /// The port after DNAT, when every candidate backend receives the connection on the same one.
    pub target_port: Option<u16>,
    /// The backend's address after DNAT, when the capture showed it or only one backend exists.
    pub backend: Option<IpAddr>,
    /// How the client reached the Service: its ClusterIP, a load balancer or external address, a node port.
    pub via: ServiceFrontend,
    /// The source address the backend saw, when the node masqueraded the client (a NodePort or load balancer
    /// connection under `externalTrafficPolicy: Cluster`): the verdict is judged on the real client, but a
    /// CNI may apply the policy to this address instead (the API leaves it undefined).
    pub masqueraded_as: Option<IpAddr>,
}

/// One backend's verdict, when a Service's backends disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendVerdict {
    /// The backend pod, when known.
    pub pod: Option<PodId>,
    /// Its address.
    pub ip: IpAddr,
    /// The port after DNAT.
    pub port: u16,
    /// The verdict on the connection to it.
    pub verdict: Verdict,
    /// Why.
    pub grounds: Arc<Grounds>,
}

/// Why a flow could not be judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unjudged {
    /// The Service has no backend for the port.
    NoBackends,
    /// The Service does not expose the port (or the protocol).
    PortNotServed,
    /// The flow starts at a Service address (a reply seen without its request).
    FromService,
}

/// The verdict on a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// One verdict (for a Service with several backends: every backend gets the same one, and the grounds are
    /// the union of theirs).
    Judged {
        /// The verdict.
        verdict: Verdict,
        /// Policies isolating each end and rules allowing the connection.
        grounds: Arc<Grounds>,
    },
    /// The Service's backends get different verdicts; each is listed.
    Mixed(Vec<BackendVerdict>),
    /// Not judged, and why.
    Unjudged(Unjudged),
}

/// A flow record with its ends attributed and its verdict.
#[derive(Clone, Debug)]
pub struct JudgedFlow {
    /// The record as observed (for a Service flow, the client's view: the destination is the ClusterIP).
    pub record: FlowRecord,
    /// The initiator.
    pub source: Party,
    /// The responder (for a Service flow, the backend when known, else the Service's backends).
    pub destination: Party,
    /// Set when the flow targeted a Service ClusterIP.
    pub service: Option<ServiceHit>,
    /// The verdict.
    pub judgement: Judgement,
}

impl JudgedFlow {
    /// The address the destination was reached at (the backend's, after DNAT, when known).
    pub fn destination_ip(&self) -> IpAddr {
        self.service
            .and_then(|s| s.backend)
            .unwrap_or(self.record.dst)
    }

    /// The port policy judged: the backend port after DNAT for a Service flow, else the destination port.
    pub fn judged_port(&self) -> Option<u16> {
        self.service
            .and_then(|s| s.target_port)
            .or(self.record.dst_port)
    }
}

/// Judged flows, in the order of the records given.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    /// The flows.
    pub flows: Vec<JudgedFlow>,
    /// Post-DNAT records folded into the Service flow they belong to (the connection is counted once).
    pub dnat_joined: u64,
}

/// What [`Analyzer::single`] made of a record.
#[derive(Clone, Debug)]
pub enum Single {
    /// Judged on its own: final.
    Judged(JudgedFlow),
    /// Judged, and final unless a flow to a ClusterIP from the same client address and port turns up: then it
    /// is the post-DNAT view of that connection and is folded into it.
    PostDnat(JudgedFlow),
    /// A flow to a ClusterIP: to be analyzed with the others.
    Held(FlowRecord),
}

/// How far apart a connection's pre- and post-DNAT records may be and still be joined: the two views of one
/// connection are microseconds apart on one node, and a different connection on the same client port cannot
/// start again this soon (TIME_WAIT).
const DNAT_JOIN_SLACK_NS: i64 = 2_000_000_000;

/// Judges flows against a policy set; keeps the verdict cache between calls (the aggregator calls it per batch).
#[derive(Debug)]
pub struct Analyzer<'a> {
    set: &'a PolicySet,
    attributor: Attributor<'a>,
    cache: VerdictCache,
}

impl<'a> Analyzer<'a> {
    /// An analyzer; `cluster_ranges` adds ranges whose ownerless addresses are unknown pods, not external.
    pub fn new(set: &'a PolicySet, cluster_ranges: &[Cidr]) -> Analyzer<'a> {
        Analyzer {
            set,
            attributor: Attributor::new(set.cluster(), cluster_ranges),
            cache: VerdictCache::new(),
        }
    }

    /// An analyzer that starts with the verdicts of an earlier one on the same policy set (the aggregator keeps
    /// them between batches; a cache from another policy set gives wrong verdicts).
    pub fn with_cache(
        set: &'a PolicySet,
        cluster_ranges: &[Cidr],
        cache: VerdictCache,
    ) -> Analyzer<'a> {
        Analyzer {
            cache,
            ..Analyzer::new(set, cluster_ranges)
        }
    }

    /// The verdicts learned, for [`Analyzer::with_cache`].
    pub fn into_cache(self) -> VerdictCache {
        self.cache
    }

    /// Attributes and judges records. Pre- and post-DNAT records of one connection (same client address and
    /// port, the post-DNAT one going to a backend of the Service on its target port, at the same time) become
    /// one flow.
    pub fn analyze(&mut self, records: Vec<FlowRecord>) -> Analysis {
        let mut flows = Vec::with_capacity(records.len());
        let dnat_joined = self.analyze_each(records, |_, flow| flows.push(flow));
        Analysis { flows, dnat_joined }
    }

    /// [`Analyzer::analyze`] on records in any order: they are put in start and tuple order first, the order
    /// the DNAT join and the flow list assume.
    pub fn analyze_sorted(&mut self, mut records: Vec<FlowRecord>) -> Analysis {
        records.sort_by_key(|r| r.sort_key());
        self.analyze(records)
    }

    /// Judges one record on its own when it can be: a flow to a ClusterIP is given back (its backend and
    /// verdict may depend on the post-DNAT record of the same connection, which [`Analyzer::analyze`] joins),
    /// and a flow to an address and port some Service sends traffic to is judged but marked as possibly that
    /// post-DNAT record. `endpoints` comes from [`service_endpoints`].
    pub fn single(&mut self, record: FlowRecord, endpoints: &ServiceEndpoints) -> Single {
        let source = self.attributor.party(record.src, record.start);
        let destination = self.attributor.party(record.dst, record.start);
        if self.frontend(&record, destination).is_some() {
            return Single::Held(record);
        }
        let post_dnat = match destination {
            Party::Service(_) => return Single::Held(record),
            Party::Pod(_) | Party::Unknown => {
                let endpoint = record.dst_port.map(|p| (record.proto, record.dst, p));
                // From a node to a backend of a Service reached by node port or load balancer: possibly the
                // masqueraded view of such a connection, which only the join can tell.
                if matches!(source, Party::Node(_))
                    && endpoint.is_some_and(|e| endpoints.exposed.contains(&e))
                {
                    return Single::Held(record);
                }
                record.src_port.is_some() && endpoint.is_some_and(|e| endpoints.all.contains(&e))
            }
            _ => false,
        };
        let judgement = self.judge(&record, source, destination, None, &[]);
        let flow = JudgedFlow {
            record,
            source,
            destination,
            service: None,
            judgement,
        };
        if post_dnat {
            Single::PostDnat(flow)
        } else {
            Single::Judged(flow)
        }
    }

    /// [`Analyzer::analyze`], handing each judged flow over with the index of its record; returns how many
    /// records were folded into another.
    pub(crate) fn analyze_each(
        &mut self,
        records: Vec<FlowRecord>,
        mut each: impl FnMut(usize, JudgedFlow),
    ) -> u64 {
        let mut ends: Vec<(Party, Party, Option<ServiceHit>, Vec<ResolvedBackend>)> =
            Vec::with_capacity(records.len());
        let mut any_service = false;
        for record in &records {
            let source = self.attributor.party(record.src, record.start);
            let destination = self.attributor.party(record.dst, record.start);
            let (destination, hit, backends) = match destination {
                Party::Service(service) => {
                    any_service = true;
                    self.resolve(service, record, record.dst_port, ServiceFrontend::ClusterIp)
                }
                other => match self.frontend(record, other) {
                    Some((service, port, via)) => {
                        any_service = true;
                        self.resolve(service, record, Some(port), via)
                    }
                    None => (other, None, Vec::new()),
                },
            };
            ends.push((source, destination, hit, backends));
        }
        let joined = if any_service {
            self.join_dnat(&records, &mut ends)
        } else {
            vec![false; records.len()]
        };
        let mut dnat_joined = 0;
        for (index, ((record, (source, destination, service, backends)), joined)) in
            records.into_iter().zip(ends).zip(joined).enumerate()
        {
            if joined {
                dnat_joined += 1;
                continue;
            }
            let judgement = self.judge(&record, source, destination, service, &backends);
            each(
                index,
                JudgedFlow {
                    record,
                    source,
                    destination,
                    service,
                    judgement,
                },
            );
        }
        dnat_joined
    }

    /// The Service a flow reaches without a ClusterIP (a load balancer or external address, a node port),
    /// the Service port, and how; none for a destination that is a pod or a ClusterIP.
    fn frontend(
        &self,
        record: &FlowRecord,
        destination: Party,
    ) -> Option<(ServiceId, u16, ServiceFrontend)> {
        if !matches!(
            destination,
            Party::Node(_) | Party::External | Party::Unknown
        ) {
            return None;
        }
        let cluster = self.attributor.cluster();
        if !cluster.has_service_frontends() || record.proto.is_icmp() {
            return None;
        }
        cluster.service_frontend(record.proto, record.dst, record.dst_port?)
    }

    /// A flow to a Service (`port` is the Service port the address and port it was sent to stand for): the
    /// Service port, and its backends (ready ones; all of them when none is ready, as kube-proxy then falls
    /// back to terminating endpoints).
    fn resolve(
        &mut self,
        service: ServiceId,
        record: &FlowRecord,
        port: Option<u16>,
        via: ServiceFrontend,
    ) -> (Party, Option<ServiceHit>, Vec<ResolvedBackend>) {
        let cluster = self.attributor.cluster();
        let resolved = port.and_then(|port| cluster.resolve_service(service, port, record.proto));
        let Some((service_port, mut backends)) = resolved else {
            return (
                Party::Service(service),
                Some(ServiceHit {
                    service,
                    port: port.unwrap_or(0),
                    served: false,
                    target_port: None,
                    backend: None,
                    via,
                    masqueraded_as: None,
                }),
                Vec::new(),
            );
        };
        if backends.iter().any(|b| b.ready) {
            backends.retain(|b| b.ready);
        }
        let mut hit = ServiceHit {
            service,
            port: service_port.port,
            served: true,
            target_port: backends
                .first()
                .map(|b| b.port)
                .filter(|&p| backends.iter().all(|b| b.port == p)),
            backend: None,
            via,
            masqueraded_as: None,
        };
        let party = match backends.as_slice() {
            [] => Party::Service(service),
            [only] => {
                hit.backend = Some(only.ip);
                self.backend_party(only, record)
            }
            _ => Party::Backends(service),
        };
        (party, Some(hit), backends)
    }

    /// The party behind a backend: its pod when the EndpointSlice names it, else the address's owner.
    fn backend_party(&mut self, backend: &ResolvedBackend, record: &FlowRecord) -> Party {
        match backend.pod {
            Some(pod) => Party::Pod(pod),
            None => self.attributor.party(backend.ip, record.start),
        }
    }

    /// Finds, for each Service flow, the post-DNAT record of the same connection; returns which records were
    /// folded into another. The post-DNAT record has the client's address and port, goes to a backend of the
    /// Service on its target port, and overlaps in time. A connection through a node port or a load balancer
    /// may also have been masqueraded by the node (`externalTrafficPolicy: Cluster`): then the post-DNAT record
    /// comes from a node address, and it is the one that kept the client's port, as Linux's NAT keeps it
    /// unless another connection holds it.
    #[allow(clippy::type_complexity)]
    fn join_dnat(
        &mut self,
        records: &[FlowRecord],
        ends: &mut [(Party, Party, Option<ServiceHit>, Vec<ResolvedBackend>)],
    ) -> Vec<bool> {
        let mut by_client: HashMap<(Protocol, IpAddr, u16), Vec<usize>> = HashMap::new();
        let mut masqueraded: HashMap<(Protocol, u16), Vec<usize>> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            let Some(port) = record.src_port else {
                continue;
            };
            match &ends[i] {
                (Party::Node(_), Party::Pod(_) | Party::Unknown, None, _) => {
                    masqueraded.entry((record.proto, port)).or_default().push(i);
                    by_client
                        .entry((record.proto, record.src, port))
                        .or_default()
                        .push(i);
                }
                (_, Party::Pod(_) | Party::Unknown, None, _) => {
                    by_client
                        .entry((record.proto, record.src, port))
                        .or_default()
                        .push(i);
                }
                _ => {}
            }
        }
        let mut joined = vec![false; records.len()];
        for i in 0..records.len() {
            let record = &records[i];
            let (Some(port), Some(hit)) = (record.src_port, ends[i].2) else {
                continue;
            };
            let find = |candidates: Option<&Vec<usize>>, joined: &[bool]| {
                candidates?.iter().copied().find_map(|j| {
                    let other = &records[j];
                    let overlaps = other.start.0 <= record.end.0 + DNAT_JOIN_SLACK_NS
                        && record.start.0 <= other.end.0 + DNAT_JOIN_SLACK_NS;
                    let backend = ends[i]
                        .3
                        .iter()
                        .find(|b| b.ip == other.dst && Some(b.port) == other.dst_port)?;
                    (!joined[j] && j != i && overlaps).then_some((j, backend.clone()))
                })
            };
            let mut found = find(by_client.get(&(record.proto, record.src, port)), &joined);
            let mut seen_from = None;
            if found.is_none() && hit.via != ServiceFrontend::ClusterIp {
                found = find(masqueraded.get(&(record.proto, port)), &joined);
                seen_from = found.as_ref().map(|(j, _)| records[*j].src);
            }
            if let Some((j, backend)) = found {
                joined[j] = true;
                let destination = match backend.pod {
                    Some(pod) => Party::Pod(pod),
                    None => ends[j].1,
                };
                let entry = &mut ends[i];
                entry.1 = destination;
                if let Some(hit) = entry.2.as_mut() {
                    hit.backend = Some(backend.ip);
                    hit.target_port = Some(backend.port);
                    hit.masqueraded_as = seen_from;
                }
                entry.3 = vec![backend];
            }
        }
        joined
    }

    fn judge(
        &mut self,
        record: &FlowRecord,
        source: Party,
        destination: Party,
        service: Option<ServiceHit>,
        backends: &[ResolvedBackend],
    ) -> Judgement {
        if matches!(source, Party::Service(_) | Party::Backends(_)) {
            return Judgement::Unjudged(Unjudged::FromService);
        }
        let src = self.attributor.address(source, record.src);
        let port = |p: u16| (!record.proto.is_icmp()).then_some(p);
        match (destination, service) {
            (Party::Service(_), hit) => Judgement::Unjudged(if hit.is_some_and(|h| h.served) {
                Unjudged::NoBackends
            } else {
                Unjudged::PortNotServed
            }),
            (Party::Backends(_), _) => {
                let mut verdicts = Vec::with_capacity(backends.len());
                for b in backends {
                    let party = self.backend_party(b, record);
                    let dst = self.attributor.address(party, b.ip);
                    let (verdict, grounds) = self.set.judge_with_grounds(
                        &mut self.cache,
                        &src,
                        &dst,
                        port(b.port),
                        record.proto,
                    );
                    verdicts.push(BackendVerdict {
                        pod: b.pod,
                        ip: b.ip,
                        port: b.port,
                        verdict,
                        grounds,
                    });
                }
                agree(verdicts)
            }
            (party, hit) => {
                let ip = hit.and_then(|h| h.backend).unwrap_or(record.dst);
                let dst_port = hit.and_then(|h| h.target_port).or(record.dst_port);
                let dst = self.attributor.address(party, ip);
                let (verdict, grounds) = self.set.judge_with_grounds(
                    &mut self.cache,
                    &src,
                    &dst,
                    dst_port.and_then(port),
                    record.proto,
                );
                Judgement::Judged { verdict, grounds }
            }
        }
    }
}

/// Where post-DNAT records can go: every (protocol, address, port) a Service may send a connection to, and
/// among them those of Services reached through a node port, a load balancer or an external address (whose
/// connections the node may masquerade).
#[derive(Clone, Debug, Default)]
pub struct ServiceEndpoints {
    all: HashSet<(Protocol, IpAddr, u16)>,
    exposed: HashSet<(Protocol, IpAddr, u16)>,
}

/// The [`ServiceEndpoints`] of a cluster, for [`Analyzer::single`].
pub fn service_endpoints(cluster: &ClusterState) -> ServiceEndpoints {
    let mut endpoints = ServiceEndpoints::default();
    for (index, service) in cluster.services().iter().enumerate() {
        let exposed = !service.load_balancer_ips.is_empty() || !service.external_ips.is_empty();
        if service.cluster_ips.is_empty() && !exposed {
            continue;
        }
        for port in &service.ports {
            let id = ServiceId(index as u32);
            if let Some((_, backends)) = cluster.resolve_service(id, port.port, port.protocol) {
                let ends = backends.iter().map(|b| (port.protocol, b.ip, b.port));
                if exposed || port.node_port.is_some() {
                    endpoints.exposed.extend(ends.clone());
                }
                endpoints.all.extend(ends);
            }
        }
    }
    endpoints
}

/// One verdict when every backend's egress and ingress sides agree (grounds merged), else the list.
fn agree(verdicts: Vec<BackendVerdict>) -> Judgement {
    let sides = |v: &Verdict| (v.egress.allowed(), v.ingress.allowed());
    let Some(first) = verdicts.first() else {
        return Judgement::Unjudged(Unjudged::NoBackends);
    };
    if verdicts
        .iter()
        .any(|b| sides(&b.verdict) != sides(&first.verdict))
    {
        return Judgement::Mixed(verdicts);
    }
    let verdict = first.verdict;
    if verdicts
        .iter()
        .all(|b| Arc::ptr_eq(&b.grounds, &first.grounds))
    {
        return Judgement::Judged {
            verdict,
            grounds: Arc::clone(&first.grounds),
        };
    }
    let mut merged = Grounds::default();
    for b in &verdicts {
        union(
            &mut merged.egress_isolating,
            b.grounds.egress_isolating.iter().copied(),
        );
        union(
            &mut merged.egress_allowing,
            b.grounds.egress_allowing.iter().copied(),
        );
        union(
            &mut merged.ingress_isolating,
            b.grounds.ingress_isolating.iter().copied(),
        );
        union(
            &mut merged.ingress_allowing,
            b.grounds.ingress_allowing.iter().copied(),
        );
    }
    Judgement::Judged {
        verdict,
        grounds: Arc::new(merged),
    }
}

/// Appends the items `into` lacks, keeping first-seen order (lists here are a few entries long).
pub(crate) fn union<T: PartialEq>(into: &mut Vec<T>, from: impl IntoIterator<Item = T>) {
    for item in from {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

//! Analysis while the records arrive: flows are judged and counted as they finish, beside the reading of the
//! capture, and a report needs no flow kept.

use std::net::IpAddr;

use foldhash::{HashSet, HashSetExt};
use weir_model::{Cidr, FlowRecord, Protocol};
use weir_policy::PolicySet;

use crate::analyze::{Analysis, Analyzer, JudgedFlow, ServiceEndpoints, Single, service_endpoints};
use crate::report::{Report, ReportBuilder};

/// A connection's client end: what its pre- and post-DNAT records share.
type ClientKey = (Protocol, IpAddr, u16);

fn client_key(record: &FlowRecord) -> Option<ClientKey> {
    Some((record.proto, record.src, record.src_port?))
}

/// Judges records as they come and builds the report, with the same result as [`Analyzer::analyze`] and
/// [`Report::new`] on all the records together, whatever order they arrive in.
///
/// The one thing that needs more than one record is the DNAT join: a flow to a ClusterIP and the post-DNAT
/// flow of the same connection (same client address and port, to a Service endpoint) become one. So:
/// - flows to a ClusterIP wait for [`AnalysisStream::finish`];
/// - flows to a Service endpoint from a client address and port a waiting ClusterIP flow has wait too;
/// - other flows to a Service endpoint are judged and counted at once, on a tentative report of their own,
///   and kept. If a ClusterIP flow from the same client turns up later, that report is rebuilt at the end
///   without the flows that join; otherwise it is merged in as it is. Within one call to
///   [`AnalysisStream::push_batch`] ClusterIP flows go first, so the two views of a connection that finish
///   together never need the rebuild;
/// - everything else is final at once.
pub struct AnalysisStream<'a> {
    analyzer: Analyzer<'a>,
    report: ReportBuilder<'a>,
    endpoints: ServiceEndpoints,
    /// Flows to a ClusterIP, and flows that may be their post-DNAT view, with their arrival numbers.
    held: Vec<(u64, FlowRecord)>,
    /// Client ends of the waiting ClusterIP flows.
    held_clients: HashSet<ClientKey>,
    /// Flows to Service endpoints counted tentatively, and the report they were counted on.
    tentative: Vec<(u64, JudgedFlow)>,
    tentative_report: ReportBuilder<'a>,
    tentative_clients: HashSet<ClientKey>,
    /// A ClusterIP flow arrived after a tentative flow from the same client.
    rebuild: bool,
    /// Judged flows with their arrival number, when the caller wants them.
    kept: Option<Vec<(u64, JudgedFlow)>>,
    arrived: u64,
    /// The report keeps the edge book ([`AnalysisStream::with_edge_book`]).
    edge_book: bool,
}

impl<'a> AnalysisStream<'a> {
    /// A stream; `keep_flows` keeps every judged flow for [`Analysis::flows`] (the report does not need them).
    pub fn new(
        set: &'a PolicySet,
        cluster_ranges: &[Cidr],
        keep_flows: bool,
    ) -> AnalysisStream<'a> {
        AnalysisStream {
            analyzer: Analyzer::new(set, cluster_ranges),
            report: ReportBuilder::new(set),
            endpoints: service_endpoints(set.cluster()),
            held: Vec::new(),
            held_clients: HashSet::new(),
            tentative: Vec::new(),
            tentative_report: ReportBuilder::new(set),
            tentative_clients: HashSet::new(),
            rebuild: false,
            kept: keep_flows.then(Vec::new),
            arrived: 0,
            edge_book: false,
        }
    }

    /// The same stream, whose report also keeps the edge book ([`ReportBuilder::with_edge_book`]).
    pub fn with_edge_book(mut self) -> AnalysisStream<'a> {
        let set = self.report.policy_set();
        self.edge_book = true;
        self.report = ReportBuilder::with_edge_book(set);
        self.tentative_report = ReportBuilder::with_edge_book(set);
        self
    }

    fn builder(&self, set: &'a PolicySet) -> ReportBuilder<'a> {
        if self.edge_book {
            ReportBuilder::with_edge_book(set)
        } else {
            ReportBuilder::new(set)
        }
    }

    /// Adds records that finished together (a flow table's sweep), ClusterIP flows first.
    pub fn push_batch(&mut self, records: Vec<FlowRecord>) {
        // Each record is attributed once; ClusterIP flows are taken in before the others are placed.
        let mut rest = Vec::with_capacity(records.len());
        for record in records {
            match self.analyzer.single(record, &self.endpoints) {
                held @ Single::Held(_) => self.accept(held),
                other => rest.push(other),
            }
        }
        rest.into_iter().for_each(|single| self.accept(single));
    }

    /// Adds one record.
    pub fn push(&mut self, record: FlowRecord) {
        let single = self.analyzer.single(record, &self.endpoints);
        self.accept(single);
    }

    fn accept(&mut self, single: Single) {
        let arrival = self.arrived;
        self.arrived += 1;
        match single {
            Single::Judged(flow) => {
                self.report.add(&flow);
                if let Some(kept) = &mut self.kept {
                    kept.push((arrival, flow));
                }
            }
            Single::Held(record) => {
                if let Some(client) = client_key(&record) {
                    self.rebuild |= self.tentative_clients.contains(&client);
                    self.held_clients.insert(client);
                }
                self.held.push((arrival, record));
            }
            Single::PostDnat(flow) => {
                let client = client_key(&flow.record);
                if client.is_some_and(|c| self.held_clients.contains(&c)) {
                    self.held.push((arrival, flow.record));
                } else {
                    self.tentative_report.add(&flow);
                    self.tentative_clients.extend(client);
                    self.tentative.push((arrival, flow));
                }
            }
        }
    }

    /// Records waiting for [`AnalysisStream::finish`].
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Joins and judges the waiting records; returns the analysis of everything pushed so far (its flows
    /// ordered by start, then tuple, then arrival; empty unless kept) and the report. The stream then starts
    /// over, keeping its verdict cache.
    pub fn finish(&mut self) -> (Analysis, Report) {
        let (analysis, report) = self.finish_shard();
        (analysis, report.finish())
    }

    /// As [`AnalysisStream::finish`], with the report not yet finished: the streams of several shards, each
    /// given every record of the connections it owns (both views of a DNAT-ed connection share their client
    /// end: [`shard_of`]), merge into the report of one ([`ReportBuilder::merge`]) and their flows, sorted by
    /// start and tuple, into its analysis ([`Analysis::merge`]).
    pub fn finish_shard(&mut self) -> (Analysis, ReportBuilder<'a>) {
        let set = self.report.policy_set();
        let fresh = self.builder(set);
        let mut report = std::mem::replace(&mut self.report, fresh);
        let fresh = self.builder(set);
        let mut tentative_report = std::mem::replace(&mut self.tentative_report, fresh);
        let mut held = std::mem::take(&mut self.held);
        let held_clients = std::mem::take(&mut self.held_clients);
        let mut tentative = std::mem::take(&mut self.tentative);
        self.tentative_clients.clear();
        let mut kept = self.kept.as_mut().map(std::mem::take);

        if std::mem::take(&mut self.rebuild) {
            // Flows from the client ends of waiting ClusterIP flows go to the join; the rest are counted anew.
            let (joinable, alone): (Vec<_>, Vec<_>) = tentative.into_iter().partition(|(_, f)| {
                client_key(&f.record).is_some_and(|c| held_clients.contains(&c))
            });
            held.extend(joinable.into_iter().map(|(arrival, f)| (arrival, f.record)));
            tentative_report = self.builder(set);
            alone.iter().for_each(|(_, f)| tentative_report.add(f));
            tentative = alone;
        }
        // Merging costs what the smaller side holds.
        if tentative_report.flows() > report.flows() {
            std::mem::swap(&mut report, &mut tentative_report);
        }
        report.merge(tentative_report);
        if let Some(kept) = &mut kept {
            kept.append(&mut tentative);
        }

        // The order `Analyzer::analyze` sees records in decides which of several candidates a join takes.
        held.sort_by(|(a_arrival, a), (b_arrival, b)| {
            a.sort_key()
                .cmp(&b.sort_key())
                .then(a_arrival.cmp(b_arrival))
        });
        let (arrivals, records): (Vec<u64>, Vec<FlowRecord>) = held.into_iter().unzip();
        let joined = self.analyzer.analyze_each(records, |index, flow| {
            report.add(&flow);
            if let Some(kept) = &mut kept {
                kept.push((arrivals[index], flow));
            }
        });
        report.add_dnat_joined(joined);
        let mut flows = kept.unwrap_or_default();
        flows.sort_by(|(a_arrival, a), (b_arrival, b)| {
            a.record
                .sort_key()
                .cmp(&b.record.sort_key())
                .then(a_arrival.cmp(b_arrival))
        });
        let analysis = Analysis {
            flows: flows.into_iter().map(|(_, flow)| flow).collect(),
            dnat_joined: joined,
        };
        (analysis, report)
    }
}

/// Which of `shards` analysis shards owns a record: by its client end (protocol, source address and port), which
/// the pre- and post-DNAT views of a connection share, so the DNAT join finds both on one shard. A record without
/// ports goes by protocol and both addresses. The same record goes to the same shard in every run.
pub fn shard_of(record: &FlowRecord, shards: usize) -> usize {
    use std::hash::BuildHasher as _;
    let shards = shards.max(1) as u64;
    if shards == 1 {
        return 0;
    }
    let hasher = foldhash::fast::FixedState::with_seed(0x7765_6972);
    let hash = match client_key(record) {
        Some(client) => hasher.hash_one(client),
        None => hasher.hash_one((record.proto, record.src, record.dst)),
    };
    (((hash >> 32) * shards) >> 32) as usize
}

impl Analysis {
    /// Adds the analysis of another shard: flows in the order one analysis of all records gives (start, then
    /// tuple; shards are taken in order for flows alike in both).
    pub fn merge(&mut self, other: Analysis) {
        self.flows.extend(other.flows);
        self.flows.sort_by_key(|f| f.record.sort_key());
        self.dnat_joined += other.dnat_joined;
    }
}

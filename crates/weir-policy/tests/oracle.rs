//! Property tests: the engine (compiled policies, interned identities, memoized verdicts, dense matrices)
//! against a naive oracle written straight from the API reference over the raw k8s-openapi objects, on random
//! clusters and policies that go through the JSON snapshot loader.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use serde_json::{Value, json};
use weir_cluster::{ClusterState, Pod, SnapshotLoader};
use weir_model::Protocol;
use weir_policy::{PolicySet, ProbePort, VerdictCache};

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 3] = ["v0", "v1", "v2"];
const PORT_NAMES: [&str; 2] = ["web", "dns"];

#[derive(Clone, Debug)]
struct PodSpec {
    ns: usize,
    labels: BTreeMap<String, String>,
    node: usize,
    host_network: bool,
    ports: Vec<(usize, u16, bool)>, // (name index, number, udp)
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(KEYS.to_vec()).prop_map(String::from),
        prop::sample::select(VALUES.to_vec()).prop_map(String::from),
        0..3,
    )
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        0..NAMESPACES.len(),
        labels(),
        0..2usize,
        prop::bool::weighted(0.1),
        prop::collection::vec((0..2usize, 79..83u16, any::<bool>()), 0..3),
    )
        .prop_map(|(ns, labels, node, host_network, ports)| PodSpec {
            ns,
            labels,
            node,
            host_network,
            ports,
        })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let requirement = (
        prop::sample::select(KEYS.to_vec()),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
        prop::collection::vec(prop::sample::select(VALUES.to_vec()), 1..3),
    )
        .prop_map(|(key, op, values)| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: matches!(op, "In" | "NotIn")
                .then(|| values.iter().map(|v| v.to_string()).collect()),
        });
    (
        prop::option::of(prop::collection::btree_map(
            prop::sample::select(KEYS.to_vec()).prop_map(String::from),
            prop::sample::select(VALUES.to_vec()).prop_map(String::from),
            0..2,
        )),
        prop::option::of(prop::collection::vec(requirement, 0..2)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        (prop::option::of(selector()), prop::option::of(selector()))
            .prop_filter("a peer needs a selector", |(p, n)| p.is_some()
                || n.is_some())
            .prop_map(|(pod_selector, namespace_selector)| NetworkPolicyPeer {
                pod_selector,
                namespace_selector,
                ip_block: None,
            }),
        (0..4usize, any::<bool>()).prop_map(|(which, with_except)| {
            let (cidr, except) = [
                ("10.0.0.0/8", "10.1.0.0/16"),
                ("10.0.0.0/16", "10.0.1.0/24"),
                ("192.168.0.0/24", "192.168.0.1/32"),
                ("0.0.0.0/0", "10.0.0.0/8"),
            ][which];
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.into(),
                    except: with_except.then(|| vec![except.into()]),
                }),
                ..Default::default()
            }
        }),
    ]
}

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol =
        prop::option::of(prop::sample::select(vec!["TCP", "UDP"]).prop_map(String::from));
    prop_oneof![
        protocol.clone().prop_map(|protocol| NetworkPolicyPort {
            protocol,
            ..Default::default()
        }),
        (protocol.clone(), 79..83i32, prop::option::of(0..3i32)).prop_map(|(protocol, p, span)| {
            NetworkPolicyPort {
                protocol,
                port: Some(IntOrString::Int(p)),
                end_port: span.map(|s| p + s),
            }
        }),
        (protocol, prop::sample::select(PORT_NAMES.to_vec())).prop_map(|(protocol, name)| {
            NetworkPolicyPort {
                protocol,
                port: Some(IntOrString::String(name.into())),
                end_port: None,
            }
        }),
    ]
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        0..NAMESPACES.len(),
        prop::option::of(selector()),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::sample::select(vec![
            vec![],
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ])),
    )
        .prop_map(|(ns, pod_selector, ingress, egress, types)| NetworkPolicy {
            metadata: ObjectMeta {
                namespace: Some(NAMESPACES[ns].into()),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector,
                ingress: ingress.map(|rules| {
                    rules
                        .into_iter()
                        .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                        .collect()
                }),
                egress: egress.map(|rules| {
                    rules
                        .into_iter()
                        .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                        .collect()
                }),
                policy_types: types.map(|t| t.into_iter().map(String::from).collect()),
            }),
        })
}

fn node_ip(node: usize) -> String {
    format!("192.168.0.{}", node + 1)
}

/// Builds a `kubectl get -o json` style List and loads it.
fn load(pods: &[PodSpec], policies: &[NetworkPolicy]) -> Arc<ClusterState> {
    load_with(pods, policies, &[])
}

/// The same, with more objects (cluster-wide policies) in the List.
fn load_with(pods: &[PodSpec], policies: &[NetworkPolicy], extra: &[Value]) -> Arc<ClusterState> {
    let mut items = Vec::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "app": VALUES[i]}}}));
    }
    for node in 0..2 {
        items.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{node}"), "labels": {"zone": format!("z{node}")}},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(node)}]}}));
    }
    for (i, pod) in pods.iter().enumerate() {
        let ip = if pod.host_network {
            node_ip(pod.node)
        } else {
            format!("10.0.{}.{}", i / 200, i % 200 + 1)
        };
        let ports: Vec<_> = pod
            .ports
            .iter()
            .map(|&(name, number, udp)| {
                json!({"name": PORT_NAMES[name],
                       "containerPort": number, "protocol": if udp {"UDP"} else {"TCP"}})
            })
            .collect();
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[pod.ns], "labels": pod.labels},
            "spec": {"nodeName": format!("node-{}", pod.node), "hostNetwork": pod.host_network,
                     "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}));
    }
    for (i, policy) in policies.iter().enumerate() {
        let mut value = serde_json::to_value(policy).unwrap();
        value["metadata"]["name"] = json!(format!("np{i}"));
        items.push(value);
    }
    items.extend(extra.iter().cloned());
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut loader = SnapshotLoader::default();
    loader
        .add_bytes(Path::new("random.json"), list.to_string().as_bytes())
        .unwrap();
    Arc::new(loader.finish().0)
}

// ---- The oracle: the API reference, read literally, over raw objects. ----

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.clone().unwrap_or_default();
        let value = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => unreachable!(),
        }
    });
    labels_ok && expressions_ok
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let (IpAddr::V4(net), IpAddr::V4(ip)) = (net.parse::<IpAddr>().unwrap(), ip) else {
        return false;
    };
    let bits: u32 = bits.parse().unwrap();
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

struct End<'a> {
    pod: Option<&'a Pod>,
    ip: IpAddr,
}

impl End<'_> {
    fn is_subject(&self) -> bool {
        self.pod.is_some_and(|p| !p.host_network)
    }
}

fn types(policy: &NetworkPolicy) -> (bool, bool) {
    let spec = policy.spec.as_ref().unwrap();
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

fn selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    policy.metadata.namespace.as_deref() == Some(&pod.namespace)
        && policy
            .spec
            .as_ref()
            .unwrap()
            .pod_selector
            .as_ref()
            .is_none_or(|s| selector_matches(s, &pod.labels))
}

fn peer_matches(
    cluster: &ClusterState,
    policy_ns: &str,
    peer: &NetworkPolicyPeer,
    other: &End,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return cidr_contains(&block.cidr, other.ip)
            && !block
                .except
                .iter()
                .flatten()
                .any(|e| cidr_contains(e, other.ip));
    }
    let Some(pod) = other.pod.filter(|_| other.is_subject()) else {
        return false;
    };
    let ns_ok = match &peer.namespace_selector {
        None => pod.namespace == policy_ns,
        Some(s) => selector_matches(s, &cluster.namespace(&pod.namespace).unwrap().labels),
    };
    ns_ok
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| selector_matches(s, &pod.labels))
}

fn ports_match(
    ports: &Option<Vec<NetworkPolicyPort>>,
    dst: &End,
    port: Option<u16>,
    protocol: &str,
) -> bool {
    let Some(ports) = ports.as_ref().filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == protocol
            && match (&p.port, port) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(IntOrString::Int(n)), Some(port)) => {
                    (*n..=p.end_port.unwrap_or(*n)).contains(&i32::from(port))
                }
                (Some(IntOrString::String(name)), Some(port)) => {
                    dst.pod.filter(|_| dst.is_subject()).is_some_and(|d| {
                        d.ports.iter().any(|c| {
                            c.name.as_deref() == Some(name)
                                && c.port == port
                                && c.protocol.name() == Some(protocol)
                        })
                    })
                }
            }
    })
}

fn oracle(
    cluster: &ClusterState,
    src: &End,
    dst: &End,
    port: Option<u16>,
    protocol: &str,
) -> (bool, bool) {
    let policies: Vec<&NetworkPolicy> = cluster.policies().iter().map(|p| &p.policy).collect();
    let same_pod = src.is_subject() && dst.is_subject() && src.ip == dst.ip;
    let node_of = |e: &End| e.pod.and_then(|p| p.node_name.clone());
    let src_node_is_dst_node =
        !src.is_subject() && src.pod.is_some() && node_of(src) == node_of(dst)
            || cluster
                .nodes()
                .iter()
                .any(|n| n.has_address(src.ip) && Some(n.name.clone()) == node_of(dst));
    let dst_node_is_src_node = cluster
        .nodes()
        .iter()
        .any(|n| n.has_address(dst.ip) && Some(n.name.clone()) == node_of(src));
    let egress = match src.pod.filter(|_| src.is_subject()) {
        None => true,
        Some(pod) => {
            let isolating: Vec<_> = policies
                .iter()
                .filter(|p| selects(p, pod) && types(p).1)
                .collect();
            isolating.is_empty()
                || same_pod
                || dst_node_is_src_node
                || isolating.iter().any(|p| {
                    p.spec
                        .as_ref()
                        .unwrap()
                        .egress
                        .iter()
                        .flatten()
                        .any(|rule| {
                            let ns = p.metadata.namespace.as_deref().unwrap();
                            let peers_ok = match &rule.to {
                                None => true,
                                Some(v) if v.is_empty() => true,
                                Some(v) => {
                                    v.iter().any(|peer| peer_matches(cluster, ns, peer, dst))
                                }
                            };
                            peers_ok && ports_match(&rule.ports, dst, port, protocol)
                        })
                })
        }
    };
    let ingress = match dst.pod.filter(|_| dst.is_subject()) {
        None => true,
        Some(pod) => {
            let isolating: Vec<_> = policies
                .iter()
                .filter(|p| selects(p, pod) && types(p).0)
                .collect();
            isolating.is_empty()
                || same_pod
                || src_node_is_dst_node
                || isolating.iter().any(|p| {
                    p.spec
                        .as_ref()
                        .unwrap()
                        .ingress
                        .iter()
                        .flatten()
                        .any(|rule| {
                            let ns = p.metadata.namespace.as_deref().unwrap();
                            let peers_ok = match &rule.from {
                                None => true,
                                Some(v) if v.is_empty() => true,
                                Some(v) => {
                                    v.iter().any(|peer| peer_matches(cluster, ns, peer, src))
                                }
                            };
                            peers_ok && ports_match(&rule.ports, dst, port, protocol)
                        })
                })
        }
    };
    (egress, ingress)
}

fn ends(cluster: &ClusterState) -> Vec<End<'_>> {
    let mut ends: Vec<End> = cluster
        .pods()
        .iter()
        .map(|p| End {
            pod: Some(p),
            ip: p.ips[0],
        })
        .collect();
    for ip in [
        "10.1.2.3",
        "10.0.1.9",
        "8.8.8.8",
        "192.168.0.1",
        "192.168.0.2",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        if !ends.iter().any(|e| e.ip == ip) {
            ends.push(End { pod: None, ip });
        }
    }
    ends
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_oracle(
        pods in prop::collection::vec(pod_spec(), 1..8),
        policies in prop::collection::vec(policy(), 0..5),
        port in prop::option::of(79..84u16),
        udp in any::<bool>(),
    ) {
        let cluster = load(&pods, &policies);
        let set = PolicySet::new(cluster.clone()).unwrap();
        let protocol = if udp { "UDP" } else { "TCP" };
        let proto = if udp { Protocol::UDP } else { Protocol::TCP };
        let mut cache = VerdictCache::new();
        let ends = ends(&cluster);
        for src in &ends {
            for dst in &ends {
                let expected = oracle(&cluster, src, dst, port, protocol);
                // Twice: the second answer comes from the cache.
                for _ in 0..2 {
                    let v = set.judge(&mut cache, src.ip, dst.ip, port, proto);
                    prop_assert_eq!((v.egress.allowed(), v.ingress.allowed()), expected,
                        "{} -> {} port {:?}/{}: {:?}", src.ip, dst.ip, port, protocol, v);
                }
                // The grounds agree with the verdict and with the explanation: every allowing rule, no other.
                let (a, b) = (set.address_of_ip(src.ip), set.address_of_ip(dst.ip));
                let (v, grounds) = set.judge_with_grounds(&mut cache, &a, &b, port, proto);
                let e = set.explain(&a, &b, port, proto);
                prop_assert_eq!(v, e.verdict);
                prop_assert_eq!(&grounds.egress_allowing, &e.egress.allowed_by);
                prop_assert_eq!(&grounds.ingress_allowing, &e.ingress.allowed_by);
                prop_assert_eq!(&grounds.egress_isolating, &e.egress.isolating);
                prop_assert_eq!(&grounds.ingress_isolating, &e.ingress.isolating);
                if let weir_policy::Decision::AllowedBy(first) = v.egress {
                    prop_assert_eq!(grounds.egress_allowing.first(), Some(&first));
                }
            }
        }
        // The dense matrix agrees with pairwise judging.
        if let Some(port) = port {
            let ids: Vec<_> = (0..cluster.pods().len() as u32).map(weir_cluster::PodId).collect();
            let matrix = set.reach_matrix(&ids, &ProbePort::Number(port), proto);
            for (i, src) in ends.iter().take(ids.len()).enumerate() {
                for (j, dst) in ends.iter().take(ids.len()).enumerate() {
                    prop_assert_eq!(matrix.get(i, j), oracle(&cluster, src, dst, Some(port), protocol));
                }
            }
        }
    }

    #[test]
    fn adding_an_allow_rule_never_denies_what_was_allowed(
        pods in prop::collection::vec(pod_spec(), 1..7),
        mut policies in prop::collection::vec(policy(), 1..4),
        which in any::<prop::sample::Index>(),
        extra in rule(),
        ingress in any::<bool>(),
        port in 79..84u16,
    ) {
        // With explicit policyTypes, a new rule cannot change which pods are isolated.
        for p in &mut policies {
            let spec = p.spec.as_mut().unwrap();
            spec.policy_types = Some(vec!["Ingress".into(), "Egress".into()]);
        }
        let before = PolicySet::new(load(&pods, &policies)).unwrap();
        let target = which.index(policies.len());
        let spec = policies[target].spec.as_mut().unwrap();
        if ingress {
            spec.ingress.get_or_insert_with(Vec::new).push(NetworkPolicyIngressRule { from: extra.0, ports: extra.1 });
        } else {
            spec.egress.get_or_insert_with(Vec::new).push(NetworkPolicyEgressRule { to: extra.0, ports: extra.1 });
        }
        let after = PolicySet::new(load(&pods, &policies)).unwrap();
        let ids: Vec<_> = (0..pods.len() as u32).map(weir_cluster::PodId).collect();
        let a = before.reach_matrix(&ids, &ProbePort::Number(port), Protocol::TCP);
        let b = after.reach_matrix(&ids, &ProbePort::Number(port), Protocol::TCP);
        for i in 0..ids.len() {
            for j in 0..ids.len() {
                let (e0, i0) = a.get(i, j);
                let (e1, i1) = b.get(i, j);
                prop_assert!((!e0 || e1) && (!i0 || i1), "pair {i}->{j} lost an allow");
            }
        }
    }

    #[test]
    fn no_policies_allow_everything(pods in prop::collection::vec(pod_spec(), 1..8), port in 1..65535u16) {
        let set = PolicySet::new(load(&pods, &[])).unwrap();
        let ids: Vec<_> = (0..pods.len() as u32).map(weir_cluster::PodId).collect();
        let matrix = set.reach_matrix(&ids, &ProbePort::Number(port), Protocol::TCP);
        prop_assert_eq!(matrix.allowed_pairs(), ids.len() * ids.len());
    }
}

// ---- Cluster-wide policies: random ClusterNetworkPolicies (raw JSON, as a snapshot holds them) and an oracle
// written from the v1alpha2 API's comments over that raw JSON. ----

fn selector_json() -> impl Strategy<Value = Value> {
    selector().prop_map(|s| serde_json::to_value(s).unwrap())
}

fn cnp_peer(egress: bool) -> impl Strategy<Value = Value> {
    let pods = prop_oneof![
        selector_json().prop_map(|ns| json!({"namespaces": ns})),
        (selector_json(), selector_json())
            .prop_map(|(ns, p)| json!({"pods": {"namespaceSelector": ns, "podSelector": p}})),
    ];
    if !egress {
        return pods.boxed();
    }
    let cidrs = prop::collection::vec(
        prop::sample::select(vec![
            "10.0.0.0/16",
            "10.0.0.0/30",
            "192.168.0.0/24",
            "192.168.0.2/32",
            "0.0.0.0/0",
            "8.8.0.0/16",
        ]),
        1..3,
    );
    prop_oneof![
        3 => pods,
        1 => selector_json().prop_map(|s| json!({"nodes": s})),
        1 => cidrs.prop_map(|c| json!({"networks": c})),
    ]
    .boxed()
}

fn cnp_protocol(named: bool) -> impl Strategy<Value = Value> {
    let port = prop_oneof![
        Just(Value::Null),
        (79..84i64).prop_map(|n| json!({"number": n})),
        (79..82i64, 1..3i64).prop_map(|(s, w)| json!({"range": {"start": s, "end": s + w}})),
    ];
    let numbered =
        (prop::sample::select(vec!["tcp", "udp", "sctp"]), port).prop_map(|(p, port)| {
            if port.is_null() {
                // A protocol entry needs at least one property; an empty one is invalid, so name a wide range.
                json!({p: {"destinationPort": {"range": {"start": 1, "end": 65535}}}})
            } else {
                json!({p: {"destinationPort": port}})
            }
        });
    if named {
        prop_oneof![
            3 => numbered,
            1 => prop::sample::select(PORT_NAMES.to_vec()).prop_map(|n| json!({"destinationNamedPort": n})),
        ]
        .boxed()
    } else {
        numbered.boxed()
    }
}

fn cnp_rule(egress: bool) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Accept", "Deny", "Pass"]),
        prop::collection::vec(cnp_peer(egress), 1..3),
        any::<bool>(),
        prop::collection::vec(cnp_protocol(true), 1..3),
        prop::collection::vec(cnp_protocol(false), 1..3),
    )
        .prop_map(move |(action, peers, with_ports, named, plain)| {
            let list = if egress { "to" } else { "from" };
            let address_peers = peers
                .iter()
                .any(|p| p.get("nodes").is_some() || p.get("networks").is_some());
            let mut rule = json!({"action": action, list: peers});
            if with_ports {
                rule["protocols"] = json!(if address_peers { plain } else { named });
            }
            rule
        })
}

fn cnp() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        0..3i64,
        prop_oneof![
            selector_json().prop_map(|ns| json!({"namespaces": ns})),
            (selector_json(), selector_json())
                .prop_map(|(ns, p)| json!({"pods": {"namespaceSelector": ns, "podSelector": p}})),
        ],
        prop::collection::vec(cnp_rule(false), 0..4),
        prop::collection::vec(cnp_rule(true), 0..4),
    )
        .prop_map(|(admin, priority, subject, ingress, egress)| {
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": "unnamed"},
                   "spec": {"tier": if admin {"Admin"} else {"Baseline"}, "priority": priority,
                            "subject": subject, "ingress": ingress, "egress": egress}})
        })
}

fn named(mut cnps: Vec<Value>) -> Vec<Value> {
    for (i, c) in cnps.iter_mut().enumerate() {
        c["metadata"]["name"] = json!(format!("cnp{i}"));
    }
    cnps
}

fn json_selector_matches(s: &Value, labels: &BTreeMap<String, String>) -> bool {
    let s: LabelSelector = serde_json::from_value(s.clone()).unwrap();
    selector_matches(&s, labels)
}

/// Whether one peer of a cluster-wide rule matches the other end (host-network pods are never pods or
/// namespaces peers; `nodes` matches the addresses the nodes' status lists, `networks` any address in range).
fn cnp_peer_matches(cluster: &ClusterState, peer: &Value, other: &End) -> bool {
    let subject_pod = other.pod.filter(|_| other.is_subject());
    let ns_labels = |pod: &Pod| cluster.namespace(&pod.namespace).unwrap().labels.clone();
    if let Some(ns) = peer.get("namespaces") {
        return subject_pod.is_some_and(|p| json_selector_matches(ns, &ns_labels(p)));
    }
    if let Some(pods) = peer.get("pods") {
        return subject_pod.is_some_and(|p| {
            json_selector_matches(&pods["namespaceSelector"], &ns_labels(p))
                && json_selector_matches(&pods["podSelector"], &p.labels)
        });
    }
    if let Some(nodes) = peer.get("nodes") {
        return cluster.nodes().iter().any(|n| {
            n.addresses.iter().any(|a| {
                a.ip == other.ip && matches!(a.source, weir_cluster::NodeAddressSource::Status(_))
            }) && json_selector_matches(nodes, &n.labels)
        });
    }
    if let Some(networks) = peer.get("networks") {
        return networks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| cidr_contains(c.as_str().unwrap(), other.ip));
    }
    unreachable!("{peer}")
}

fn cnp_ports_match(rule: &Value, dst: &End, port: Option<u16>, protocol: &str) -> bool {
    let Some(protocols) = rule.get("protocols").and_then(Value::as_array) else {
        return true;
    };
    protocols.iter().any(|p| {
        if let Some(name) = p.get("destinationNamedPort").and_then(Value::as_str) {
            return dst.pod.filter(|_| dst.is_subject()).is_some_and(|d| {
                d.ports.iter().any(|c| {
                    c.name.as_deref() == Some(name)
                        && Some(c.port) == port
                        && c.protocol.name() == Some(protocol)
                })
            });
        }
        let (name, spec) = p.as_object().unwrap().iter().next().unwrap();
        if !name.eq_ignore_ascii_case(protocol) {
            return false;
        }
        let Some(port) = port else { return false };
        let d = &spec["destinationPort"];
        if let Some(n) = d.get("number") {
            return n.as_u64() == Some(u64::from(port));
        }
        let r = &d["range"];
        (r["start"].as_u64().unwrap()..=r["end"].as_u64().unwrap()).contains(&u64::from(port))
    })
}

/// One direction through the tiers, per the API: Admin (priority order, first matching rule; Accept and Deny
/// final, Pass skips the rest of the tier), then NetworkPolicy where it isolates the pod (the `np` answer,
/// exceptions included), then Baseline, then allowed. A pod reaching itself is never subject to cluster-wide
/// policies.
#[allow(clippy::too_many_arguments)]
fn tiers_oracle(
    cluster: &ClusterState,
    cnps: &[Value],
    egress: bool,
    src: &End,
    dst: &End,
    port: Option<u16>,
    protocol: &str,
    np: (bool, bool),
) -> bool {
    let (subject, other) = if egress { (src, dst) } else { (dst, src) };
    let Some(pod) = subject.pod.filter(|_| subject.is_subject()) else {
        return true;
    };
    if src.is_subject() && dst.is_subject() && src.ip == dst.ip {
        return true;
    }
    let ns_labels = cluster.namespace(&pod.namespace).unwrap().labels.clone();
    let applies = |c: &Value| {
        let s = &c["spec"]["subject"];
        match s.get("namespaces") {
            Some(ns) => json_selector_matches(ns, &ns_labels),
            None => {
                json_selector_matches(&s["pods"]["namespaceSelector"], &ns_labels)
                    && json_selector_matches(&s["pods"]["podSelector"], &pod.labels)
            }
        }
    };
    let mut ordered: Vec<&Value> = cnps.iter().filter(|c| applies(c)).collect();
    ordered.sort_by_key(|c| {
        (
            c["spec"]["priority"].as_i64().unwrap(),
            c["metadata"]["name"].as_str().unwrap().to_owned(),
        )
    });
    let direction = if egress { "egress" } else { "ingress" };
    let list = if egress { "to" } else { "from" };
    let first_match = |tier: &str| -> Option<String> {
        for c in ordered.iter().filter(|c| c["spec"]["tier"] == tier) {
            for rule in c["spec"][direction].as_array().unwrap() {
                let peers = rule[list].as_array().unwrap();
                if peers.iter().any(|p| cnp_peer_matches(cluster, p, other))
                    && cnp_ports_match(rule, dst, port, protocol)
                {
                    return Some(rule["action"].as_str().unwrap().to_owned());
                }
            }
        }
        None
    };
    match first_match("Admin").as_deref() {
        Some("Accept") => return true,
        Some("Deny") => return false,
        _ => {}
    }
    let isolated = cluster.policies().iter().any(|p| {
        selects(&p.policy, pod)
            && if egress {
                types(&p.policy).1
            } else {
                types(&p.policy).0
            }
    });
    if isolated {
        return if egress { np.0 } else { np.1 };
    }
    first_match("Baseline").as_deref() != Some("Deny")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tiers_agree_with_the_oracle(
        pods in prop::collection::vec(pod_spec(), 1..7),
        policies in prop::collection::vec(policy(), 0..3),
        cnps in prop::collection::vec(cnp(), 0..4),
        port in prop::option::of(79..84u16),
        proto in prop::sample::select(vec!["TCP", "UDP", "SCTP"]),
    ) {
        let cnps = named(cnps);
        let cluster = load_with(&pods, &policies, &cnps);
        let set = PolicySet::new(cluster.clone()).unwrap();
        let protocol = Protocol::from_kubernetes(Some(proto)).unwrap();
        let mut cache = VerdictCache::new();
        let ends = ends(&cluster);
        for src in &ends {
            for dst in &ends {
                let np = oracle(&cluster, src, dst, port, proto);
                let expected = (
                    tiers_oracle(&cluster, &cnps, true, src, dst, port, proto, np),
                    tiers_oracle(&cluster, &cnps, false, src, dst, port, proto, np),
                );
                let v = set.judge(&mut cache, src.ip, dst.ip, port, protocol);
                prop_assert_eq!((v.egress.allowed(), v.ingress.allowed()), expected,
                    "{} -> {} port {:?}/{}: {:?}", src.ip, dst.ip, port, proto, v);
                prop_assert!(v.decided());
                let (a, b) = (set.address_of_ip(src.ip), set.address_of_ip(dst.ip));
                prop_assert_eq!(set.explain(&a, &b, port, protocol).verdict, v);
                prop_assert_eq!(set.judge_with_grounds(&mut cache, &a, &b, port, protocol).0, v);
            }
        }
        if let Some(port) = port {
            let ids: Vec<_> = (0..cluster.pods().len() as u32).map(weir_cluster::PodId).collect();
            let matrix = set.reach_matrix(&ids, &ProbePort::Number(port), protocol);
            for (i, src) in ends.iter().take(ids.len()).enumerate() {
                for (j, dst) in ends.iter().take(ids.len()).enumerate() {
                    let v = set.judge(&mut cache, src.ip, dst.ip, Some(port), protocol);
                    prop_assert_eq!(matrix.get(i, j), (v.egress.allowed(), v.ingress.allowed()));
                    prop_assert_eq!(matrix.tiers(i, j), (v.egress.tier(), v.ingress.tier()));
                }
            }
        }
    }

    /// With only Baseline policies, and where NetworkPolicy isolates both ends, cluster-wide policies change
    /// nothing: every verdict equals the one without them.
    #[test]
    fn without_admin_policies_isolated_pods_keep_their_verdicts(
        pods in prop::collection::vec(pod_spec(), 1..7),
        policies in prop::collection::vec(policy(), 0..4),
        cnps in prop::collection::vec(cnp(), 0..4),
        port in 79..84u16,
    ) {
        let baseline: Vec<Value> = named(cnps).into_iter().filter(|c| c["spec"]["tier"] == "Baseline").collect();
        let plain = PolicySet::new(load(&pods, &policies)).unwrap();
        let tiered = PolicySet::new(load_with(&pods, &policies, &baseline)).unwrap();
        let (mut c1, mut c2) = (VerdictCache::new(), VerdictCache::new());
        let cluster = plain.cluster();
        for src in ends(cluster) {
            for dst in ends(cluster) {
                let a = plain.judge(&mut c1, src.ip, dst.ip, Some(port), Protocol::TCP);
                let b = tiered.judge(&mut c2, src.ip, dst.ip, Some(port), Protocol::TCP);
                if a.egress.tier() != weir_policy::DecidingTier::Default {
                    prop_assert_eq!(a.egress, b.egress);
                }
                if a.ingress.tier() != weir_policy::DecidingTier::Default {
                    prop_assert_eq!(a.ingress, b.ingress);
                }
            }
        }
    }

    /// An Admin policy at the first priority that Accepts (or Denies) everything from and to every pod and
    /// every address decides every direction of every pod, whatever else is in force (a pod reaching itself
    /// aside).
    #[test]
    fn an_admin_rule_for_everything_decides_everything(
        pods in prop::collection::vec(pod_spec(), 1..7),
        policies in prop::collection::vec(policy(), 0..4),
        cnps in prop::collection::vec(cnp(), 0..4),
        deny in any::<bool>(),
        port in 79..84u16,
    ) {
        let action = if deny { "Deny" } else { "Accept" };
        let mut cnps = named(cnps);
        for c in &mut cnps {
            c["spec"]["priority"] = json!(1);
        }
        cnps.push(json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "everything"},
            "spec": {"tier": "Admin", "priority": 0, "subject": {"namespaces": {}},
                "ingress": [{"action": action, "from": [{"namespaces": {}}]}],
                "egress": [{"action": action, "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]}]}}));
        let set = PolicySet::new(load_with(&pods, &policies, &cnps)).unwrap();
        let mut cache = VerdictCache::new();
        let cluster = set.cluster();
        for src in ends(cluster) {
            for dst in ends(cluster) {
                let v = set.judge(&mut cache, src.ip, dst.ip, Some(port), Protocol::TCP);
                let same_pod = src.is_subject() && dst.is_subject() && src.ip == dst.ip;
                if same_pod {
                    prop_assert!(v.allowed());
                    continue;
                }
                if src.is_subject() {
                    prop_assert!(matches!(v.egress, weir_policy::Decision::Tier(r) if r.tier == weir_policy::Tier::Admin), "{:?}", v);
                    prop_assert_eq!(v.egress.allowed(), !deny);
                }
                // Ingress peers are pods only: traffic from a node or the outside is not matched.
                if dst.is_subject() && src.is_subject() {
                    prop_assert!(matches!(v.ingress, weir_policy::Decision::Tier(r) if r.tier == weir_policy::Tier::Admin), "{:?}", v);
                    prop_assert_eq!(v.ingress.allowed(), !deny);
                }
            }
        }
    }

    /// A Pass for everything at the first priority makes the Admin tier as good as absent.
    #[test]
    fn passing_everything_equals_no_admin_tier(
        pods in prop::collection::vec(pod_spec(), 1..7),
        policies in prop::collection::vec(policy(), 0..4),
        cnps in prop::collection::vec(cnp(), 0..4),
        port in 79..84u16,
    ) {
        let cnps = named(cnps);
        let without_admin: Vec<Value> = cnps.iter().filter(|c| c["spec"]["tier"] == "Baseline").cloned().collect();
        let mut with_pass = cnps.clone();
        with_pass.push(json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "aaa-pass-all"},
            "spec": {"tier": "Admin", "priority": 0, "subject": {"namespaces": {}},
                "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}],
                "egress": [{"action": "Pass", "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]}]}}));
        let a = PolicySet::new(load_with(&pods, &policies, &without_admin)).unwrap();
        let b = PolicySet::new(load_with(&pods, &policies, &with_pass)).unwrap();
        let (mut c1, mut c2) = (VerdictCache::new(), VerdictCache::new());
        let cluster = a.cluster();
        for src in ends(cluster) {
            for dst in ends(cluster) {
                let x = a.judge(&mut c1, src.ip, dst.ip, Some(port), Protocol::TCP);
                let y = b.judge(&mut c2, src.ip, dst.ip, Some(port), Protocol::TCP);
                prop_assert_eq!((x.egress.allowed(), x.ingress.allowed()), (y.egress.allowed(), y.ingress.allowed()),
                    "{} -> {}: {:?} / {:?}", src.ip, dst.ip, x, y);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// On larger clusters the matrix evaluates the tiers once per class of look-alike identities; it must still
    /// agree with judging each pair.
    #[test]
    fn the_matrix_agrees_with_pairwise_judging_under_tiers(
        pods in prop::collection::vec(pod_spec(), 12..30),
        policies in prop::collection::vec(policy(), 0..3),
        cnps in prop::collection::vec(cnp(), 1..5),
        port in 79..84u16,
        named in any::<bool>(),
    ) {
        // Port names are unique within a pod (the API validates it), so a name resolves to one number.
        prop_assume!(pods.iter().all(|p| {
            let names: Vec<_> = p.ports.iter().map(|&(name, _, udp)| (name, udp)).collect();
            names.iter().collect::<std::collections::BTreeSet<_>>().len() == names.len()
        }));
        let cluster = load_with(&pods, &policies, &named_policies(cnps));
        let set = PolicySet::new(cluster.clone()).unwrap();
        let ids: Vec<_> = (0..cluster.pods().len() as u32).map(weir_cluster::PodId).collect();
        let probe = if named { ProbePort::Name("web".into()) } else { ProbePort::Number(port) };
        let matrix = set.reach_matrix(&ids, &probe, Protocol::TCP);
        let mut cache = VerdictCache::new();
        for (i, &a) in ids.iter().enumerate() {
            for (j, &b) in ids.iter().enumerate() {
                let (src, dst) = (set.address_of_pod(a), set.address_of_pod(b));
                let number = match &probe {
                    ProbePort::Number(n) => Some(*n),
                    ProbePort::Name(name) => cluster.pod(b).named_port(name, Protocol::TCP),
                };
                let v = set.judge_addresses(&mut cache, &src, &dst, number, Protocol::TCP);
                prop_assert_eq!(matrix.get(i, j), (v.egress.allowed(), v.ingress.allowed()), "{} -> {}: {:?}", i, j, v);
                prop_assert_eq!(matrix.tiers(i, j), (v.egress.tier(), v.ingress.tier()));
            }
        }
    }
}

fn named_policies(cnps: Vec<Value>) -> Vec<Value> {
    named(cnps)
}

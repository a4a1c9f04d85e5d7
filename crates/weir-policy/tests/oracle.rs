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
use serde_json::json;
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
    let mut items = Vec::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "app": VALUES[i]}}}));
    }
    for node in 0..2 {
        items.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{node}")},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(node)}]}}),
        );
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

//! A deterministic synthetic cluster at scale, for the benchmarks: namespaces of Deployments with realistic
//! labels, optionally a Service in front of each, and a mix of NetworkPolicies like the ones teams write (default
//! deny, per-app ingress from same-namespace tiers, cross-namespace peers by team, ipBlocks with excepts,
//! named ports, port ranges, egress allow-lists).

use serde_json::{Value, json};

/// The cluster as a `kubectl get -o json` List, and the addresses of its pods.
pub struct SyntheticCluster {
    /// The List, ready for `SnapshotLoader::add_bytes`.
    pub json: String,
    /// Every pod address, in pod order.
    pub pod_ips: Vec<std::net::Ipv4Addr>,
}

const PORTS: [(&str, u16); 6] = [
    ("http", 8080),
    ("grpc", 9090),
    ("metrics", 9100),
    ("postgres", 5432),
    ("redis", 6379),
    ("web", 80),
];

/// `namespaces` × `apps` Deployments of `replicas` pods each, and about `policies` NetworkPolicies spread over
/// the namespaces (one default-deny each, the rest per app). Deterministic for given arguments.
pub fn synthetic_cluster(
    namespaces: usize,
    apps: usize,
    replicas: usize,
    policies: usize,
) -> SyntheticCluster {
    synthetic_cluster_with(namespaces, apps, replicas, policies, false, |index| {
        std::net::Ipv4Addr::new(
            10,
            128 + (index >> 16) as u8,
            (index >> 8) as u8,
            index as u8,
        )
    })
}

/// The ports each Service of [`synthetic_cluster_with`] exposes: every port the benchmark traffic uses.
const SERVICE_PORTS: [u16; 6] = [80, 443, 8080, 5432, 6379, 9090];

/// [`synthetic_cluster`] with the address of the pod at each index chosen by `address` (to match a capture),
/// and, with `services`, a ClusterIP Service selecting each Deployment on [`SERVICE_PORTS`].
pub fn synthetic_cluster_with(
    namespaces: usize,
    apps: usize,
    replicas: usize,
    policies: usize,
    services: bool,
    address: impl Fn(usize) -> std::net::Ipv4Addr,
) -> SyntheticCluster {
    let mut items: Vec<Value> = Vec::new();
    let mut pod_ips = Vec::new();
    let per_ns = policies.div_ceil(namespaces.max(1));
    for n in 0..namespaces {
        let ns = format!("ns-{n:03}");
        items.push(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
            "kubernetes.io/metadata.name": ns, "team": format!("team-{}", n % 10),
            "env": if n % 4 == 0 { "staging" } else { "prod" }}}}),
        );
        for a in 0..apps {
            let app = format!("app-{a:02}");
            let tier = ["web", "api", "db"][a % 3];
            let hash = format!("{:08x}", (n * 1000 + a) * 2654435761 % (1 << 32));
            let (port_name, port) = PORTS[a % PORTS.len()];
            if services {
                let ports: Vec<Value> = SERVICE_PORTS
                    .iter()
                    .map(|p| json!({"name": format!("p{p}"), "port": p, "targetPort": p, "protocol": "TCP"}))
                    .collect();
                let service = n * apps + a;
                items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
                    "spec": {"type": "ClusterIP", "selector": {"app": app},
                        "clusterIP": format!("10.96.{}.{}", service / 250, service % 250 + 1),
                        "ports": ports}}));
            }
            for r in 0..replicas {
                let index = pod_ips.len();
                let ip = address(index);
                pod_ips.push(ip);
                items.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                        "name": format!("{app}-{hash}-{r}"), "namespace": ns,
                        "labels": {"app": app, "tier": tier, "pod-template-hash": hash},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": true,
                            "name": format!("{app}-{hash}"), "uid": format!("{n}-{a}")}]},
                    "spec": {"nodeName": format!("node-{}", index % 50), "containers": [{"name": "main", "image": "app",
                        "ports": [{"name": port_name, "containerPort": port}, {"name": "metrics", "containerPort": 9100}]}]},
                    "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}}));
            }
        }
        for p in 0..per_ns {
            let name = format!("policy-{p:02}");
            let spec = if p == 0 {
                json!({"podSelector": {}, "policyTypes": ["Ingress"]})
            } else {
                let app = format!("app-{:02}", p % apps.max(1));
                let (port_name, port) = PORTS[(p % apps.max(1)) % PORTS.len()];
                let team = format!("team-{}", (n + p) % 10);
                let mut spec = json!({
                    "podSelector": {"matchLabels": {"app": app}},
                    "ingress": [
                        {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                         "ports": [{"port": port_name, "protocol": "TCP"}]},
                        {"from": [{"namespaceSelector": {"matchLabels": {"team": team}},
                                   "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "web"]}]}}],
                         "ports": [{"port": port, "endPort": port + 10, "protocol": "TCP"}]},
                        {"from": [{"ipBlock": {"cidr": "10.128.0.0/12", "except": [format!("10.128.{}.0/24", p)]}}],
                         "ports": [{"port": 9100, "protocol": "TCP"}]}
                    ]
                });
                if p % 3 == 0 {
                    spec["policyTypes"] = json!(["Ingress", "Egress"]);
                    spec["egress"] = json!([
                        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                         "ports": [{"port": 53, "protocol": "UDP"}]},
                        {"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}]}
                    ]);
                }
                spec
            };
            items.push(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}),
            );
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    SyntheticCluster {
        json: list.to_string(),
        pod_ips,
    }
}

/// `count` ClusterNetworkPolicies for a [`synthetic_cluster`] of `namespaces` namespaces, as a platform team
/// would layer them: three in five in the Admin tier (Pass to delegate in-namespace traffic, Deny between teams,
/// Accept for monitoring scrapes, Deny to outside ranges), the rest Baseline (deny across teams, accept same
/// team), with subjects by team, environment and tier labels and priorities that mostly differ.
pub fn synthetic_cluster_policies(count: usize, namespaces: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let team = format!("team-{}", i % 10);
            let other = format!("team-{}", (i + 3) % 10);
            let ns = format!("ns-{:03}", i % namespaces.max(1));
            let admin = i % 5 < 3;
            let tier_label = ["web", "api", "db"][i % 3];
            let subject = match i % 3 {
                0 => json!({"namespaces": {"matchLabels": {"team": team}}}),
                1 => json!({"pods": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
                                     "podSelector": {"matchLabels": {"tier": tier_label}}}}),
                _ => json!({"namespaces": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                                 "operator": "NotIn", "values": [ns]}]}}),
            };
            let (ingress, egress) = if admin {
                (
                    json!([
                        {"name": "monitoring", "action": "Accept",
                         "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": "team-0"}},
                                            "podSelector": {"matchLabels": {"tier": "api"}}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 9100}}}]},
                        {"name": "other-team", "action": "Deny",
                         "from": [{"namespaces": {"matchLabels": {"team": other}}}],
                         "protocols": [{"tcp": {"destinationPort": {"range": {"start": 5000, "end": 6500}}}}]},
                        {"name": "delegate", "action": "Pass", "from": [{"namespaces": {}}]}
                    ]),
                    json!([
                        {"name": "no-metadata", "action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]},
                        {"name": "named", "action": "Accept",
                         "to": [{"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                                          "podSelector": {}}}],
                         "protocols": [{"destinationNamedPort": "metrics"}]},
                        {"name": "delegate", "action": "Pass",
                         "to": [{"namespaces": {}}, {"networks": ["10.0.0.0/8"]}]},
                        {"name": "outside", "action": "Deny",
                         "to": [{"networks": [format!("{}.0.0.0/8", 1 + i % 200)]}]}
                    ]),
                )
            } else {
                (
                    json!([
                        {"name": "same-team", "action": "Accept",
                         "from": [{"namespaces": {"matchLabels": {"team": team}}}]},
                        {"name": "rest", "action": "Deny", "from": [{"namespaces": {}}]}
                    ]),
                    json!([
                        {"name": "dns", "action": "Accept",
                         "to": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                         "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}
                    ]),
                )
            };
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                "metadata": {"name": format!("cnp-{i:03}")},
                "spec": {"tier": if admin { "Admin" } else { "Baseline" }, "priority": (i * 7) % 1000,
                         "subject": subject, "ingress": ingress, "egress": egress}})
        })
        .collect()
}

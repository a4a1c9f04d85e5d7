//! The bundled demo: a small cluster (a web shop, payments, monitoring, cluster DNS) as a `kubectl get -o yaml`
//! snapshot, and a minute of its traffic with the things `weir analyze` exists to find.
//!
//! The story, for the README and the golden tests:
//! - Customers on the internet reach the shop's frontend; the frontend calls the API through its Service; the
//!   API uses the cache and the database, and calls payments through a Service. Pods resolve names through
//!   kube-dns. Some connections appear both before and after the node's DNAT (a `tcpdump -i any` capture sees
//!   both), some only before.
//! - Prometheus scrapes the API, the nodes' hostNetwork exporter, CoreDNS and the cache's exporter; the cache's
//!   policy opens 9100-9102 to it, but the redis exporter listens on 9121: a policy mistake, denied.
//! - payments has a canary backend whose labels the payments policy does not match: the Service's backends
//!   disagree.
//! - The nightly report CronJob reaches the database without any policy allowing it, then finishes; its address
//!   is reused by a new checkout-worker pod, and flows from each are attributed to the right one.
//! - One frontend pod is compromised: it scans its neighbours (one address belongs to no pod), pings them, and
//!   tries the cloud metadata endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{Value, json};
use weir_model::Timestamp;

use crate::scenarios::EPOCH;
use crate::{Capture, Close, Link, Synth, TcpSpec};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn at(ms: i64) -> Timestamp {
    Timestamp(EPOCH + ms * 1_000_000)
}

/// `2026-11-22T10:00:00Z` plus `seconds` (negative for before the capture), as the API server writes times.
fn time(seconds: i64) -> String {
    let text = Timestamp(EPOCH + seconds * 1_000_000_000).to_string();
    format!("{}Z", text.get(..19).unwrap_or(&text))
}

const DAY: i64 = 86_400;

struct PodDef {
    namespace: &'static str,
    name: &'static str,
    labels: Value,
    ip: &'static str,
    node: &'static str,
    owner: (&'static str, &'static str),
    ports: &'static [(&'static str, u16, &'static str)],
    host_network: bool,
    created: i64,
    finished: Option<i64>,
}

impl PodDef {
    fn new(
        namespace: &'static str,
        name: &'static str,
        labels: Value,
        ip: &'static str,
        node: &'static str,
        owner: (&'static str, &'static str),
        ports: &'static [(&'static str, u16, &'static str)],
    ) -> PodDef {
        PodDef {
            namespace,
            name,
            labels,
            ip,
            node,
            owner,
            ports,
            host_network: false,
            created: -2 * DAY,
            finished: None,
        }
    }

    fn to_json(&self) -> Value {
        let api = match self.owner.0 {
            "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps/v1",
            _ => "batch/v1",
        };
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, port, proto)| json!({"containerPort": port, "name": name, "protocol": proto}))
            .collect();
        let mut container =
            json!({"name": "main", "image": format!("registry.example/{}:1.0", self.owner.1)});
        if !ports.is_empty() {
            container["ports"] = Value::Array(ports);
        }
        let mut spec = json!({"containers": [container], "nodeName": self.node});
        if self.host_network {
            spec["hostNetwork"] = json!(true);
        }
        let (phase, state) = match self.finished {
            Some(t) => (
                "Succeeded",
                json!({"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": time(self.created + 2), "finishedAt": time(t)}}),
            ),
            None => (
                "Running",
                json!({"running": {"startedAt": time(self.created + 2)}}),
            ),
        };
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "creationTimestamp": time(self.created),
                "labels": self.labels,
                "name": self.name,
                "namespace": self.namespace,
                "ownerReferences": [{"apiVersion": api, "blockOwnerDeletion": true, "controller": true,
                    "kind": self.owner.0, "name": self.owner.1,
                    "uid": uid(&format!("{}/{}", self.namespace, self.owner.1))}],
                "uid": uid(&format!("{}/{}", self.namespace, self.name)),
            },
            "spec": spec,
            "status": {
                "containerStatuses": [{"name": "main", "ready": self.finished.is_none(),
                    "restartCount": 0, "state": state}],
                "hostIP": node_ip(self.node),
                "phase": phase,
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "startTime": time(self.created + 1),
            },
        })
    }
}

/// A stable UUID-shaped id from a name (FNV-1a), so the snapshot is the same on every run.
fn uid(name: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let hex = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

const NODES: [(&str, &str, &str); 3] = [
    ("node-a", "172.18.0.2", "10.244.0.0/24"),
    ("node-b", "172.18.0.3", "10.244.1.0/24"),
    ("node-c", "172.18.0.4", "10.244.2.0/24"),
];

fn node_ip(node: &str) -> &'static str {
    NODES.iter().find(|n| n.0 == node).map_or("", |n| n.1)
}

fn pods() -> Vec<PodDef> {
    let dns_ports: &[(&str, u16, &str)] = &[
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", 9153, "TCP"),
    ];
    let app = |name: &str, hash: Option<&str>| {
        let mut labels =
            json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shop"});
        if let Some(h) = hash {
            labels["pod-template-hash"] = json!(h);
        }
        labels
    };
    let mut pods = vec![
        PodDef::new(
            "kube-system",
            "coredns-7db6d8ff4d-9xk2m",
            json!({"k8s-app": "kube-dns", "pod-template-hash": "7db6d8ff4d"}),
            "10.244.0.10",
            "node-a",
            ("ReplicaSet", "coredns-7db6d8ff4d"),
            dns_ports,
        ),
        PodDef::new(
            "kube-system",
            "coredns-7db6d8ff4d-q4w8z",
            json!({"k8s-app": "kube-dns", "pod-template-hash": "7db6d8ff4d"}),
            "10.244.1.10",
            "node-b",
            ("ReplicaSet", "coredns-7db6d8ff4d"),
            dns_ports,
        ),
        PodDef::new(
            "shop",
            "frontend-5f7c9d8b6-h2x9k",
            app("frontend", Some("5f7c9d8b6")),
            "10.244.0.20",
            "node-a",
            ("ReplicaSet", "frontend-5f7c9d8b6"),
            &[("http", 8080, "TCP")],
        ),
        PodDef::new(
            "shop",
            "frontend-5f7c9d8b6-wq7zt",
            app("frontend", Some("5f7c9d8b6")),
            "10.244.1.20",
            "node-b",
            ("ReplicaSet", "frontend-5f7c9d8b6"),
            &[("http", 8080, "TCP")],
        ),
        PodDef::new(
            "shop",
            "api-6d4b8c7f9-klm2n",
            app("api", Some("6d4b8c7f9")),
            "10.244.1.21",
            "node-b",
            ("ReplicaSet", "api-6d4b8c7f9"),
            &[("http", 8080, "TCP"), ("metrics", 9100, "TCP")],
        ),
        PodDef::new(
            "shop",
            "api-6d4b8c7f9-p5r8s",
            app("api", Some("6d4b8c7f9")),
            "10.244.2.21",
            "node-c",
            ("ReplicaSet", "api-6d4b8c7f9"),
            &[("http", 8080, "TCP"), ("metrics", 9100, "TCP")],
        ),
        PodDef::new(
            "shop",
            "cache-0",
            {
                let mut l = app("cache", None);
                l["controller-revision-hash"] = json!("cache-7b9c6d5f4");
                l["statefulset.kubernetes.io/pod-name"] = json!("cache-0");
                l
            },
            "10.244.2.22",
            "node-c",
            ("StatefulSet", "cache"),
            &[("redis", 6379, "TCP"), ("metrics", 9121, "TCP")],
        ),
        PodDef::new(
            "shop",
            "db-0",
            {
                let mut l = app("db", None);
                l["controller-revision-hash"] = json!("db-5c8d7b6a9");
                l["statefulset.kubernetes.io/pod-name"] = json!("db-0");
                l
            },
            "10.244.2.23",
            "node-c",
            ("StatefulSet", "db"),
            &[("postgres", 5432, "TCP")],
        ),
        PodDef {
            created: -5,
            finished: Some(20),
            ..PodDef::new(
                "shop",
                "report-29400600-x7k2p",
                json!({"app.kubernetes.io/name": "report", "batch.kubernetes.io/job-name": "report-29400600",
                    "job-name": "report-29400600", "batch.kubernetes.io/controller-uid": uid("shop/report-29400600")}),
                "10.244.0.24",
                "node-a",
                ("Job", "report-29400600"),
                &[],
            )
        },
        PodDef {
            created: 32,
            ..PodDef::new(
                "shop",
                "checkout-worker-84c5d7f6b-n9v4c",
                app("checkout-worker", Some("84c5d7f6b")),
                "10.244.0.24",
                "node-a",
                ("ReplicaSet", "checkout-worker-84c5d7f6b"),
                &[],
            )
        },
        PodDef::new(
            "payments",
            "payments-api-7c9f5b6d8-uvw3x",
            json!({"app": "payments-api", "track": "stable", "pod-template-hash": "7c9f5b6d8"}),
            "10.244.1.30",
            "node-b",
            ("ReplicaSet", "payments-api-7c9f5b6d8"),
            &[("https", 8443, "TCP")],
        ),
        PodDef::new(
            "payments",
            "payments-api-canary-59d8f7c6b-z4b6c",
            json!({"app": "payments-api", "track": "canary", "pod-template-hash": "59d8f7c6b"}),
            "10.244.2.30",
            "node-c",
            ("ReplicaSet", "payments-api-canary-59d8f7c6b"),
            &[("https", 8443, "TCP")],
        ),
        PodDef::new(
            "monitoring",
            "prometheus-0",
            json!({"app.kubernetes.io/name": "prometheus", "controller-revision-hash": "prometheus-6f5d8c7b9",
                "statefulset.kubernetes.io/pod-name": "prometheus-0"}),
            "10.244.0.40",
            "node-a",
            ("StatefulSet", "prometheus"),
            &[("web", 9090, "TCP")],
        ),
    ];
    for (i, (node, node_ip, _)) in NODES.iter().enumerate() {
        let name: &'static str = [
            "node-exporter-4kq8d",
            "node-exporter-b7n2m",
            "node-exporter-x9t5w",
        ][i];
        pods.push(PodDef {
            host_network: true,
            ..PodDef::new(
                "monitoring",
                name,
                json!({"app.kubernetes.io/name": "node-exporter", "controller-revision-hash": "6c9b8d7f5",
                    "pod-template-generation": "1"}),
                node_ip,
                node,
                ("DaemonSet", "node-exporter"),
                &[("metrics", 9100, "TCP")],
            )
        });
    }
    pods
}

/// (namespace, name, clusterIP, [(port name, port, protocol, targetPort name)], selector)
type ServiceDef = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, u16, &'static str, &'static str)],
    Value,
);

fn services() -> Vec<ServiceDef> {
    let app = |name: &str| json!({"app.kubernetes.io/name": name});
    vec![
        (
            "kube-system",
            "kube-dns",
            "10.96.0.10",
            &[
                ("dns", 53, "UDP", "dns"),
                ("dns-tcp", 53, "TCP", "dns-tcp"),
                ("metrics", 9153, "TCP", "metrics"),
            ],
            json!({"k8s-app": "kube-dns"}),
        ),
        (
            "shop",
            "frontend",
            "10.96.10.10",
            &[("http", 80, "TCP", "http")],
            app("frontend"),
        ),
        (
            "shop",
            "api",
            "10.96.10.20",
            &[("http", 80, "TCP", "http")],
            app("api"),
        ),
        (
            "shop",
            "cache",
            "10.96.10.30",
            &[("redis", 6379, "TCP", "redis")],
            app("cache"),
        ),
        (
            "shop",
            "db",
            "10.96.10.40",
            &[("postgres", 5432, "TCP", "postgres")],
            app("db"),
        ),
        (
            "payments",
            "payments-api",
            "10.96.20.10",
            &[("https", 443, "TCP", "https")],
            json!({"app": "payments-api"}),
        ),
        (
            "monitoring",
            "prometheus",
            "10.96.30.10",
            &[("web", 9090, "TCP", "web")],
            app("prometheus"),
        ),
    ]
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn policies() -> Vec<Value> {
    let policy = |ns: &str, name: &str, spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"creationTimestamp": time(-DAY), "name": name, "namespace": ns,
                "uid": uid(&format!("{ns}/np/{name}"))},
            "spec": spec})
    };
    let app = |name: &str| json!({"matchLabels": {"app.kubernetes.io/name": name}});
    let prometheus = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}});
    vec![
        policy(
            "shop",
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
        policy(
            "shop",
            "allow-dns",
            json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                               "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
        ),
        policy(
            "shop",
            "frontend",
            json!({
            "podSelector": app("frontend"),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                         "ports": [{"port": "http", "protocol": "TCP"}]}],
            "egress": [{"to": [{"podSelector": app("api")}], "ports": [{"port": "http", "protocol": "TCP"}]}]}),
        ),
        policy(
            "shop",
            "api",
            json!({
            "podSelector": app("api"),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": app("frontend")}], "ports": [{"port": "http", "protocol": "TCP"}]},
                {"from": [prometheus.clone()], "ports": [{"port": 9100, "endPort": 9102, "protocol": "TCP"}]}],
            "egress": [
                {"to": [{"podSelector": app("cache")}], "ports": [{"port": "redis", "protocol": "TCP"}]},
                {"to": [{"podSelector": app("db")}], "ports": [{"port": 5432, "protocol": "TCP"}]},
                {"to": [{"namespaceSelector": {"matchLabels": {"team": "payments"}},
                         "podSelector": {"matchLabels": {"app": "payments-api"}}}],
                 "ports": [{"port": 8443, "protocol": "TCP"}]}]}),
        ),
        policy(
            "shop",
            "cache",
            json!({
            "podSelector": app("cache"),
            "ingress": [
                {"from": [{"podSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In",
                    "values": ["api", "checkout-worker"]}]}}],
                 "ports": [{"port": "redis", "protocol": "TCP"}]},
                {"from": [prometheus.clone()], "ports": [{"port": 9100, "endPort": 9102, "protocol": "TCP"}]}]}),
        ),
        policy(
            "shop",
            "db",
            json!({
            "podSelector": app("db"),
            "ingress": [
                {"from": [{"podSelector": app("api")}], "ports": [{"port": "postgres", "protocol": "TCP"}]},
                {"from": [{"podSelector": {"matchLabels": {"role": "admin"}}}],
                 "ports": [{"port": 5432, "protocol": "TCP"}]}]}),
        ),
        policy(
            "shop",
            "checkout-worker",
            json!({
            "podSelector": app("checkout-worker"),
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": app("cache")}], "ports": [{"port": "redis", "protocol": "TCP"}]}]}),
        ),
        policy(
            "payments",
            "default-deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            "payments",
            "payments-api",
            json!({
            "podSelector": {"matchLabels": {"app": "payments-api", "track": "stable"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}},
                                   "podSelector": app("api")}],
                         "ports": [{"port": "https", "protocol": "TCP"}]}]}),
        ),
    ]
}

/// The demo cluster as one `kubectl get namespaces,nodes,pods,services,endpointslices,replicasets,jobs,
/// networkpolicies -A -o yaml` List.
pub fn demo_cluster() -> Value {
    let mut items = Vec::new();
    for (ns, labels) in [
        ("kube-system", json!({})),
        ("monitoring", json!({"team": "platform"})),
        (
            "payments",
            json!({"team": "payments", "pod-security.kubernetes.io/enforce": "restricted"}),
        ),
        (
            "shop",
            json!({"team": "shop", "pod-security.kubernetes.io/enforce": "restricted"}),
        ),
    ] {
        let mut all = json!({"kubernetes.io/metadata.name": ns});
        if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
            all.extend(extra.clone());
        }
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"creationTimestamp": time(-30 * DAY), "labels": all, "name": ns, "uid": uid(ns)},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}));
    }
    for (name, address, cidr) in NODES {
        items.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"creationTimestamp": time(-30 * DAY), "labels": {"kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "topology.kubernetes.io/zone": "zone-1"}, "name": name, "uid": uid(name)},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"address": address, "type": "InternalIP"}, {"address": name, "type": "Hostname"}]}}));
    }
    let pods = pods();
    for pod in &pods {
        items.push(pod.to_json());
    }
    // The controllers between pods and workloads: ReplicaSets under Deployments, the Job under its CronJob.
    let mut replica_sets: Vec<(&str, &str)> = pods
        .iter()
        .filter(|p| p.owner.0 == "ReplicaSet")
        .map(|p| (p.namespace, p.owner.1))
        .collect();
    replica_sets.dedup();
    for (ns, rs) in replica_sets {
        let deployment = rs.rsplit_once('-').map_or(rs, |(d, _)| d);
        items.push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"creationTimestamp": time(-2 * DAY), "name": rs, "namespace": ns,
                "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
                    "kind": "Deployment", "name": deployment, "uid": uid(&format!("{ns}/deploy/{deployment}"))}],
                "uid": uid(&format!("{ns}/{rs}"))},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"pod-template-hash": rs.rsplit('-').next()}},
                "template": {"metadata": {"labels": {"pod-template-hash": rs.rsplit('-').next()}}}}}));
    }
    items.push(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"creationTimestamp": time(-5), "name": "report-29400600", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "batch/v1", "blockOwnerDeletion": true, "controller": true,
                "kind": "CronJob", "name": "report", "uid": uid("shop/cronjob/report")}],
            "uid": uid("shop/report-29400600")},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "registry.example/report:1.0"}],
            "restartPolicy": "Never"}}},
        "status": {"succeeded": 1}}));
    for (ns, name, cluster_ip, ports, selector) in services() {
        items.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"creationTimestamp": time(-2 * DAY), "name": name, "namespace": ns, "uid": uid(&format!("{ns}/svc/{name}"))},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                "ports": ports.iter().map(|(pn, port, proto, target)| json!({"name": pn, "port": port,
                    "protocol": proto, "targetPort": target})).collect::<Vec<_>>(),
                "selector": selector}}));
        let backends: Vec<&PodDef> = pods
            .iter()
            .filter(|p| p.namespace == ns && p.finished.is_none() && selects(&selector, &p.labels))
            .collect();
        let slice_ports: Vec<Value> = ports
            .iter()
            .filter_map(|(pn, _, proto, target)| {
                let number = backends
                    .first()?
                    .ports
                    .iter()
                    .find(|(n, _, p)| n == target && p == proto)?
                    .1;
                Some(json!({"name": pn, "port": number, "protocol": proto}))
            })
            .collect();
        items.push(json!({"addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "endpoints": backends.iter().map(|p| json!({"addresses": [p.ip],
                "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": p.node,
                "targetRef": {"kind": "Pod", "name": p.name, "namespace": ns, "uid": uid(&format!("{ns}/{}", p.name))}}))
                .collect::<Vec<_>>(),
            "metadata": {"creationTimestamp": time(-2 * DAY), "labels": {"kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "name": format!("{name}-{}", &uid(name)[..5]), "namespace": ns},
            "ports": slice_ports}));
    }
    items.extend(policies());
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

fn sock(address: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(address), port)
}

/// A connection through a Service: the client's view (to the ClusterIP) and, when `post_dnat`, the same
/// connection after the node's DNAT (to the backend), 30 µs later, as `tcpdump -i any` records both.
#[allow(clippy::too_many_arguments)]
fn via_service(
    s: &mut Synth,
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    start: Timestamp,
    exchanges: u32,
    sizes: (usize, usize),
    post_dnat: bool,
) {
    let spec = |server, start| TcpSpec {
        request: sizes.0,
        response: sizes.1,
        ..TcpSpec::new(client, server, start, exchanges)
    };
    s.tcp(spec(vip, start));
    if post_dnat {
        s.tcp(spec(backend, Timestamp(start.0 + 30_000)));
    }
}

fn dns(s: &mut Synth, client: &str, port: u16, server: &str, start: Timestamp, post_dnat: bool) {
    s.udp(
        sock(client, port),
        sock("10.96.0.10", 53),
        start,
        1,
        (74, 138),
        400_000,
    );
    if post_dnat {
        s.udp(
            sock(client, port),
            sock(server, 53),
            Timestamp(start.0 + 30_000),
            1,
            (74, 138),
            400_000,
        );
    }
}

/// A minute of the demo cluster's traffic, on any link type (the same flows on each).
pub fn demo_traffic(link: Link) -> Capture {
    let mut s = Synth::new(link, 7);
    let (fe_a, fe_b) = ("10.244.0.20", "10.244.1.20");
    let (api_a, api_b) = ("10.244.1.21", "10.244.2.21");
    let (cache, db) = ("10.244.2.22", "10.244.2.23");
    let (pay_stable, pay_canary) = ("10.244.1.30", "10.244.2.30");
    let prometheus = "10.244.0.40";
    let (dns_a, dns_b) = ("10.244.0.10", "10.244.1.10");
    let report_or_worker = "10.244.0.24";

    // Customers → frontend pods (after the load balancer, source addresses preserved).
    for i in 0..12u16 {
        let customer = ["203.0.113.10", "203.0.113.25", "198.51.100.77"][usize::from(i % 3)];
        let frontend = if i % 2 == 0 { fe_a } else { fe_b };
        s.tcp(TcpSpec {
            request: 420,
            response: 1_400,
            ..TcpSpec::new(
                sock(customer, 50_100 + i),
                sock(frontend, 8080),
                at(1_000 + i64::from(i) * 4_500),
                2,
            )
        });
    }
    // Frontend: DNS for the API, then the API through its Service.
    for i in 0..10u16 {
        let t = 1_200 + i64::from(i) * 5_000;
        let (frontend, dns_pod) = if i % 2 == 0 {
            (fe_a, dns_a)
        } else {
            (fe_b, dns_b)
        };
        dns(&mut s, frontend, 41_000 + i, dns_pod, at(t), i % 3 == 0);
        let api = if i % 2 == 0 { api_a } else { api_b };
        via_service(
            &mut s,
            sock(frontend, 43_000 + i),
            sock("10.96.10.20", 80),
            sock(api, 8080),
            at(t + 5),
            2,
            (380, 2400),
            i < 6,
        );
    }
    // API → cache (one backend) and the database (a pooled connection, open since before the capture).
    for i in 0..8u16 {
        let api = if i % 2 == 0 { api_a } else { api_b };
        via_service(
            &mut s,
            sock(api, 47_000 + i),
            sock("10.96.10.30", 6379),
            sock(cache, 6379),
            at(1_300 + i64::from(i) * 6_000),
            3,
            (45, 120),
            i % 2 == 0,
        );
    }
    s.tcp(TcpSpec {
        handshake: false,
        close: Close::Open,
        request: 220,
        response: 1_400,
        gap: 600_000_000,
        ..TcpSpec::new(sock(api_b, 39_412), sock(db, 5432), at(500), 30)
    });
    // API → payments through its Service: the stable backend is allowed, the canary is not.
    for i in 0..4u16 {
        let backend = if i % 2 == 0 { pay_stable } else { pay_canary };
        via_service(
            &mut s,
            sock(api_a, 48_000 + i),
            sock("10.96.20.10", 443),
            sock(backend, 8443),
            at(8_000 + i64::from(i) * 11_000),
            1,
            (900, 350),
            i < 2,
        );
    }
    // payments → the bank's API outside the cluster.
    for i in 0..3u16 {
        s.tcp(TcpSpec {
            request: 1100,
            response: 600,
            ..TcpSpec::new(
                sock(pay_stable, 52_000 + i),
                sock("192.0.2.80", 443),
                at(8_200 + i64::from(i) * 20_000),
                1,
            )
        });
    }
    // Prometheus scrapes every 15 s.
    for round in 0..4u16 {
        let t = 2_000 + i64::from(round) * 15_000;
        let mut port = 55_000 + round * 10;
        let mut scrape = |s: &mut Synth, target: &str, target_port: u16, ok: bool| {
            port += 1;
            if ok {
                s.tcp(TcpSpec {
                    request: 160,
                    response: 1_400,
                    ..TcpSpec::new(sock(prometheus, port), sock(target, target_port), at(t), 1)
                });
            } else {
                s.tcp_attempt(
                    sock(prometheus, port),
                    sock(target, target_port),
                    at(t),
                    2,
                    1_000_000_000,
                    false,
                );
            }
        };
        scrape(&mut s, api_a, 9100, true);
        scrape(&mut s, api_b, 9100, true);
        scrape(&mut s, cache, 9121, false);
        scrape(&mut s, dns_a, 9153, true);
        for (_, node_ip, _) in NODES {
            scrape(&mut s, node_ip, 9100, true);
        }
    }
    // Kubelet readiness probes from each pod's own node.
    for i in 0..6u16 {
        let (node, pod) = [
            ("172.18.0.2", fe_a),
            ("172.18.0.3", fe_b),
            ("172.18.0.3", api_a),
        ][usize::from(i % 3)];
        s.tcp(TcpSpec {
            request: 90,
            response: 140,
            ..TcpSpec::new(
                sock(node, 60_000 + i),
                sock(pod, 8080),
                at(3_000 + i64::from(i) * 9_000),
                1,
            )
        });
    }
    // The nightly report job (until 10:00:20): DNS, then the database, which no policy lets it reach.
    dns(&mut s, report_or_worker, 35_001, dns_a, at(4_000), true);
    for i in 0..2u16 {
        s.tcp_attempt(
            sock(report_or_worker, 35_010 + i),
            sock("10.96.10.40", 5432),
            at(4_100 + i64::from(i) * 7_000),
            3,
            1_000_000_000,
            false,
        );
    }
    // Its address, reused from 10:00:32 by a checkout worker that talks to the cache.
    for i in 0..3u16 {
        via_service(
            &mut s,
            sock(report_or_worker, 36_000 + i),
            sock("10.96.10.30", 6379),
            sock(cache, 6379),
            at(40_000 + i64::from(i) * 5_000),
            2,
            (60, 200),
            false,
        );
    }
    // API → a public resolver: not allowed by its egress policy.
    s.udp(
        sock(api_a, 33_333),
        sock("8.8.8.8", 53),
        at(21_000),
        1,
        (70, 0),
        1_000_000_000,
    );

    // The compromised frontend pod, from 10:00:30: a SYN scan of its neighbours (one address is no pod's),
    // pings, and the cloud metadata endpoint.
    let targets = [api_a, cache, db, pay_stable, prometheus, "10.244.1.99"];
    let ports = [22u16, 80, 443, 3306, 5432, 6379, 8080, 8443];
    let mut sport = 44_000u16;
    let mut t = 30_000i64;
    for target in targets {
        for port in ports {
            sport += 1;
            t += 37;
            if target == api_a && port == 8080 {
                s.tcp(TcpSpec::new(
                    sock(fe_b, sport),
                    sock(target, port),
                    at(t),
                    0,
                ));
            } else {
                s.tcp_attempt(sock(fe_b, sport), sock(target, port), at(t), 1, 0, false);
            }
        }
    }
    for (i, target) in targets.iter().enumerate() {
        s.icmp_echo_unanswered(
            ip(fe_b),
            ip(target),
            0x3100 + i as u16,
            2,
            at(31_000 + i as i64 * 10),
            1_000_000_000,
        );
    }
    s.tcp_attempt(
        sock(fe_b, 44_900),
        sock("169.254.169.254", 80),
        at(31_500),
        3,
        1_000_000_000,
        false,
    );
    s.finish()
}

//! Snapshot loading: the bundled `kubectl get -A -o yaml` List, indexes, owners, Services, and errors.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use weir_cluster::{ClusterState, IpOwner, LoadError, SnapshotLoader, WorkloadKind};
use weir_model::Protocol;

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pcaps/pod-traffic.cluster.yaml")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn load_text(text: &str) -> Result<ClusterState, LoadError> {
    let mut loader = SnapshotLoader::default();
    loader.add_bytes(Path::new("inline.yaml"), text.as_bytes())?;
    Ok(loader.finish().0)
}

#[test]
fn a_kubectl_list_with_mixed_kinds_loads() {
    let (cluster, report) = ClusterState::load(&[bundled()]).unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(report.loaded["Pod"], 8);
    assert_eq!(report.loaded["Namespace"], 6);
    assert_eq!(report.loaded["Node"], 3);
    assert_eq!(report.loaded["Service"], 5);
    assert_eq!(report.loaded["EndpointSlice"], 5);
    assert_eq!(report.loaded["NetworkPolicy"], 6);
    assert_eq!(report.loaded["ReplicaSet"], 3);
    assert_eq!(report.loaded["Job"], 1);
    assert!(report.skipped.is_empty());
    assert_eq!(
        cluster.namespace("payments").unwrap().labels["team"],
        "payments"
    );
    assert!(!cluster.namespace("shop").unwrap().inferred);
}

#[test]
fn addresses_map_to_pods_and_host_network_pods_to_their_node() {
    let (cluster, _) = ClusterState::load(&[bundled()]).unwrap();
    let cart = cluster.find_pod("shop", "cart-66b7f9d4c8-mq4tn").unwrap();
    assert_eq!(
        cluster.owner_of(ip("10.244.2.20")),
        Some(IpOwner::Pod(cart))
    );
    assert_eq!(
        cluster.owner_of(ip("fd00:10:244:2::14")),
        Some(IpOwner::Pod(cart)),
        "dual stack"
    );
    let Some(IpOwner::Node(node)) = cluster.owner_of(ip("172.18.0.2")) else {
        panic!("node address")
    };
    assert_eq!(cluster.node(node).name, "node-a");
    let agent = cluster.find_pod("monitoring", "node-agent-5xk2m").unwrap();
    assert_eq!(cluster.host_network_pods(node), &[agent]);
    // A finished pod no longer holds its address.
    assert_eq!(cluster.owner_of(ip("10.244.4.41")), None);
    assert!(matches!(
        cluster.owner_of(ip("10.96.0.10")),
        Some(IpOwner::Service(_))
    ));
    assert_eq!(cluster.owner_of(ip("8.8.8.8")), None);
}

#[test]
fn pods_belong_to_workloads_through_owner_references() {
    let (cluster, _) = ClusterState::load(&[bundled()]).unwrap();
    let workload = |ns: &str, name: &str| {
        let w = &cluster.pod(cluster.find_pod(ns, name).unwrap()).workload;
        (w.kind.clone(), w.name.clone(), w.inferred)
    };
    assert_eq!(
        workload("shop", "cart-66b7f9d4c8-mq4tn"),
        (WorkloadKind::Deployment, "cart".into(), false)
    );
    assert_eq!(
        workload("shop", "redis-0"),
        (WorkloadKind::StatefulSet, "redis".into(), false)
    );
    assert_eq!(
        workload("monitoring", "node-agent-5xk2m"),
        (WorkloadKind::DaemonSet, "node-agent".into(), false)
    );
    assert_eq!(
        workload("batch", "report-29391840-7hz2p"),
        (WorkloadKind::CronJob, "report".into(), false)
    );
    // Its Job is not in the snapshot: the Job is as far as weir can see.
    assert_eq!(
        workload("batch", "report-29391780-k2l9d"),
        (WorkloadKind::Job, "report-29391780".into(), false)
    );
}

#[test]
fn owners_missing_from_the_snapshot_are_inferred_or_left_as_found() {
    let cluster = load_text(
        "
apiVersion: v1
kind: Pod
metadata:
  name: api-5f9c7d-abcde
  namespace: app
  labels: {pod-template-hash: 5f9c7d}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-5f9c7d, uid: u, controller: true}]
---
apiVersion: v1
kind: Pod
metadata: {name: loner, namespace: app}
---
apiVersion: v1
kind: Pod
metadata:
  name: thing-0
  namespace: app
  ownerReferences: [{apiVersion: example.com/v1, kind: Widget, name: thing, uid: u, controller: true}]
",
    )
    .unwrap();
    let w = |name: &str| {
        cluster
            .pod(cluster.find_pod("app", name).unwrap())
            .workload
            .clone()
    };
    assert_eq!(
        (
            w("api-5f9c7d-abcde").kind,
            w("api-5f9c7d-abcde").name,
            w("api-5f9c7d-abcde").inferred
        ),
        (WorkloadKind::Deployment, "api".to_owned(), true)
    );
    assert_eq!(
        (w("loner").kind, w("loner").name),
        (WorkloadKind::Pod, "loner".to_owned())
    );
    assert_eq!(w("thing-0").kind, WorkloadKind::Other("Widget".into()));
    // A namespace seen only through its pods still gets the name label namespace selectors rely on.
    let ns = cluster.namespace("app").unwrap();
    assert!(ns.inferred);
    assert_eq!(ns.labels["kubernetes.io/metadata.name"], "app");
}

#[test]
fn services_resolve_to_backends_and_target_ports() {
    let (cluster, _) = ClusterState::load(&[bundled()]).unwrap();
    let cart = cluster.find_service("shop", "cart").unwrap();
    let (port, backends) = cluster.resolve_service(cart, 80, Protocol::TCP).unwrap();
    assert_eq!(port.name, "http");
    assert_eq!(backends.len(), 1);
    assert_eq!(
        (backends[0].ip, backends[0].port),
        (ip("10.244.2.20"), 8080)
    );
    assert_eq!(
        backends[0].pod,
        cluster.find_pod("shop", "cart-66b7f9d4c8-mq4tn")
    );
    assert!(cluster.resolve_service(cart, 81, Protocol::TCP).is_none());
    let dns = cluster.find_service("kube-system", "kube-dns").unwrap();
    assert_eq!(
        cluster.resolve_service(dns, 53, Protocol::UDP).unwrap().1[0].port,
        53
    );
}

#[test]
fn without_endpoint_slices_the_selector_and_named_target_port_decide() {
    let cluster = load_text(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports: [{port: 80, targetPort: http}, {name: raw, port: 81, targetPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec:
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: app, labels: {app: other}}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.0.8}
",
    )
    .unwrap();
    let web = cluster.find_service("app", "web").unwrap();
    let backends = cluster.resolve_service(web, 80, Protocol::TCP).unwrap().1;
    assert_eq!(backends.len(), 1);
    assert_eq!((backends[0].ip, backends[0].port), (ip("10.244.0.7"), 8080));
    assert_eq!(
        cluster.resolve_service(web, 81, Protocol::TCP).unwrap().1[0].port,
        9000
    );
}

#[test]
fn typed_lists_json_and_merging_several_snapshots() {
    let pods = r#"{"apiVersion":"v1","kind":"PodList","items":[
        {"metadata":{"name":"a","namespace":"n"},"status":{"podIP":"10.0.0.1"}},
        {"metadata":{"name":"b","namespace":"n"},"status":{"podIP":"10.0.0.2"}}]}"#;
    let replacement =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\nstatus: {podIP: 10.0.0.3}\n";
    let mut loader = SnapshotLoader::default();
    loader
        .add_bytes(Path::new("pods.json"), pods.as_bytes())
        .unwrap();
    loader
        .add_bytes(Path::new("later.yaml"), replacement.as_bytes())
        .unwrap();
    let (cluster, report) = loader.finish();
    assert_eq!(report.loaded["Pod"], 3);
    assert_eq!(report.replaced, 1);
    assert_eq!(cluster.pods().len(), 2);
    assert_eq!(
        cluster.owner_of(ip("10.0.0.3")),
        cluster.find_pod("n", "b").map(IpOwner::Pod)
    );
    assert_eq!(cluster.owner_of(ip("10.0.0.2")), None);
}

#[test]
fn unknown_kinds_are_counted_and_skipped() {
    let mut loader = SnapshotLoader::default();
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\ndata: {k: v}\n---\n\
                apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\n---\n";
    loader
        .add_bytes(Path::new("x.yaml"), text.as_bytes())
        .unwrap();
    let report = loader.finish().1;
    assert_eq!(report.skipped["ConfigMap"], 1);
    assert_eq!(report.skipped["Deployment"], 1);
    assert!(report.loaded.is_empty());
}

#[test]
fn bad_input_names_the_file_the_object_and_the_field() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: eighty}]\n",
            "inline.yaml: Pod shop/web: field `spec.containers[0].ports[0].containerPort`: invalid type: string \"eighty\", expected i32",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nstatus: {podIP: 10.0.0.300}\n",
            "inline.yaml: Pod shop/web: field `status.podIP`: \"10.0.0.300\" is not an IP address",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n",
            "inline.yaml: Pod web: field `metadata.namespace`: missing: give -n/--namespace to place objects without one, as `kubectl apply -n` does (snapshots from `kubectl get ... -A -o yaml` keep their namespaces)",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  ports: [{port: 80, protocol: ICMP}]\n",
            "inline.yaml: Service n/s: field `spec.ports[0].protocol`: unsupported protocol \"ICMP\" (expected TCP, UDP or SCTP)",
        ),
        (
            "just a string\n",
            "inline.yaml: document 1: expected a Kubernetes object or List (a mapping with `kind`)",
        ),
        (
            "metadata: {name: x}\n",
            "inline.yaml: document 1: the object has no `kind`",
        ),
    ];
    for (text, message) in cases {
        let err = load_text(text).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    let err = load_text("kind: Pod\nmetadata: [unclosed\n").unwrap_err();
    assert!(matches!(err, LoadError::Syntax { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("inline.yaml: not a valid YAML or JSON snapshot"),
        "{err}"
    );
    let err = ClusterState::load(&[Path::new("/nonexistent/snapshot.yaml")]).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/snapshot.yaml: "),
        "{err}"
    );
}

#[test]
fn alias_bombs_hit_the_budget_instead_of_memory() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("kind: Pod\n");
    assert!(matches!(load_text(&text), Err(LoadError::Syntax { .. })));
}

fn at(text: &str) -> weir_model::Timestamp {
    weir_model::Timestamp::parse(text).unwrap()
}

#[test]
fn a_reused_address_belongs_to_whoever_held_it_at_the_time() {
    let cluster = load_text(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  spec: {podCIDR: 10.1.0.0/24, podCIDRs: [10.1.0.0/24]}
  status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: old-job, namespace: a, creationTimestamp: "2026-11-22T09:00:00Z"}
  spec: {nodeName: n1, containers: [{name: c}]}
  status:
    phase: Succeeded
    podIP: 10.1.0.5
    containerStatuses:
    - name: c
      ready: false
      restartCount: 0
      state: {terminated: {exitCode: 0, finishedAt: "2026-11-22T09:30:00Z"}}
- apiVersion: v1
  kind: Pod
  metadata: {name: new-pod, namespace: a, creationTimestamp: "2026-11-22T09:45:00Z"}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {phase: Running, podIP: 10.1.0.5}
"#,
    )
    .unwrap();
    let old = cluster.find_pod("a", "old-job").unwrap();
    let new = cluster.find_pod("a", "new-pod").unwrap();
    let owner = |t| cluster.owner_at(ip("10.1.0.5"), at(t));
    assert_eq!(owner("2026-11-22T09:10:00Z"), Some(IpOwner::Pod(old)));
    assert_eq!(owner("2026-11-22T09:30:00Z"), Some(IpOwner::Pod(old)));
    // Between the two, nobody in the snapshot held it: not guessed.
    assert_eq!(owner("2026-11-22T09:40:00Z"), None);
    assert_eq!(owner("2026-11-22T09:50:00Z"), Some(IpOwner::Pod(new)));
    assert_eq!(owner("2026-11-22T08:00:00Z"), None);
    assert_eq!(cluster.owner_of(ip("10.1.0.5")), Some(IpOwner::Pod(new)));
    assert!(cluster.in_pod_range(ip("10.1.0.77")));
    assert!(!cluster.in_pod_range(ip("10.2.0.1")));
    // Nodes are theirs at any time.
    assert!(matches!(
        cluster.owner_at(ip("192.168.0.1"), at("2000-01-01T00:00:00Z")),
        Some(IpOwner::Node(_))
    ));
}

#[test]
fn a_bad_pod_range_names_the_node_and_field() {
    let err = load_text(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.1.0.0/33]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Node n1") && err.contains("spec.podCIDRs[0]"),
        "{err}"
    );
}

/// A node's own addresses inside the pod range, by the rules of the common CNIs, and never one a pod holds.
#[test]
fn node_addresses_in_the_pod_range_are_the_nodes_with_the_rule_that_says_so() {
    use weir_cluster::NodeAddressSource;
    let cluster = load_text(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: kubenet}
  spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
  status: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: Hostname, address: kubenet}]}
- apiVersion: v1
  kind: Node
  metadata:
    name: calico
    annotations:
      projectcalico.org/IPv4Address: 192.168.0.2/24
      projectcalico.org/IPv4IPIPTunnelAddr: 10.50.7.192
      projectcalico.org/IPv4WireguardInterfaceAddr: 10.50.7.193
      projectcalico.org/IPv4VXLANTunnelAddr: not-an-address
  status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
- apiVersion: v1
  kind: Node
  metadata:
    name: cilium
    annotations: {network.cilium.io/ipv4-cilium-host: 10.60.0.77, io.cilium.network.ipv6-cilium-host: "fd00:60::77"}
  spec: {podCIDR: 10.60.0.0/24}
- apiVersion: v1
  kind: Node
  metadata: {name: taken}
  spec: {podCIDR: 10.70.0.0/24}
- apiVersion: v1
  kind: Pod
  metadata: {name: squatter, namespace: a}
  spec: {nodeName: taken, containers: [{name: c}]}
  status: {phase: Running, podIP: 10.70.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: tunnel-squatter, namespace: a}
  spec: {nodeName: calico, containers: [{name: c}]}
  status: {phase: Running, podIP: 10.50.7.193}
"#,
    )
    .unwrap();
    let node_of = |address: &str| match cluster.owner_of(ip(address)) {
        Some(IpOwner::Node(id)) => {
            let node = cluster.node(id);
            let source = node.address_source(ip(address)).unwrap().clone();
            Some((node.name.clone(), source))
        }
        _ => None,
    };
    let cidr = |t: &str| weir_model::Cidr::parse(t).unwrap();
    assert_eq!(
        node_of("10.244.1.1"),
        Some((
            "kubenet".into(),
            NodeAddressSource::PodCidrGateway(cidr("10.244.1.0/24"))
        ))
    );
    assert_eq!(
        node_of("10.244.1.0"),
        Some((
            "kubenet".into(),
            NodeAddressSource::PodCidrNetwork(cidr("10.244.1.0/24"))
        ))
    );
    assert_eq!(
        node_of("fd00:10:244:1::1"),
        Some((
            "kubenet".into(),
            NodeAddressSource::PodCidrGateway(cidr("fd00:10:244:1::/64"))
        ))
    );
    assert_eq!(
        node_of("192.168.0.1"),
        Some((
            "kubenet".into(),
            NodeAddressSource::Status("InternalIP".into())
        ))
    );
    assert_eq!(
        node_of("10.244.1.2"),
        None,
        "any other pod-range address stays unknown"
    );
    assert_eq!(
        node_of("10.50.7.192"),
        Some((
            "calico".into(),
            NodeAddressSource::Annotation("projectcalico.org/IPv4IPIPTunnelAddr".into())
        ))
    );
    // The prefix of IPv4Address is dropped; the address is the status one, which says so first.
    assert_eq!(
        node_of("192.168.0.2"),
        Some((
            "calico".into(),
            NodeAddressSource::Status("InternalIP".into())
        ))
    );
    assert_eq!(
        node_of("10.60.0.77"),
        Some((
            "cilium".into(),
            NodeAddressSource::Annotation("network.cilium.io/ipv4-cilium-host".into())
        ))
    );
    assert_eq!(
        node_of("fd00:60::77"),
        Some((
            "cilium".into(),
            NodeAddressSource::Annotation("io.cilium.network.ipv6-cilium-host".into())
        ))
    );
    // Pods come first: an inferred address a pod holds is the pod's.
    let squatter = cluster.find_pod("a", "squatter").unwrap();
    assert_eq!(
        cluster.owner_of(ip("10.70.0.1")),
        Some(IpOwner::Pod(squatter))
    );
    let tunnel = cluster.find_pod("a", "tunnel-squatter").unwrap();
    assert_eq!(
        cluster.owner_of(ip("10.50.7.193")),
        Some(IpOwner::Pod(tunnel))
    );
    assert_eq!(cluster.ip_conflicts(), 0);
    let calico = cluster.nodes().iter().find(|n| n.name == "calico").unwrap();
    assert!(!calico.has_address(ip("10.50.7.193")));

    // Agents' reports: an address one node reports is that node's; one every node reports, a pod's or a
    // Service's, or one of a node the cluster lacks is nobody's new address.
    let iface = |interface: &str, address: &str| weir_model::ingest::InterfaceAddress {
        interface: interface.into(),
        ip: ip(address),
    };
    let reported = std::collections::BTreeMap::from([
        (
            "taken".to_owned(),
            vec![
                iface("vxlan.calico", "10.70.0.200"),
                iface("docker0", "172.17.0.1"),
                iface("x", "10.70.0.1"),
            ],
        ),
        ("kubenet".to_owned(), vec![iface("docker0", "172.17.0.1")]),
        ("ghost".to_owned(), vec![iface("eth0", "192.168.9.9")]),
    ]);
    let with = cluster.with_node_interfaces(&reported);
    let taken = with.nodes().iter().position(|n| n.name == "taken").unwrap();
    assert_eq!(
        with.owner_of(ip("10.70.0.200")),
        Some(IpOwner::Node(weir_cluster::NodeId(taken as u32)))
    );
    assert_eq!(
        with.node(weir_cluster::NodeId(taken as u32))
            .address_source(ip("10.70.0.200")),
        Some(&NodeAddressSource::Interface("vxlan.calico".into()))
    );
    assert_eq!(
        with.owner_of(ip("172.17.0.1")),
        None,
        "reported by two nodes"
    );
    assert_eq!(with.owner_of(ip("10.70.0.1")), Some(IpOwner::Pod(squatter)));
    assert_eq!(with.owner_of(ip("192.168.9.9")), None);
}

#[test]
fn policies_of_other_api_groups_are_not_taken_for_kubernetes_ones_and_are_counted() {
    let text = "
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: shop}}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c, image: x}]}
  status: {phase: Running, podIP: 10.0.0.5}
# Calico's NetworkPolicy: same kind name, another group; not networking.k8s.io's.
- apiVersion: projectcalico.org/v3
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: shop}
  spec: {selector: all(), types: [Ingress, Egress]}
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: l7, namespace: shop}
  spec: {endpointSelector: {}}
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: l7-b, namespace: shop}
  spec: {endpointSelector: {}}
- apiVersion: policy.networking.k8s.io/v1alpha1
  kind: AdminNetworkPolicy
  metadata: {name: sec-ops}
  spec: {priority: 10, subject: {namespaces: {}}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web, namespace: shop}
  spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
- apiVersion: monitoring.coreos.com/v1
  kind: ServiceMonitor
  metadata: {name: m, namespace: shop}
";
    let mut loader = weir_cluster::SnapshotLoader::default();
    loader
        .add_bytes(std::path::Path::new("mixed.yaml"), text.as_bytes())
        .unwrap();
    let (cluster, report) = loader.finish();
    // Only the Kubernetes NetworkPolicy is one.
    assert_eq!(cluster.policies().len(), 1);
    assert_eq!(report.loaded["NetworkPolicy"], 1);
    let unevaluated: Vec<(&str, usize)> = report
        .unevaluated_policies
        .iter()
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    // The network-policy-api's kinds are evaluated, so not counted; a version weir does not read would be.
    assert_eq!(
        unevaluated,
        [
            ("CiliumNetworkPolicy (cilium.io)", 2),
            ("NetworkPolicy (projectcalico.org)", 1),
        ]
    );
    assert_eq!(report.skipped.get("ServiceMonitor"), Some(&1));
    // The network-policy-api's kinds are read (translated to the v1alpha2 form).
    let cnp = cluster.cluster_policies();
    assert_eq!(cnp.len(), 1);
    assert_eq!(cnp[0].label(), "AdminNetworkPolicy/sec-ops");
    assert_eq!(cnp[0].tier, weir_cluster::cnp::Tier::Admin);
}

#[test]
fn a_bad_cluster_network_policy_names_its_field() {
    let err = load_text(
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: sec-ops}
spec: {tier: Admin, priority: 5000, subject: {namespaces: {}}}
",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("ClusterNetworkPolicy")
            && err.contains("sec-ops")
            && err.contains("spec.priority"),
        "{err}"
    );
}

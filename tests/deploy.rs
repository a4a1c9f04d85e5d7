//! The Kubernetes manifests in `deploy/kubernetes`, rendered by `kubectl kustomize` (base and the example overlay)
//! and parsed into k8s-openapi types, hold to what the security team will check: the agent gets NET_RAW and nothing
//! else, the aggregator passes Pod Security "restricted", RBAC is read-only on exactly what weir reads, and weir's
//! own NetworkPolicies, judged by weir's own engine, let agents and labelled readers in on their own ports and
//! the aggregator out to DNS and the API server, and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::json;
use weir_cluster::SnapshotLoader;
use weir_model::Protocol;
use weir_policy::{PolicySet, VerdictCache};

fn render(dir: &str) -> Vec<serde_json::Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl (with kustomize) must be installed; .ci/run installs it");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<serde_json::Value>(d).unwrap())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(objects: &[serde_json::Value], kind: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(objects: &[serde_json::Value], kind: &str) -> T {
    let mut all = typed::<T>(objects, kind);
    assert_eq!(all.len(), 1, "exactly one {kind}");
    all.remove(0)
}

fn seccomp_runtime_default(spec: &PodSpec, c: &Container) -> bool {
    let kind = c
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| {
            spec.security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.as_ref())
        })
        .map(|p| p.type_.as_str());
    matches!(kind, Some("RuntimeDefault" | "Localhost"))
}

/// The Pod Security Standard "restricted" profile (and everything "baseline" forbids), as a list of violations.
fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    for (flag, name) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if flag == Some(true) {
            v.push(name.to_owned());
        }
    }
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for vol in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(vol).unwrap();
        for key in value.as_object().unwrap().keys() {
            if key != "name" && !allowed_volumes.contains(&key.as_str()) {
                v.push(format!("volume {} of type {key}", vol.name));
            }
        }
    }
    let pod_non_root = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        == Some(true);
    if spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0) {
        v.push("pod runAsUser 0".into());
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{} privileged", c.name));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{} allowPrivilegeEscalation not false", c.name));
        }
        if !(pod_non_root || sc.run_as_non_root == Some(true)) || sc.run_as_non_root == Some(false)
        {
            v.push(format!("{} not runAsNonRoot", c.name));
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{} runAsUser 0", c.name));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!("{} does not drop ALL capabilities", c.name));
        }
        for add in caps.add.iter().flatten() {
            if add != "NET_BIND_SERVICE" {
                v.push(format!("{} adds {add}", c.name));
            }
        }
        if !seccomp_runtime_default(spec, c) {
            v.push(format!(
                "{} without a RuntimeDefault seccomp profile",
                c.name
            ));
        }
        for p in c.ports.iter().flatten() {
            if p.host_port.is_some() {
                v.push(format!("{} hostPort", c.name));
            }
        }
    }
    v
}

fn check(objects: &[serde_json::Value]) {
    // Namespaces and Pod Security.
    let namespaces: Vec<Namespace> = typed(objects, "Namespace");
    let level = |name: &str| {
        namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce").cloned())
    };
    assert_eq!(level("weir-system").as_deref(), Some("restricted"));
    assert_eq!(level("weir-agent").as_deref(), Some("privileged"));
    // The privileged namespace holds the agent and what it needs, nothing else.
    let in_agent_ns: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "weir-agent")
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        in_agent_ns,
        BTreeSet::from([
            "DaemonSet/weir-agent".to_owned(),
            "ServiceAccount/weir-agent".to_owned(),
        ])
    );
    // No secret ships with weir: agents use their pods' ServiceAccount tokens and the read token is the user's.
    assert!(
        typed::<serde_json::Value>(objects, "Secret").is_empty(),
        "a Secret in the manifests is a secret everyone who reads the repository knows"
    );

    // The agent.
    let ds: DaemonSet = one(objects, "DaemonSet");
    let spec = ds.spec.unwrap().template.spec.unwrap();
    let agent_spec = spec.clone();
    assert_eq!(spec.host_network, Some(true));
    assert_ne!(spec.host_pid, Some(true));
    assert_ne!(spec.host_ipc, Some(true));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );
    assert!(
        spec.volumes.iter().flatten().all(|v| v.host_path.is_none()),
        "no hostPath"
    );
    assert_eq!(spec.containers.len(), 1);
    let agent = &spec.containers[0];
    let sc = agent.security_context.clone().unwrap();
    let caps = sc.capabilities.clone().unwrap();
    assert_eq!(
        caps.add,
        Some(vec!["NET_RAW".to_owned()]),
        "NET_RAW and nothing else"
    );
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(seccomp_runtime_default(&spec, agent));
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));
    assert!(
        agent
            .args
            .iter()
            .flatten()
            .any(|a| a == "--node=$(NODE_NAME)")
    );
    assert_eq!(agent.args.as_ref().unwrap()[0], "agent");
    let resources = agent.resources.clone().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
    assert!(agent.liveness_probe.is_some() && agent.readiness_probe.is_some());

    // The aggregator.
    let deploy: Deployment = one(objects, "Deployment");
    let spec = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(restricted_violations(&spec), Vec::<String>::new());
    let aggregator = &spec.containers[0];
    assert_eq!(aggregator.args.as_ref().unwrap()[0], "aggregator");
    let sc = aggregator.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(aggregator.liveness_probe.is_some() && aggregator.readiness_probe.is_some());
    let resources = aggregator.resources.clone().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .any(|v| v.persistent_volume_claim.is_some()),
        "a data volume"
    );
    // One image for both roles.
    assert_eq!(aggregator.image, agent.image);
    // The agent shows its pod's ServiceAccount token for the weir audience (short-lived, bound to the pod and so
    // to its node); the aggregator has it reviewed and wants the read token, from a Secret the user creates.
    let projected: Vec<_> = agent_spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .collect();
    assert_eq!(projected.len(), 1, "{projected:?}");
    assert_eq!(projected[0].audience.as_deref(), Some("weir"));
    assert!(projected[0].expiration_seconds.is_some_and(|s| s <= 3600));
    assert!(
        agent
            .args
            .iter()
            .flatten()
            .any(|a| a == "--token-file=/var/run/secrets/weir/token")
    );
    let aggregator_args = aggregator.args.clone().unwrap_or_default();
    for arg in [
        "--agent-auth=kubernetes",
        "--agent-audience=weir",
        "--agent-service-account=weir-agent/weir-agent",
        "--read-token-file=/etc/weir/read-token/token",
    ] {
        assert!(
            aggregator_args.iter().any(|a| a == arg),
            "{arg} in {aggregator_args:?}"
        );
    }
    assert!(spec.volumes.iter().flatten().any(|v| {
        v.secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some("weir-read-token"))
    }));

    // RBAC: read-only, on exactly what the aggregator reads, bound to it alone, and token reviews (a question,
    // not a change); nothing for the agent.
    let role: ClusterRole = one(objects, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        let reviews = rule.resources.as_deref() == Some(&["tokenreviews".to_owned()][..]);
        let expected = if reviews {
            BTreeSet::from(["create"])
        } else {
            BTreeSet::from(["get", "list", "watch"])
        };
        assert_eq!(verbs, expected, "{rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert_ne!(resource, "*");
                granted.insert(format!("{group}/{resource}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "/namespaces",
        "/pods",
        "/services",
        "/nodes",
        "discovery.k8s.io/endpointslices",
        "networking.k8s.io/networkpolicies",
        "policy.networking.k8s.io/clusternetworkpolicies",
        "policy.networking.k8s.io/adminnetworkpolicies",
        "policy.networking.k8s.io/baselineadminnetworkpolicies",
        "apps/replicasets",
        "batch/jobs",
        "authentication.k8s.io/tokenreviews",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(granted, expected);
    let binding: ClusterRoleBinding = one(objects, "ClusterRoleBinding");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        ("weir-aggregator", Some("weir-system"))
    );
    assert!(typed::<serde_json::Value>(objects, "Role").is_empty());
    assert!(typed::<serde_json::Value>(objects, "RoleBinding").is_empty());

    // weir's own NetworkPolicies: default deny, then one TCP port in.
    let policies: Vec<NetworkPolicy> = typed(objects, "NetworkPolicy");
    let deny = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("default-deny"))
        .unwrap();
    let deny = deny.spec.as_ref().unwrap();
    assert!(
        deny.pod_selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_none() && s.match_expressions.is_none())
    );
    assert!(deny.ingress.is_none() && deny.egress.is_none());
    assert_eq!(
        deny.policy_types.clone().unwrap(),
        vec!["Ingress".to_owned(), "Egress".to_owned()]
    );
    assert_eq!(policies.len(), 2, "default-deny and weir-aggregator only");

    // The ports agree: agents send to the aggregator's ingest listener through the Service.
    let deploy: Deployment = one(objects, "Deployment");
    let aggregator_args = deploy.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(aggregator_args.contains(&"--listen=0.0.0.0:9480".to_owned()));
    assert!(aggregator_args.contains(&"--ingest-listen=0.0.0.0:9481".to_owned()));
    let agent: DaemonSet = one(objects, "DaemonSet");
    let agent_args = agent.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        agent_args.contains(&"--aggregator=http://weir-aggregator.weir-system.svc:9481".to_owned()),
        "{agent_args:?}"
    );
    let service: Service = one(objects, "Service");
    let service_ports: Vec<(Option<String>, i32)> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    assert_eq!(
        service_ports,
        vec![(Some("http".into()), 9480), (Some("ingest".into()), 9481)]
    );
}

/// weir's own NetworkPolicies, judged by weir's policy engine in a small cluster: a node running an agent
/// (hostNetwork, the node's address), another running the aggregator with the labels its Deployment gives it, cluster DNS, a
/// Prometheus labelled for API access, and an ordinary pod.
fn judge_weir_policies(
    objects: &[serde_json::Value],
) -> impl Fn(&str, &str, u16, Protocol) -> bool {
    let deploy: Deployment = one(objects, "Deployment");
    let aggregator_labels = deploy
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    let namespace = |name: &str| {
        let mut labels = json!({"kubernetes.io/metadata.name": name});
        // The administrator let this namespace's labelled pods read weir.
        if name == "monitoring" {
            labels["weir.dev/api-access"] = json!("true");
        }
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    };
    let pod = |ns: &str, name: &str, labels: serde_json::Value, ip: &str, host: bool| {
        let node = if host { "node-2" } else { "node-1" };
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
               "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "c", "image": "x"}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    let mut loader = SnapshotLoader::default();
    let mut cluster = vec![
        namespace("kube-system"),
        namespace("shop"),
        namespace("monitoring"),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
               "spec": {"podCIDR": "10.244.1.0/24"},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"}]}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2"},
               "spec": {"podCIDR": "10.244.2.0/24"},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.12"}]}}),
        pod(
            "weir-system",
            "weir-aggregator-0",
            json!(aggregator_labels),
            "10.244.1.10",
            false,
        ),
        pod(
            "weir-agent",
            "weir-agent-0",
            json!({"app.kubernetes.io/name": "weir-agent"}),
            "10.0.0.12",
            true,
        ),
        pod(
            "kube-system",
            "coredns-0",
            json!({"k8s-app": "kube-dns"}),
            "10.244.1.2",
            false,
        ),
        pod("shop", "web-0", json!({"app": "web"}), "10.244.1.20", false),
        // A pod that gave itself the reader's label, in a namespace nobody let read weir.
        pod(
            "shop",
            "rogue-0",
            json!({"weir.dev/api-access": "true"}),
            "10.244.1.21",
            false,
        ),
        pod(
            "monitoring",
            "prometheus-0",
            json!({"weir.dev/api-access": "true"}),
            "10.244.1.30",
            false,
        ),
    ];
    cluster.extend(
        objects
            .iter()
            .filter(|o| o["kind"] == "Namespace" || o["kind"] == "NetworkPolicy")
            .cloned(),
    );
    for object in cluster {
        loader.add_value("test", object).unwrap();
    }
    let set = PolicySet::new(Arc::new(loader.finish().0)).unwrap();
    let ip = |name: &str| -> IpAddr {
        match name {
            // The agent's node; the aggregator runs on the other one.
            "node" => "10.0.0.12",
            "own node" => "10.0.0.11",
            "aggregator" => "10.244.1.10",
            "dns" => "10.244.1.2",
            "web" => "10.244.1.20",
            "rogue" => "10.244.1.21",
            "prometheus" => "10.244.1.30",
            "api-server" => "172.18.0.2",
            other => other,
        }
        .parse()
        .unwrap()
    };
    move |from, to, port, protocol| {
        let mut cache = VerdictCache::new();
        set.judge(&mut cache, ip(from), ip(to), Some(port), protocol)
            .allowed()
    }
}

/// What both the base and the overlay allow and deny.
fn check_weir_policies(allowed: &impl Fn(&str, &str, u16, Protocol) -> bool) {
    let tcp = Protocol::TCP;
    assert!(allowed("node", "aggregator", 9481, tcp), "agents' flows");
    assert!(
        allowed("prometheus", "aggregator", 9480, tcp),
        "a labelled reader"
    );
    assert!(
        !allowed("web", "aggregator", 9480, tcp),
        "an unlabelled pod reads the API"
    );
    assert!(
        !allowed("rogue", "aggregator", 9480, tcp),
        "a pod labelled itself a reader outside the namespaces an administrator labelled"
    );
    assert!(
        !allowed("node", "aggregator", 9480, tcp),
        "the API from a node address"
    );
    assert!(
        allowed("own node", "aggregator", 9480, tcp),
        "the kubelet's probes (its own node is always let in)"
    );
    assert!(
        !allowed("web", "aggregator", 22, tcp),
        "a port weir does not serve"
    );
    assert!(
        allowed("aggregator", "dns", 53, Protocol::UDP),
        "cluster DNS"
    );
    assert!(
        allowed("aggregator", "dns", 53, tcp),
        "cluster DNS over TCP"
    );
    assert!(
        !allowed("aggregator", "web", 53, Protocol::UDP),
        "DNS to a pod that is not cluster DNS"
    );
    assert!(
        allowed("aggregator", "api-server", 6443, tcp),
        "the Kubernetes API"
    );
    assert!(
        !allowed("aggregator", "web", 80, tcp),
        "the aggregator reaching workloads"
    );
}

#[test]
fn the_base_manifests_ask_for_no_more_than_weir_needs() {
    let objects = render("deploy/kubernetes");
    check(&objects);
    let allowed = judge_weir_policies(&objects);
    check_weir_policies(&allowed);
    // The base cannot know the node subnet: any source may send flows (with an agent's token, as its node).
    assert!(allowed("web", "aggregator", 9481, Protocol::TCP));
}

#[test]
fn the_example_overlay_keeps_every_property_of_the_base() {
    let objects = render("deploy/kubernetes/overlays/example");
    check(&objects);
    let deploy: Deployment = one(&objects, "Deployment");
    let args = deploy.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.iter().any(|a| a == "--learn=24h"), "{args:?}");
    // The overlay narrows agents' port to the node subnet: pods can no longer send flows.
    let allowed = judge_weir_policies(&objects);
    check_weir_policies(&allowed);
    assert!(!allowed("web", "aggregator", 9481, Protocol::TCP));
    assert!(!allowed("prometheus", "aggregator", 9481, Protocol::TCP));
}

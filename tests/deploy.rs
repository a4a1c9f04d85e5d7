//! The Kubernetes manifests in `deploy/kubernetes`, rendered by `kubectl kustomize` (base and the example overlay)
//! and parsed into k8s-openapi types, hold to what the security team will check: the agent gets NET_RAW and nothing
//! else, the aggregator passes Pod Security "restricted", RBAC is read-only on exactly what weir reads, and weir's
//! own NetworkPolicy leaves one port open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

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
            "Secret/weir-agent-token".to_owned(),
            "ServiceAccount/weir-agent".to_owned(),
        ])
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
    // Both mount the agent token from the same Secret.
    let mounts_token = |spec: &PodSpec| {
        spec.volumes.iter().flatten().any(|v| {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some("weir-agent-token"))
        })
    };
    assert!(mounts_token(&spec) && mounts_token(&agent_spec));

    // RBAC: read-only, on exactly what the aggregator reads, bound to it alone; nothing for the agent.
    let role: ClusterRole = one(objects, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{rule:?}");
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
        "apps/replicasets",
        "batch/jobs",
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
    let open = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("weir-aggregator"))
        .unwrap()
        .spec
        .clone()
        .unwrap();
    let ingress = open.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    let ports: Vec<String> = ingress[0]
        .ports
        .iter()
        .flatten()
        .map(|p| format!("{}/{:?}", p.protocol.as_deref().unwrap_or("TCP"), p.port))
        .collect();
    assert_eq!(ports, vec!["TCP/Some(Int(9480))".to_owned()]);
}

#[test]
fn the_base_manifests_ask_for_no_more_than_weir_needs() {
    check(&render("deploy/kubernetes"));
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
}

//! Truth tables for every NetworkPolicy rule, on the x/y/z × a/b/c cluster of the upstream conformance tests.
//! Rows are sources and columns destinations, both in the order x/a x/b x/c y/a y/b y/c z/a z/b z/c;
//! `.` is allowed, `X` denied.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use common::{expect, policy_set, table, tcp};
use weir_model::Protocol;
use weir_policy::{Decision, ProbePort, VerdictCache};

const ALL_OPEN: [&str; 9] = ["... ... ..."; 9];

fn check(policies: &str, probe: (ProbePort, Protocol), rows: [&str; 9]) {
    let set = policy_set(policies);
    assert_eq!(
        table(&set, probe.0, probe.1),
        expect(rows),
        "policies:\n{policies}"
    );
}

#[test]
fn no_policies_allow_everything() {
    check("", tcp(80), ALL_OPEN);
}

const DENY_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

#[test]
fn default_deny_ingress_isolates_only_its_namespace_and_spares_self() {
    check(
        DENY_INGRESS_X,
        tcp(80),
        [
            ".XX ... ...",
            "X.X ... ...",
            "XX. ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
        ],
    );
}

#[test]
fn policy_types_default_to_ingress_when_there_are_no_egress_rules() {
    // No policyTypes and an empty egress list: the API defaults policyTypes to [Ingress] only.
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress: []
";
    check(policy, tcp(80), table_rows_of(DENY_INGRESS_X));
}

fn table_rows_of(policies: &str) -> [&'static str; 9] {
    // The same table as another policy set, checked by comparing tables directly.
    let set = policy_set(policies);
    let text = table(&set, ProbePort::Number(80), Protocol::TCP);
    let rows: Vec<&'static str> = text
        .lines()
        .map(|l| &*Box::leak(l.split_once(' ').unwrap().1.to_owned().into_boxed_str()))
        .collect();
    rows.try_into().unwrap()
}

#[test]
fn egress_rules_without_policy_types_imply_egress_isolation() {
    // An egress rule allowing only z: x pods become isolated for egress (and for ingress: Ingress is implied).
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: z}}
";
    check(
        policy,
        tcp(80),
        [
            ".XX XXX ...",
            "X.X XXX ...",
            "XX. XXX ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
            "XXX ... ...",
        ],
    );
}

#[test]
fn allow_all_ingress_rule_vs_no_rules() {
    // `ingress: [{}]` is one rule matching everything; `from: []` and `ports: []` are the same as absent.
    for rule in ["- {}", "- from: []", "- ports: []\n    from: []"] {
        let policy = format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-all, namespace: x}}
spec:
  podSelector: {{}}
  ingress:
  {rule}
"
        );
        check(
            &format!("{DENY_INGRESS_X}\n---\n{policy}"),
            tcp(80),
            ALL_OPEN,
        );
    }
}

#[test]
fn default_deny_egress() {
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
",
        tcp(80),
        [
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "XXX X.X XXX",
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "... ... ...",
        ],
    );
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let and = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
";
    check(
        and,
        tcp(80),
        [
            "... ... ...",
            "X.. ... ...",
            "X.. ... ...",
            "X.. ... ...",
            "... ... ...",
            "X.. ... ...",
            "X.. ... ...",
            "X.. ... ...",
            "X.. ... ...",
        ],
    );
    let or = and.replace("      podSelector", "    - podSelector");
    check(
        &or,
        tcp(80),
        [
            "... ... ...",
            "... ... ...",
            "X.. ... ...",
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "X.. ... ...",
            "X.. ... ...",
            "X.. ... ...",
        ],
    );
}

#[test]
fn namespace_selector_alone_and_empty() {
    // namespaceSelector without podSelector: every pod there. `{}`: every namespace.
    let policy = |selector: &str| {
        format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: y}}
spec:
  podSelector: {{matchLabels: {{pod: c}}}}
  ingress:
  - from:
    - namespaceSelector: {selector}
"
        )
    };
    check(
        &policy("{matchLabels: {ns: z}}"),
        tcp(80),
        [
            "... ..X ...",
            "... ..X ...",
            "... ..X ...",
            "... ..X ...",
            "... ..X ...",
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "... ... ...",
        ],
    );
    check(&policy("{}"), tcp(80), ALL_OPEN);
}

#[test]
fn match_expressions() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: z}
spec:
  podSelector:
    matchExpressions:
    - {key: pod, operator: NotIn, values: [a]}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: ns, operator: In, values: [x, z]}
      podSelector:
        matchExpressions:
        - {key: pod, operator: Exists}
        - {key: missing, operator: DoesNotExist}
";
    check(
        policy,
        tcp(80),
        [
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "... ... .XX",
            "... ... .XX",
            "... ... .XX",
            "... ... ...",
            "... ... ...",
            "... ... ...",
        ],
    );
}

const NAMED_PORT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: serve-81-tcp
";

#[test]
fn named_ports_resolve_against_the_destination_with_the_protocol() {
    let into_x_denied = [
        ".XX ... ...",
        "X.X ... ...",
        "XX. ... ...",
        "XXX ... ...",
        "XXX ... ...",
        "XXX ... ...",
        "XXX ... ...",
        "XXX ... ...",
        "XXX ... ...",
    ];
    check(NAMED_PORT, tcp(81), ALL_OPEN);
    check(NAMED_PORT, tcp(80), into_x_denied);
    // 81/UDP is named serve-81-udp, not serve-81-tcp.
    check(
        NAMED_PORT,
        (ProbePort::Number(81), Protocol::UDP),
        into_x_denied,
    );
    // A probe by name resolves per destination too.
    check(
        NAMED_PORT,
        (ProbePort::Name("serve-81-tcp".into()), Protocol::TCP),
        ALL_OPEN,
    );
    check(
        NAMED_PORT,
        (ProbePort::Name("serve-80-tcp".into()), Protocol::TCP),
        into_x_denied,
    );
}

#[test]
fn end_port_ranges_and_protocol_only_ports() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - {port: 80, endPort: 81, protocol: TCP}
    - {protocol: UDP}
";
    let a_closed = [
        "... ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
        "X.. ... ...",
    ];
    check(policy, tcp(80), ALL_OPEN);
    check(policy, tcp(81), ALL_OPEN);
    check(policy, tcp(82), a_closed);
    check(policy, tcp(79), a_closed);
    check(policy, (ProbePort::Number(9999), Protocol::UDP), ALL_OPEN);
    check(policy, (ProbePort::Number(80), Protocol::SCTP), a_closed);
}

#[test]
fn ip_block_with_except_matches_pod_addresses() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.244.2.0/24
        except: [10.244.2.2/32]
";
    check(
        policy,
        tcp(80),
        [
            "..X ... ...",
            "..X ... ...",
            "... ... ...",
            "... ... ...",
            "..X ... ...",
            "... ... ...",
            "..X ... ...",
            "..X ... ...",
            "..X ... ...",
        ],
    );
}

#[test]
fn egress_and_ingress_both_needed_between_pods() {
    // x/a may only send to y/b; y/b may only receive from x/b.
    let policies = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: b}}
";
    check(
        policies,
        tcp(80),
        [
            ".XX XXX XXX",
            "... ... ...",
            "... .X. ...",
            "... .X. ...",
            "... ... ...",
            "... .X. ...",
            "... .X. ...",
            "... .X. ...",
            "... .X. ...",
        ],
    );
    let set = common::policy_set(policies);
    let cluster = set.cluster();
    let xa = cluster.find_pod("x", "a").unwrap();
    let yb = cluster.find_pod("y", "b").unwrap();
    let m = set.reach_matrix(&[xa, yb], &ProbePort::Number(80), Protocol::TCP);
    assert_eq!(
        m.get(0, 1),
        (true, false),
        "x/a → y/b: egress allows, ingress denies"
    );
}

#[test]
fn policies_are_a_union() {
    let policies = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-z-b, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}]
";
    check(
        policies,
        tcp(80),
        [
            ".XX ... ...",
            "X.X ... ...",
            "XX. ... ...",
            ".XX ... ...",
            ".XX ... ...",
            ".XX ... ...",
            "XXX ... ...",
            "... ... ...",
            "XXX ... ...",
        ],
    );
}

#[test]
fn kubernetes_documentation_example() {
    // The `test-network-policy` example of the Kubernetes NetworkPolicy concept page, adapted to this cluster:
    // ingress to x/pod=a from 172.17.0.0/16 except 172.17.1.0/24, from namespaces labelled ns=y, and from
    // x pods labelled pod=b, on 6379/TCP; egress from x/a to 10.0.0.0/24 on 5978/TCP.
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          ns: y
    - podSelector:
        matchLabels:
          pod: b
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
";
    check(
        policy,
        tcp(6379),
        [
            ".XX XXX XXX",
            "... ... ...",
            "X.. ... ...",
            "... ... ...",
            "... ... ...",
            "... ... ...",
            "X.. ... ...",
            "X.. ... ...",
            "X.. ... ...",
        ],
    );
    let set = policy_set(policy);
    let mut cache = VerdictCache::new();
    let judge = |cache: &mut VerdictCache, src: &str, dst: &str, port| {
        set.judge(
            cache,
            src.parse().unwrap(),
            dst.parse().unwrap(),
            Some(port),
            Protocol::TCP,
        )
    };
    assert!(judge(&mut cache, "172.17.0.9", "10.244.1.1", 6379).allowed());
    assert!(!judge(&mut cache, "172.17.1.9", "10.244.1.1", 6379).allowed());
    assert!(!judge(&mut cache, "172.18.0.9", "10.244.1.1", 6379).allowed());
    assert!(judge(&mut cache, "10.244.1.1", "10.0.0.77", 5978).allowed());
    assert!(!judge(&mut cache, "10.244.1.1", "10.0.0.77", 5979).allowed());
    assert!(!judge(&mut cache, "10.244.1.1", "10.0.1.77", 5978).allowed());
    // Traffic between two external addresses is not NetworkPolicy's business.
    let v = judge(&mut cache, "8.8.8.8", "1.1.1.1", 53);
    assert_eq!(
        (v.egress, v.ingress),
        (Decision::NotApplicable, Decision::NotApplicable)
    );
}

#[test]
fn own_node_always_reaches_its_pods_and_other_nodes_need_an_ip_block() {
    let set = policy_set(DENY_INGRESS_X);
    let mut cache = VerdictCache::new();
    let xa = "10.244.1.1".parse().unwrap();
    let own = set.judge(
        &mut cache,
        common::NODE_1.parse().unwrap(),
        xa,
        Some(80),
        Protocol::TCP,
    );
    assert_eq!(own.ingress, Decision::OwnNode);
    assert_eq!(own.egress, Decision::NotApplicable);
    let other = set.judge(
        &mut cache,
        common::NODE_2.parse().unwrap(),
        xa,
        Some(80),
        Protocol::TCP,
    );
    assert_eq!(other.ingress, Decision::Denied);
}

#[test]
fn host_network_pods_are_not_isolated_and_selectors_do_not_match_them() {
    let host_pod = "
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: y, labels: {pod: b}}
spec:
  hostNetwork: true
  nodeName: node-2
  containers: [{name: agent, image: agent}]
status:
  phase: Running
  podIP: 192.168.0.2
  podIPs: [{ip: 192.168.0.2}]
";
    // Deny all ingress in y, then allow from pods labelled pod=b anywhere: the hostNetwork pod carries the
    // label but is its node's traffic, so only y/a... no: it is on node-2 with every y pod, which its node may
    // always reach. x pods on node-1 show the selector does not match it as a source of its own.
    let policies = format!(
        "{host_pod}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: only-b, namespace: x}}
spec:
  podSelector: {{}}
  ingress:
  - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: b}}}}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-all, namespace: y}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress, Egress]
"
    );
    let set = policy_set(&policies);
    let cluster = set.cluster();
    let agent = cluster.find_pod("y", "agent").unwrap();
    let xa = cluster.find_pod("x", "a").unwrap();
    let yb = cluster.find_pod("y", "b").unwrap();
    let m = set.reach_matrix(&[agent, xa, yb], &ProbePort::Number(80), Protocol::TCP);
    assert_eq!(
        m.get(0, 1),
        (true, false),
        "agent → x/a: not matched by pod=b (it is node-2 traffic)"
    );
    assert_eq!(
        m.get(1, 0),
        (true, true),
        "x/a → agent: a hostNetwork pod is not isolated"
    );
    assert_eq!(
        m.get(0, 2),
        (true, true),
        "agent → y/b: same node, always allowed"
    );
    assert_eq!(
        m.get(2, 0),
        (true, true),
        "y/b → agent: egress to its own node, always allowed"
    );
    assert_eq!(
        m.get(2, 1),
        (false, true),
        "y/b → x/a: y/b is egress-isolated"
    );
}

#[test]
fn traffic_without_ports_only_matches_rules_without_ports() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
";
    let set = policy_set(policy);
    let mut cache = VerdictCache::new();
    let ping = |cache: &mut VerdictCache, src: &str| {
        set.judge(
            cache,
            src.parse().unwrap(),
            "10.244.1.1".parse().unwrap(),
            None,
            Protocol::ICMP,
        )
        .allowed()
    };
    assert!(
        !ping(&mut cache, "10.244.2.1"),
        "ICMP from y: only a port-restricted rule"
    );
    assert!(
        ping(&mut cache, "10.244.3.1"),
        "ICMP from z: a rule without ports"
    );
}

#[test]
fn invalid_policies_are_rejected_with_the_field() {
    let cases = [
        (
            "ingress: [{from: [{}]}]",
            "spec.ingress[0].from[0]",
            "needs podSelector",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
            "spec.ingress[0].from[0]",
            "cannot be combined",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "not a CIDR",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "not inside",
        ),
        (
            "egress: [{ports: [{port: 80, endPort: 79}]}]",
            "spec.egress[0].ports[0].endPort",
            "below",
        ),
        (
            "egress: [{ports: [{port: http, endPort: 90}]}]",
            "spec.egress[0].ports[0].endPort",
            "named",
        ),
        (
            "egress: [{ports: [{port: 80, protocol: ICMP}]}]",
            "spec.egress[0].ports[0].protocol",
            "ICMP",
        ),
        (
            "egress: [{ports: [{port: 70000}]}]",
            "spec.egress[0].ports[0].port",
            "outside",
        ),
        ("policyTypes: [Sideways]", "spec.policyTypes[0]", "Sideways"),
    ];
    for (spec, field, message) in cases {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\nspec:\n  podSelector: {{}}\n  {spec}\n"
        );
        let err = weir_policy::PolicySet::new(common::cluster(&yaml)).unwrap_err();
        assert_eq!(err.field, field, "{spec}");
        assert!(err.to_string().contains(message), "{err}");
        assert!(
            err.to_string()
                .starts_with("test.yaml: NetworkPolicy x/bad: field `"),
            "{err}"
        );
    }
}

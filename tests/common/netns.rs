//! A real "node" for live-capture tests: a bridge and "pod" network namespaces joined to it by veth pairs.
//!
//! Traffic rules: addresses exist only inside the namespaces this fixture creates (the bridge has none), the pods
//! have no default route, so nothing can leave the machine; everything is deleted on drop, also when a test
//! fails (panics unwind through the drop).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Output};

pub use super::process::Proc;

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// ICMP echo requests over a raw socket: `python3 -c ICMP_ECHO TARGET COUNT`. Fails when a reply does not come
/// within two seconds.
const ICMP_ECHO: &str = r#"
import os, socket, struct, sys, time
target, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
ident = os.getpid() & 0xFFFF
def checksum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
payload = bytes(range(56))
for seq in range(1, count + 1):
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload, (target, 0))
    while True:
        data, _ = s.recvfrom(2048)
        start = (data[0] & 0x0F) * 4
        kind, _, _, got_id, got_seq = struct.unpack("!BBHHH", data[start:start + 8])
        if kind == 0 and got_id == ident and got_seq == seq:
            break
    if seq < count:
        time.sleep(0.05)
"#;

/// One pod: its namespace, the host side of its veth, its address.
#[derive(Clone, Debug)]
pub struct Pod {
    pub netns: String,
    pub host_veth: String,
    pub ip: Ipv4Addr,
}

/// A bridge and its pods. Names carry the process id and a tag, so parallel tests never collide.
pub struct Node {
    pub bridge: String,
    pub pods: Vec<Pod>,
    tag: String,
    subnet: u8,
}

impl Node {
    /// A node with `pods` pods on 10.251.`subnet`.0/24 (`subnet` keeps parallel tests apart).
    pub fn new(tag: &str, subnet: u8, pods: usize) -> Node {
        let id = std::process::id() % 10_000;
        let tag = format!("{tag}{id}");
        let bridge = format!("wb{tag}");
        assert!(bridge.len() <= 15, "interface name {bridge} too long");
        let mut node = Node {
            bridge: bridge.clone(),
            pods: Vec::new(),
            tag,
            subnet,
        };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{bridge}.disable_ipv6=1")])
            .output();
        sh(&["ip", "link", "set", &bridge, "up"]);
        for _ in 0..pods {
            node.add_pod();
        }
        node
    }

    /// Adds a pod (a namespace with a veth into the bridge) and returns its index.
    pub fn add_pod(&mut self) -> usize {
        let index = self.pods.len();
        let netns = format!("wp{}-{index}", self.tag);
        let host_veth = format!("wv{}{index}", self.tag);
        assert!(host_veth.len() <= 15, "interface name {host_veth} too long");
        let ip = Ipv4Addr::new(10, 251, self.subnet, 10 + index as u8);
        // Record it first, so a failure half-way still gets cleaned up.
        self.pods.push(Pod {
            netns: netns.clone(),
            host_veth: host_veth.clone(),
            ip,
        });
        sh(&["ip", "netns", "add", &netns]);
        // No IPv6: its neighbour discovery and router solicitations would add packets no test sent.
        self.exec(
            index,
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        );
        self.exec(
            index,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        sh(&[
            "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ]);
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{host_veth}.disable_ipv6=1")])
            .output();
        sh(&["ip", "link", "set", &host_veth, "master", &self.bridge]);
        sh(&["ip", "link", "set", &host_veth, "up"]);
        let cidr = format!("{ip}/24");
        sh(&["ip", "-n", &netns, "addr", "add", &cidr, "dev", "eth0"]);
        sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        index
    }

    /// Fills every pod's neighbour table, so no ARP exchange interleaves with test traffic.
    pub fn static_neighbours(&self) {
        let macs: Vec<String> = (0..self.pods.len())
            .map(|i| {
                let out = self.exec(i, &["cat", "/sys/class/net/eth0/address"]);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect();
        for (i, pod) in self.pods.iter().enumerate() {
            for (j, other) in self.pods.iter().enumerate() {
                if i != j {
                    let ip = other.ip.to_string();
                    sh(&[
                        "ip",
                        "-n",
                        &pod.netns,
                        "neigh",
                        "replace",
                        &ip,
                        "lladdr",
                        &macs[j],
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ]);
                }
            }
        }
    }

    /// Deletes a pod's namespace (and with it its veth pair).
    pub fn remove_pod(&mut self, index: usize) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.pods[index].netns])
            .output();
    }

    /// Runs a command inside a pod's namespace.
    pub fn exec(&self, pod: usize, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.pods[pod].netns];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// `count` ICMP echo requests from a pod to `target`, 50 ms apart, each waiting for its reply (as `ping -c
    /// COUNT -i 0.05` would, with its 56-byte payload): the test needs no ping binary.
    pub fn ping(&self, pod: usize, target: &str, count: u32) {
        self.exec(
            pod,
            &["python3", "-c", ICMP_ECHO, target, &count.to_string()],
        );
    }

    /// Starts a command inside a pod's namespace without waiting for it; it is killed when the test ends.
    pub fn spawn(&self, pod: usize, args: &[&str]) -> Proc {
        Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.pods[pod].netns])
                .args(args),
        )
    }

    /// An interface counter of a host-side veth (`rx_packets`, `tx_bytes`, ...).
    pub fn counter(&self, pod: usize, name: &str) -> u64 {
        let path = format!(
            "/sys/class/net/{}/statistics/{name}",
            self.pods[pod].host_veth
        );
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pod in &self.pods {
            // Whatever still runs in the pod (a server a failed test never stopped) goes with it: deleting
            // the namespace's name alone would leave its processes running.
            let pids = Command::new("ip")
                .args(["netns", "pids", &pod.netns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).output();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &pod.netns])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &pod.host_veth])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

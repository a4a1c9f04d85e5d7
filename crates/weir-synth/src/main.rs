//! `weir-synth`: writes the bundled example captures and benchmark captures.
//!
//! ```text
//! weir-synth pcaps DIR                       the generated captures of pcaps/
//! weir-synth bench PACKETS FLOWS OUT.pcap    a benchmark capture
//! weir-synth bench-cluster OUT.json          a snapshot of the 2,000 pods of the benchmark captures
//! weir-synth udp-blast ADDR:PORT SECONDS [PPS] small UDP datagrams as fast as one core can (or at PPS), for
//!                                            the live-capture benchmark; prints how many were sent
//! ```

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::process::ExitCode;

use weir_synth::{
    PcapOptions, bench_mix, bench_pod_address, synthetic_cluster_with, write_bundled_pcaps,
    write_pcap,
};

fn create(path: &Path) -> io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(1 << 20, File::create(path)?))
}

/// Sends 18-byte UDP datagrams (60-byte frames) to `target` for `seconds`, as fast as possible or at `pps`.
fn udp_blast(target: &str, seconds: &str, pps: Option<&str>) -> io::Result<()> {
    let target: std::net::SocketAddr = target
        .parse()
        .map_err(|_| io::Error::other("ADDR:PORT expected, like 10.251.0.11:9"))?;
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| io::Error::other("SECONDS must be a number"))?;
    let pps: Option<f64> = match pps {
        Some(p) => Some(
            p.parse()
                .map_err(|_| io::Error::other("PPS must be a number"))?,
        ),
        None => None,
    };
    // Unconnected, so ICMP errors from the target never fail a send.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0x5au8; 18];
    let start = std::time::Instant::now();
    let duration = std::time::Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        // Check the clock every 64 datagrams; pace to the rate when one is given.
        for _ in 0..64 {
            socket.send_to(&payload, target)?;
            sent += 1;
        }
        if let Some(pps) = pps {
            let due = std::time::Duration::from_secs_f64(sent as f64 / pps);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("{sent} {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["pcaps", dir] => write_bundled_pcaps(Path::new(dir)),
        ["bench", packets, flows, out] => match (packets.parse::<u64>(), flows.parse::<u64>()) {
            (Ok(p), Ok(f)) => {
                let cap = bench_mix(p, f, 42);
                eprintln!(
                    "{}: {} packets, {} flows",
                    out,
                    cap.packets.len(),
                    cap.truth.len()
                );
                create(Path::new(out))
                    .and_then(|w| write_pcap(w, cap.link, &cap.packets, PcapOptions::default()))
            }
            _ => Err(io::Error::other("PACKETS and FLOWS must be numbers")),
        },
        ["udp-blast", target, seconds, rest @ ..] => {
            udp_blast(target, seconds, rest.first().copied())
        }
        ["bench-cluster", out] => {
            // 20 namespaces × 10 Deployments × 10 replicas = the 2,000 pods `bench` traffic runs between, each
            // Deployment behind a Service on every port the traffic uses.
            let cluster =
                synthetic_cluster_with(20, 10, 10, 200, true, |i| bench_pod_address(i as u64));
            std::fs::write(out, cluster.json)
        }
        _ => Err(io::Error::other(
            "usage: weir-synth pcaps DIR | weir-synth bench PACKETS FLOWS OUT.pcap | weir-synth bench-cluster OUT.json",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-synth: {e}");
            ExitCode::FAILURE
        }
    }
}

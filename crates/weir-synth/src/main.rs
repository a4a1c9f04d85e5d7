//! `weir-synth`: writes the bundled example captures and benchmark captures.
//!
//! ```text
//! weir-synth pcaps DIR                       the generated captures of pcaps/
//! weir-synth bench PACKETS FLOWS OUT.pcap    a benchmark capture
//! weir-synth bench-cluster OUT.json          a snapshot of the 2,000 pods of the benchmark captures
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

//! `weir-synth`: writes the bundled example captures and benchmark captures.
//!
//! ```text
//! weir-synth pcaps DIR                       the generated captures of pcaps/
//! weir-synth bench PACKETS FLOWS OUT.pcap    a benchmark capture
//! ```

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::process::ExitCode;

use weir_synth::{PcapOptions, bench_mix, write_bundled_pcaps, write_pcap};

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
        _ => Err(io::Error::other(
            "usage: weir-synth pcaps DIR | weir-synth bench PACKETS FLOWS OUT.pcap",
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

//! Flow record output: JSON lines, CSV and an aligned table.

use std::io::{self, Write};

use weir_model::{FlowRecord, Orientation, Protocol};

/// Output format of flow records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    /// One JSON object per line (weir's flow record format).
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
    /// An aligned table for people.
    Table,
}

const CSV_COLUMNS: &str = "src,src_port,dst,dst_port,proto,icmp_type,icmp_code,icmp_id,packets,bytes,reply_packets,reply_bytes,start,end,tcp_flags,reply_tcp_flags,orientation,end_reason,community_id,observed_node,observed_interface,observed_direction";

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Quotes a CSV field when it needs it (node and interface names come from outside).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn write_csv<W: Write>(mut w: W, records: &[FlowRecord]) -> io::Result<()> {
    writeln!(w, "{CSV_COLUMNS}")?;
    for r in records {
        let obs = r.observed_at.as_ref();
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.src,
            opt(r.src_port),
            r.dst,
            opt(r.dst_port),
            r.proto,
            opt(r.icmp_type),
            opt(r.icmp_code),
            opt(r.icmp_id),
            r.packets,
            r.bytes,
            r.reply_packets,
            r.reply_bytes,
            r.start,
            r.end,
            r.tcp_flags,
            r.reply_tcp_flags,
            json_name(&r.orientation),
            json_name(&r.end_reason),
            r.community_id,
            csv_field(obs.map_or("", |o| o.node.as_str())),
            csv_field(obs.map_or("", |o| o.interface.as_str())),
            obs.map(|o| json_name(&o.direction)).unwrap_or_default(),
        )?;
    }
    w.flush()
}

pub use weir_report::human;

fn endpoint(addr: std::net::IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (std::net::IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

fn icmp_info(r: &FlowRecord) -> String {
    let (Some(t), Some(c)) = (r.icmp_type, r.icmp_code) else {
        return String::new();
    };
    let name = match (r.proto, t) {
        (Protocol::ICMP, 8) | (Protocol::ICMPV6, 128) => "echo",
        (Protocol::ICMP, 3) | (Protocol::ICMPV6, 1) => "unreachable",
        (Protocol::ICMP, 11) | (Protocol::ICMPV6, 3) => "time-exceeded",
        (Protocol::ICMPV6, 2) => "packet-too-big",
        (Protocol::ICMPV6, 135) => "neighbor-solicit",
        (Protocol::ICMPV6, 133) => "router-solicit",
        _ => "",
    };
    let mut s = if name.is_empty() {
        format!("type {t} code {c}")
    } else if c == 0 {
        name.to_owned()
    } else {
        format!("{name} code {c}")
    };
    if let Some(id) = r.icmp_id {
        s.push_str(&format!(" id {id}"));
    }
    s
}

pub fn write_table<W: Write>(mut w: W, records: &[FlowRecord]) -> io::Result<()> {
    let header = [
        "START",
        "PROTO",
        "SOURCE",
        "",
        "DESTINATION",
        "PACKETS →/←",
        "BYTES →/←",
        "DETAIL",
        "END",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            let detail = if r.proto == Protocol::TCP {
                format!("{}/{}", r.tcp_flags, r.reply_tcp_flags)
            } else {
                icmp_info(r)
            };
            [
                r.start.to_string(),
                r.proto.to_string(),
                endpoint(r.src, r.src_port),
                if r.orientation == Orientation::Inferred {
                    "~>".to_owned()
                } else {
                    "->".to_owned()
                },
                endpoint(r.dst, r.dst_port),
                format!("{}/{}", human(r.packets), human(r.reply_packets)),
                format!("{}/{}", human(r.bytes), human(r.reply_bytes)),
                detail,
                json_name(&r.end_reason),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |w: &mut W, cells: &[&str]| -> io::Result<()> {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(w, "{}", out.trim_end())
    };
    line(&mut w, &header)?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut w, &cells)?;
    }
    if records
        .iter()
        .any(|r| r.orientation == Orientation::Inferred)
    {
        writeln!(
            w,
            "\n~> orientation inferred from ports (the capture started mid-conversation)"
        )?;
    }
    w.flush()
}

//! Durations on the command line: `500ms`, `30s`, `5m`, `2h`, or plain seconds.

use weir_flow::FlowConfig;

pub use weir_model::parse_duration;

/// Applies `--idle-timeout`: one duration for every protocol, or `proto=duration` pairs separated by commas
/// (`tcp`, `tcp-closed`, `udp`, `icmp`, `other`).
pub fn apply_idle_timeouts(config: &mut FlowConfig, spec: &str) -> Result<(), String> {
    if !spec.contains('=') {
        let d = parse_duration(spec)?;
        config.tcp_idle = d;
        config.udp_idle = d;
        config.icmp_idle = d;
        config.other_idle = d;
        config.tcp_closed_idle = config.tcp_closed_idle.min(d);
        return Ok(());
    }
    for part in spec.split(',') {
        let (proto, value) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid idle timeout {part:?}: expected PROTO=DURATION"))?;
        let d = parse_duration(value)?;
        match proto.trim() {
            "tcp" => config.tcp_idle = d,
            "tcp-closed" => config.tcp_closed_idle = d,
            "udp" => config.udp_idle = d,
            "icmp" => config.icmp_idle = d,
            "other" => config.other_idle = d,
            other => {
                return Err(format!(
                    "unknown protocol {other:?} in --idle-timeout: use tcp, tcp-closed, udp, icmp or other"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_and_idle_specs() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("s").is_err());
        let mut c = FlowConfig::default();
        assert!(apply_idle_timeouts(&mut c, "udp=5s,tcp=1m").is_ok());
        assert_eq!(
            (c.udp_idle, c.tcp_idle),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
        assert!(apply_idle_timeouts(&mut c, "sctp=1s").is_err());
        assert!(apply_idle_timeouts(&mut c, "2s").is_ok());
        assert_eq!(c.tcp_closed_idle, Duration::from_secs(2));
    }
}

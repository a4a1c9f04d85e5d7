//! CIDR blocks: NetworkPolicy `ipBlock`s, node pod ranges, cluster ranges.

use std::fmt;
use std::net::IpAddr;

/// An IPv4 or IPv6 prefix. Host bits are cleared on parse, as Kubernetes' own CIDR parsing does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = text.split_once('/')?;
        let address: IpAddr = address.parse().ok()?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        Some(Cidr {
            network: mask(address, prefix),
            prefix,
        })
    }

    /// The block of one address (`/32` or `/128`).
    pub fn host(ip: IpAddr) -> Cidr {
        Cidr {
            network: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The block of `prefix` bits around an address (clamped to the family's length).
    pub fn around(ip: IpAddr, prefix: u8) -> Cidr {
        let prefix = prefix.min(if ip.is_ipv4() { 32 } else { 128 });
        Cidr {
            network: mask(ip, prefix),
            prefix,
        }
    }

    /// The first address of the block.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The address after the network address, when the block has one: where a bridge or gateway of the
    /// block usually sits (`10.244.1.1` of `10.244.1.0/24`).
    pub fn first_host(&self) -> Option<IpAddr> {
        match self.network {
            IpAddr::V4(v4) if self.prefix < 32 => Some(IpAddr::V4((u32::from(v4) + 1).into())),
            IpAddr::V6(v6) if self.prefix < 128 => Some(IpAddr::V6((u128::from(v6) + 1).into())),
            _ => None,
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the block holds an address (of the same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }

    /// Whether every address of `other` is in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_host_follows_the_network_address() {
        let first = |t: &str| {
            Cidr::parse(t)
                .unwrap()
                .first_host()
                .map(|ip| ip.to_string())
        };
        assert_eq!(first("10.244.1.0/24").as_deref(), Some("10.244.1.1"));
        assert_eq!(first("10.244.1.7/24").as_deref(), Some("10.244.1.1"));
        assert_eq!(
            first("fd00:10:244:1::/64").as_deref(),
            Some("fd00:10:244:1::1")
        );
        assert_eq!(first("10.0.0.9/32"), None);
    }

    #[test]
    fn parses_and_contains() {
        let c = Cidr::parse("172.17.0.0/16").unwrap();
        assert!(c.contains("172.17.1.1".parse().unwrap()));
        assert!(!c.contains("172.18.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .covers(&Cidr::parse("2001:db8:1::/48").unwrap())
        );
        for bad in [
            "10.0.0.1",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "x/8",
            "10.0.0.0/",
            "::/129",
            "1.2.3.4/+8",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        assert!(
            Cidr::parse("10.0.0.7/32")
                .unwrap()
                .contains("10.0.0.7".parse().unwrap())
        );
    }
}

//! IPv4 networks in CIDR notation: a host's bridge network and the guest
//! addresses in it (the first host address is the bridge's own, the guests'
//! gateway). Pure arithmetic, shared by the gateway (validation) and the
//! worker (allocation).

use std::net::Ipv4Addr;

/// An IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').ok_or("expected ADDRESS/PREFIX")?;
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{a}: {e}"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("bad prefix {p}"))?;
        if !(8..=30).contains(&prefix) {
            return Err("prefix must be between 8 and 30".into());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self { network: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }
    /// The bridge's own address, the guests' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    /// Whether `ip` is an address a guest may have (not network, gateway or broadcast).
    pub fn is_guest(&self, ip: Ipv4Addr) -> bool {
        let (n, v) = (u32::from(self.network), u32::from(ip));
        v & self.mask() == n && v > n + 1 && v < n | !self.mask()
    }
    /// Guest addresses in order.
    pub fn guests(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let n = u32::from(self.network);
        (n + 2..(n | !self.mask())).map(Ipv4Addr::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let c: Cidr = "172.30.7.9/24".parse().unwrap();
        assert_eq!(c.to_string(), "172.30.7.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(172, 30, 7, 1));
        assert_eq!(c.guests().next(), Some(Ipv4Addr::new(172, 30, 7, 2)));
        assert_eq!(c.guests().count(), 253);
        assert!(c.is_guest(Ipv4Addr::new(172, 30, 7, 10)));
        for bad in [Ipv4Addr::new(172, 30, 7, 0), Ipv4Addr::new(172, 30, 7, 1), Ipv4Addr::new(172, 30, 7, 255), Ipv4Addr::new(172, 30, 8, 2)] {
            assert!(!c.is_guest(bad), "{bad}");
        }
        assert!("172.30.7.0".parse::<Cidr>().is_err());
        assert!("172.30.7.0/31".parse::<Cidr>().is_err());
    }
}

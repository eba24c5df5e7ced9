//! Bridge networking: a tap device per VM on an operator-configured bridge,
//! with the guest's address allocated from the bridge's CIDR (the first host
//! address is the bridge's own, the gateway) and given to the guest on its
//! kernel command line (`vmplane.net=ADDR/PREFIX,GATEWAY`).

use crate::driver::DriverError;
use std::net::Ipv4Addr;
use tokio::process::Command;
use vmplane_domain::VmId;

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

/// The bridge a host's bridge-mode VMs join.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    pub cidr: Cidr,
}

/// Whether `name` is a plain network interface name: what `ip link` accepts
/// and what may appear quoted in an nftables ruleset.
pub fn is_interface_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The tap device of a VM: at most 15 bytes (IFNAMSIZ).
pub fn tap_name(vm: VmId) -> String {
    let s = vm.to_string();
    format!("vt{}", &s[s.len() - 12..])
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().await.map_err(|e| format!("ip: {e} (install iproute2)"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) }
}

/// Create the VM's tap on the bridge (idempotent).
pub async fn ensure_tap(bridge: &Bridge, tap: &str) -> Result<(), DriverError> {
    if let Err(e) = ip(&["tuntap", "add", "dev", tap, "mode", "tap"]).await
        && !e.contains("exists")
        && !e.contains("busy")
    {
        return Err(DriverError::Fatal(format!("creating tap {tap}: {e}")));
    }
    ip(&["link", "set", tap, "master", &bridge.name]).await.map_err(|e| DriverError::Fatal(format!("adding {tap} to bridge {}: {e}", bridge.name)))?;
    ip(&["link", "set", tap, "up"]).await.map_err(|e| DriverError::Fatal(format!("{tap} up: {e}")))
}

/// Remove the VM's tap, if any.
pub async fn remove_tap(tap: &str) {
    let _ = ip(&["link", "del", tap]).await;
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

    #[test]
    fn tap_names_fit_ifnamsiz() {
        assert!(tap_name(VmId::new()).len() <= 15);
        assert!(is_interface_name(&tap_name(VmId::new())));
    }

    #[test]
    fn interface_names() {
        for good in ["br0", "vmbr-1", "a.b_c"] {
            assert!(is_interface_name(good), "{good}");
        }
        for bad in ["", "br\"0", "br 0", "0123456789abcdef", "br0;flush"] {
            assert!(!is_interface_name(bad), "{bad}");
        }
    }
}

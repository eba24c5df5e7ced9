//! Bridge networking: a tap device per VM on an operator-configured bridge,
//! with the guest's address allocated from the bridge's CIDR (the first host
//! address is the bridge's own, the gateway) and given to the guest on its
//! kernel command line (`vmplane.net=ADDR/PREFIX,GATEWAY`).

use crate::driver::DriverError;
use tokio::process::Command;
pub use vmplane_domain::cidr::Cidr;

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

pub use vmplane_domain::vm::tap_name;

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
    use vmplane_domain::VmId;

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

//! The nftables filters that keep guests off the host. Each is a table of
//! its own, owned by vmplane and replaced whole (add, flush, define: one
//! atomic `nft -f` transaction), so applying it again is harmless and nothing
//! else in the ruleset is touched. The tables stay when the worker stops:
//! the guests they protect outlive it.
//!
//! - User-mode guests (`vmplane_guest`): passt turns a guest's connections
//!   into sockets of its own process, so the kernel sees them as traffic of
//!   passt's dedicated user. The output chain rejects that user's new
//!   connections and datagrams to any of the host's own addresses (`fib
//!   daddr type local`: loopback, every interface, every namespace-local
//!   address), broadcast and multicast, link-local ranges (169.254.0.0/16,
//!   fe80::/10: cloud metadata services) and the guests' virtual gateway
//!   (it must not leak to a real host of that address). Replies on
//!   connections a host client opened to a forwarded port are established
//!   and pass.
//! - Bridge-mode guests (`vmplane_bridge_<bridge>`): whatever enters the host
//!   from the bridge and is addressed to the host itself is rejected, except
//!   replies on connections the host opened, IPv6 neighbour discovery, and
//!   DNS to the bridge's address (the guests' configured resolver); nothing
//!   from the bridge is forwarded to link-local ranges.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The table filtering passt's traffic.
pub const GUEST_TABLE: &str = "vmplane_guest";

/// Link-local ranges: metadata services live there.
const LINK_LOCAL4: &str = "169.254.0.0/16";
const LINK_LOCAL6: &str = "fe80::/10";

/// The ruleset for user-mode guests whose passt runs as `uid`; `gateway` is
/// the guests' virtual gateway address.
pub fn user_mode(uid: u32, gateway: Ipv4Addr) -> String {
    format!(
        "table inet {GUEST_TABLE}
flush table inet {GUEST_TABLE}
table inet {GUEST_TABLE} {{
	chain output {{
		type filter hook output priority filter; policy accept;
		meta skuid {uid} jump guests
	}}
	chain guests {{
		ct state established,related accept
		fib daddr type {{ local, broadcast, multicast }} reject
		ip daddr {{ {LINK_LOCAL4}, {gateway} }} reject
		ip6 daddr {LINK_LOCAL6} reject
	}}
}}
"
    )
}

/// The table filtering what guests on `bridge` send.
pub fn bridge_table(bridge: &str) -> String {
    format!("vmplane_bridge_{}", bridge.replace(['-', '.'], "_"))
}

/// The ruleset for guests on `bridge`, whose own address is `gateway`.
/// `bridge` must be an interface name ([`super::bridge::is_interface_name`]).
pub fn bridge(bridge: &str, gateway: Ipv4Addr) -> String {
    let table = bridge_table(bridge);
    format!(
        "table inet {table}
flush table inet {table}
table inet {table} {{
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname \"{bridge}\" jump from_guests
	}}
	chain from_guests {{
		ct state established,related accept
		icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
		ip daddr {gateway} meta l4proto {{ tcp, udp }} th dport 53 accept
		reject
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname \"{bridge}\" ip daddr {LINK_LOCAL4} reject
		iifname \"{bridge}\" ip6 daddr {LINK_LOCAL6} reject
	}}
}}
"
    )
}

/// Load a ruleset with `nft -f -`.
pub fn apply(ruleset: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e} (install nftables)"))?;
    child.stdin.take().expect("piped stdin").write_all(ruleset.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mode_rules_name_the_uid_and_every_blocked_range() {
        let r = user_mode(999, Ipv4Addr::new(10, 0, 2, 2));
        assert!(r.contains("meta skuid 999 jump guests"), "{r}");
        for blocked in ["fib daddr type { local, broadcast, multicast } reject", "169.254.0.0/16, 10.0.2.2", "ip6 daddr fe80::/10 reject"] {
            assert!(r.contains(blocked), "{blocked} missing:\n{r}");
        }
        // Established traffic (replies to forwarded ports) is accepted before the rejects.
        assert!(r.find("ct state established").unwrap() < r.find("fib daddr").unwrap());
    }

    #[test]
    fn bridge_rules_are_per_bridge() {
        let r = bridge("br-x.1", Ipv4Addr::new(172, 30, 0, 1));
        assert!(r.contains("table inet vmplane_bridge_br_x_1 {"), "{r}");
        assert!(r.contains("iifname \"br-x.1\" jump from_guests"), "{r}");
        assert!(r.contains("ip daddr 172.30.0.1 meta l4proto { tcp, udp } th dport 53 accept"), "{r}");
    }
}

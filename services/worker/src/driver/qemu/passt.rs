//! User-mode guest networking: passt, one per running guest, or QEMU's own
//! user networking locked down when passt is missing.
//!
//! passt turns the guest's frames into ordinary sockets of its own process,
//! so guests get outbound connections and host port forwards. It runs as a
//! dedicated user ([`USER`]) so that the kernel can tell its traffic apart:
//! the nftables table of `nft.rs` keeps that user off the host's own
//! addresses, loopback included. passt maps the guest's gateway address to
//! the host's loopback; that mapping is what carries a UDP forward's replies
//! back to a client on the host, and the filter rejects anything else it
//! would carry there. Without the filter, passt runs with `--no-map-gw`, so
//! at least the loopback stays out of reach (and UDP forwards answer only
//! clients on other machines).
//!
//! passt drops to that user before it binds a socket or writes a pid file,
//! and that user cannot enter the VM directory (0700, root). So qemu and
//! passt talk over a socket pair (`--fd` here, `-netdev stream` with
//! `addr.type=fd` on qemu's side): no socket file exists for anyone to reach.
//! passt daemonizes itself (and exits when qemu closes its end); the worker
//! finds the daemon by its command line and records its pid in the VM
//! directory, so a restarted worker can stop it.

use super::layout::VmDir;
use super::nft;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use vmplane_domain::spec::Protocol;
use vmplane_domain::vm::NetworkRuntime;

/// The user passt runs as; created (system user, no login) when missing.
pub const USER: &str = "vmplane-net";
/// The guest's address on user-mode networking (as with QEMU's slirp).
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The guest's gateway: virtual, nothing answers there.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Bound of passt's log file; passt drops its oldest lines past it.
const LOG_SIZE: u32 = 128 * 1024;

/// A uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// How user-mode guests are networked on this host, decided at start.
#[derive(Debug, Clone)]
pub enum UserNet {
    /// passt. `runas` is its dedicated user (when the worker is root);
    /// `filtered` says whether the nftables table keeps it off the host.
    Passt { binary: PathBuf, runas: Option<Ids>, filtered: bool },
    /// passt is not installed: QEMU user networking with `restrict=on`, so
    /// port forwards work but the guest cannot open any connection.
    Restricted,
}

impl UserNet {
    /// Pick the mode: passt with its filter when possible; each shortfall is
    /// logged, loudly when guests could reach the host.
    pub fn detect(binary: &Path) -> Self {
        let installed = std::process::Command::new(binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !installed {
            tracing::warn!(
                passt = %binary.display(),
                "passt is not installed: user-mode guests get QEMU user networking with restrict=on \
                 (port forwards work, outbound connections do not); install passt for outbound access"
            );
            return Self::Restricted;
        }
        let binary = binary.to_owned();
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            tracing::error!(
                "not running as root: passt cannot run as its own user and no nftables filter is installed; GUESTS CAN REACH THIS HOST'S NON-LOOPBACK ADDRESSES"
            );
            return Self::Passt { binary, runas: None, filtered: false };
        }
        let ids = match ensure_user(USER) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "no dedicated user for passt, so no nftables filter; GUESTS CAN REACH THIS HOST'S NON-LOOPBACK ADDRESSES");
                return Self::Passt { binary, runas: None, filtered: false };
            }
        };
        match nft::apply(&nft::user_mode(ids.uid, GATEWAY)) {
            Ok(()) => {
                tracing::info!(uid = ids.uid, table = nft::GUEST_TABLE, "user-mode guests: passt, kept off the host's addresses by nftables");
                Self::Passt { binary, runas: Some(ids), filtered: true }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot install the nftables filter for passt; GUESTS CAN REACH THIS HOST'S NON-LOOPBACK ADDRESSES");
                Self::Passt { binary, runas: Some(ids), filtered: false }
            }
        }
    }

    /// One line for `driver_detail` in `/v1/hosts`.
    pub fn describe(&self) -> String {
        match self {
            Self::Passt { runas: Some(ids), filtered: true, .. } => format!(
                "user-mode guest network: passt as uid {}, kept off the host's own, loopback and link-local addresses by nftables table inet {}",
                ids.uid,
                nft::GUEST_TABLE
            ),
            Self::Passt { .. } => {
                "user-mode guest network: passt WITHOUT the host filter (see the worker log): guests can reach the host's non-loopback addresses; UDP forwards answer only clients on other machines".into()
            }
            Self::Restricted => {
                "user-mode guest network: passt is not installed; QEMU user networking with restrict=on: port forwards only, no outbound connections".into()
            }
        }
    }
}

/// The uid and gid of `name`, creating it as a system user without login when missing.
fn ensure_user(name: &str) -> Result<Ids, String> {
    if let Some(ids) = lookup(name)? {
        return Ok(ids);
    }
    let out = std::process::Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])
        .output()
        .map_err(|e| format!("useradd: {e}"))?;
    // Another worker may have created it meanwhile: look again either way.
    lookup(name)?.ok_or_else(|| format!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

fn lookup(name: &str) -> Result<Option<Ids>, String> {
    let out = std::process::Command::new("getent").args(["passwd", name]).output().map_err(|e| format!("getent: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim().split(':').collect();
    match (fields.get(2).and_then(|u| u.parse().ok()), fields.get(3).and_then(|g| g.parse().ok())) {
        (Some(uid), Some(gid)) if out.status.success() => Ok(Some(Ids { uid, gid })),
        _ => Ok(None),
    }
}

/// passt's log, in the VM directory; its path also identifies the process.
pub fn log_file(dir: &VmDir) -> PathBuf {
    dir.path().join("passt.log")
}

/// passt's pid, written by the worker.
pub fn pid_file(dir: &VmDir) -> PathBuf {
    dir.path().join("passt.pid")
}

/// passt's arguments: serve the guest on `fd`, forward the VM's ports from
/// `bind`; `filtered` when the nftables filter covers `runas`.
pub fn args(fd: i32, log: &Path, runas: Option<Ids>, filtered: bool, bind: IpAddr, network: &NetworkRuntime) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--quiet".into(),
        // A connected socket: passt serves it alone and exits when it closes (one-off).
        "--fd".into(),
        fd.to_string(),
        "--log-file".into(),
        log.display().to_string(),
        "--log-size".into(),
        LOG_SIZE.to_string(),
        "--address".into(),
        GUEST_ADDR.to_string(),
        "--netmask".into(),
        "24".into(),
        "--gateway".into(),
        GATEWAY.to_string(),
    ];
    if let Some(ids) = runas {
        a.extend(["--runas".into(), format!("{}:{}", ids.uid, ids.gid)]);
    }
    if !filtered {
        a.push("--no-map-gw".into());
    }
    let forwards =
        network.ssh_port.map(|p| (p, 22, Protocol::Tcp)).into_iter().chain(network.port_forwards.iter().map(|f| (f.host_port, f.guest_port, f.protocol)));
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for (host, guest, protocol) in forwards {
        let spec = format!("{bind}/{host}:{guest}");
        match protocol {
            Protocol::Tcp => tcp.push(spec),
            Protocol::Udp => udp.push(spec),
        }
    }
    for (flag, specs) in [("--tcp-ports", tcp), ("--udp-ports", udp)] {
        if specs.is_empty() {
            a.extend([flag.into(), "none".into()]);
        }
        for spec in specs {
            a.extend([flag.into(), spec]);
        }
    }
    a
}

/// How long a forwarded port may stay taken after the VM's previous passt
/// (connections it closed linger in TCP TIME_WAIT for 60 s on Linux).
const BIND_PATIENCE: Duration = Duration::from_secs(70);

/// Start passt for the guest of `dir` on `socket` (its end of the pair with
/// qemu). Returns once passt runs in the background with its ports bound.
///
/// passt binds its forwarded ports without SO_REUSEADDR, so the connections
/// the VM's previous passt closed (a standby, a stop) would keep a new one
/// from binding them for a minute: those TIME_WAIT sockets are destroyed
/// first, and where the kernel cannot do that, passt is tried again until
/// they expire.
pub async fn start(
    binary: &Path,
    runas: Option<Ids>,
    filtered: bool,
    dir: &VmDir,
    bind: IpAddr,
    network: &NetworkRuntime,
    socket: OwnedFd,
) -> Result<(), String> {
    stop(dir, runas).await;
    let log = log_file(dir);
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    loop {
        release_time_wait(bind, network).await;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args(socket.as_raw_fd(), &log, runas, filtered, bind, network)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        super::process::private_child(&mut cmd, Some(socket.as_raw_fd()));
        let out = cmd.output().await.map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !err.contains("Failed to bind") || tokio::time::Instant::now() >= deadline {
            return Err(format!("passt failed to start ({}): {err}", out.status));
        }
        tracing::info!(dir = %dir.path().display(), "a forwarded port is still held by closed connections; starting passt again shortly");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(socket);
    // The daemon is a child of the process that just exited: find it.
    let pid = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .find(|pid| is_ours(*pid, &log, runas))
        .ok_or("passt exited right after starting (see passt.log)")?;
    super::layout::write_private(&pid_file(dir), pid.to_string().as_bytes()).map_err(|e| format!("passt pid file: {e}"))
}

/// Destroy the TIME_WAIT sockets left on the VM's forwarded TCP ports
/// (`ss -K`, needs root and a kernel that can destroy them; a failure only
/// means passt has to wait for them to expire).
async fn release_time_wait(bind: IpAddr, network: &NetworkRuntime) {
    let ports: Vec<u16> =
        network.ssh_port.into_iter().chain(network.port_forwards.iter().filter(|f| f.protocol == Protocol::Tcp).map(|f| f.host_port)).collect();
    if ports.is_empty() {
        return;
    }
    let filter = ports.iter().map(|p| format!("sport = :{p}")).collect::<Vec<_>>().join(" or ");
    let mut cmd = tokio::process::Command::new("ss");
    cmd.args(["-K", "-t", "-n", "state", "time-wait"]);
    if !bind.is_unspecified() {
        cmd.args(["src", &bind.to_string()]);
    }
    let destroyed = cmd.arg(format!("( {filter} )")).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
    if !destroyed.is_ok_and(|s| s.success()) {
        tracing::debug!("ss -K could not destroy TIME_WAIT sockets; passt will wait for them to expire");
    }
}

/// The pid of the VM's passt, if it runs.
pub fn running(dir: &VmDir, runas: Option<Ids>) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir)).ok()?.trim().parse().ok()?;
    is_ours(pid, &log_file(dir), runas).then_some(pid)
}

/// Stop the VM's passt if it still runs (it exits by itself once qemu is gone).
pub async fn stop(dir: &VmDir, runas: Option<Ids>) {
    if let Some(pid) = running(dir, runas) {
        super::process::signal(pid, libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while running(dir, runas).is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if running(dir, runas).is_some() {
            super::process::signal(pid, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(pid_file(dir));
}

/// Whether `pid` is a live passt serving the VM whose log is `log`, as the
/// expected user (its pid file is trusted only that far).
fn is_ours(pid: i32, log: &Path, runas: Option<Ids>) -> bool {
    let log = log.as_os_str().as_encoded_bytes();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned();
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = runas.map_or_else(|| unsafe { libc::geteuid() }, |ids| ids.uid);
    cmdline.split(|b| *b == 0).any(|a| a == log)
        && field("Uid:").split_whitespace().next() == Some(uid.to_string().as_str())
        && !field("State:").starts_with('Z')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use vmplane_domain::VmId;
    use vmplane_domain::vm::ResolvedPortForward;

    #[test]
    fn forwards_bind_the_operator_address_and_nothing_else() {
        let network = NetworkRuntime {
            ip: Some(GUEST_ADDR.to_string()),
            mac: None,
            ssh_port: Some(20001),
            port_forwards: vec![
                ResolvedPortForward { guest_port: 80, host_port: 20002, protocol: Protocol::Tcp },
                ResolvedPortForward { guest_port: 53, host_port: 20003, protocol: Protocol::Udp },
            ],
        };
        let a = args(7, Path::new("/d/vms/x/passt.log"), Some(Ids { uid: 999, gid: 995 }), true, "127.0.0.1".parse().unwrap(), &network);
        let pairs: Vec<(&str, &str)> = a.windows(2).map(|w| (w[0].as_str(), w[1].as_str())).collect();
        for want in [
            ("--fd", "7"),
            ("--runas", "999:995"),
            ("--tcp-ports", "127.0.0.1/20001:22"),
            ("--tcp-ports", "127.0.0.1/20002:80"),
            ("--udp-ports", "127.0.0.1/20003:53"),
            ("--log-size", "131072"),
        ] {
            assert!(pairs.contains(&want), "{want:?} missing from {a:?}");
        }
        // The filter keeps the host's loopback out of reach, so passt may map the gateway to it.
        assert!(!a.contains(&"--no-map-gw".to_owned()), "{a:?}");
        // No forwards: explicitly none, so passt binds no port at all. No filter: no gateway mapping.
        let a = args(7, Path::new("/l"), None, false, "127.0.0.1".parse().unwrap(), &NetworkRuntime::default());
        assert!(a.windows(2).any(|w| w == ["--tcp-ports", "none"]) && a.windows(2).any(|w| w == ["--udp-ports", "none"]), "{a:?}");
        assert!(!a.contains(&"--runas".to_owned()));
        assert!(a.contains(&"--no-map-gw".to_owned()), "{a:?}");
    }

    /// Connections a stopped passt closed hold its forwarded port in TIME_WAIT;
    /// they are destroyed so the next passt can bind the port (it does not
    /// set SO_REUSEADDR, and neither does this test's probe). Needs root.
    #[tokio::test]
    async fn time_wait_left_on_a_forwarded_port_is_cleared() {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("VMPLANE_SKIP_GUEST_TESTS").is_some(), "needs root (or set VMPLANE_SKIP_GUEST_TESTS=1)");
            eprintln!("SKIPPED: needs root");
            return;
        }
        // The server side closes first, as passt does when its guest goes: TIME_WAIT on the listening port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener.accept().unwrap().0);
        std::thread::sleep(Duration::from_millis(100));
        drop((client, listener));
        let bind_plain = || {
            // SAFETY: plain socket calls on a descriptor this closure owns and closes.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
                    sin_zero: [0; 8],
                };
                let ok = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32) == 0;
                libc::close(fd);
                ok
            }
        };
        assert!(!bind_plain(), "the closed connection holds port {port} (TIME_WAIT)");
        let network = NetworkRuntime { ssh_port: Some(port), ..NetworkRuntime::default() };
        release_time_wait("127.0.0.1".parse().unwrap(), &network).await;
        assert!(bind_plain(), "port {port} is free again");
    }

    /// Frames on qemu's side of the socket pair: a 4-byte big-endian length, then the frame.
    /// One frame, its length first, in one write as qemu sends it: passt
    /// (Debian 12's) drops a read that holds a length alone, and the stream
    /// is out of step after it (two writes lost a frame about once in 30 runs).
    fn send_frame(s: &mut UnixStream, frame: &[u8]) {
        s.write_all(&[&(frame.len() as u32).to_be_bytes(), frame].concat()).unwrap();
    }

    /// The next frame from passt, or `None` when none comes within the read timeout.
    fn recv_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut frame = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).ok()?;
        Some(frame)
    }

    fn ip_checksum(header: &[u8]) -> u16 {
        let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// A UDP forward answers a client on the host's loopback: the reply comes
    /// back through passt's gateway mapping and passes the nftables filter as
    /// established traffic. A stand-in guest speaks Ethernet frames on qemu's
    /// end of the socket pair (the test image has no UDP tool). Needs root,
    /// passt and nft, like the guest tests.
    #[tokio::test]
    async fn udp_forwards_answer_host_clients_through_the_filter() {
        let UserNet::Passt { binary, runas, filtered: true } = UserNet::detect(Path::new("passt")) else {
            let why = "passt with its nftables filter is unavailable (needs root, passt and nft; ./scripts/test installs them)";
            assert!(std::env::var_os("VMPLANE_SKIP_GUEST_TESTS").is_some(), "{why} (or set VMPLANE_SKIP_GUEST_TESTS=1)");
            eprintln!("SKIPPED: {why}");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path(), VmId::new());
        dir.create().unwrap();
        let host_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let network =
            NetworkRuntime { port_forwards: vec![ResolvedPortForward { guest_port: 9999, host_port, protocol: Protocol::Udp }], ..NetworkRuntime::default() };
        let (mut guest, theirs) = UnixStream::pair().unwrap();
        start(&binary, runas, true, &dir, "127.0.0.1".parse().unwrap(), &network, theirs.into()).await.unwrap();
        assert!(running(&dir, runas).is_some(), "passt runs as its own user, recorded in its pid file");
        guest.set_read_timeout(Some(Duration::from_secs(1))).unwrap();

        // The guest asks for its gateway's MAC, as a real one does before it
        // sends anything, until passt answers: passt has learnt the guest
        // then. Then a host client sends a datagram; as a UDP client would,
        // it tries again.
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut arp = [[0xff; 6].as_slice(), &mac, &[8, 6, 0, 1, 8, 0, 6, 4, 0, 1], &mac, &GUEST_ADDR.octets(), &[0; 6], &GATEWAY.octets()].concat();
        arp.resize(60, 0);
        let gateway_mac = (0..20)
            .find_map(|_| {
                send_frame(&mut guest, &arp);
                std::iter::from_fn(|| recv_frame(&mut guest)).find(|f| f[12..14] == [8, 6] && f[20..22] == [0, 2]).map(|f| f[6..12].to_vec())
            })
            .expect("passt answers the guest's ARP request for its gateway");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut pings = 0;
        let frame = (0..20)
            .find_map(|_| {
                client.send_to(b"udp-ping", ("127.0.0.1", host_port)).unwrap();
                pings += 1;
                std::iter::from_fn(|| recv_frame(&mut guest)).find(|f| f[12..14] == [8, 0] && f[23] == 17)
            })
            .expect("the datagram reaches the guest");
        assert_eq!((&frame[0..6], &frame[6..12]), (mac.as_slice(), gateway_mac.as_slice()), "passt sends to the guest it learnt, from its gateway");
        let (ip, udp, payload) = (&frame[14..34], &frame[34..42], &frame[42..]);
        assert_eq!((&ip[16..20], &udp[2..4], &payload[..8]), (GUEST_ADDR.octets().as_slice(), 9999u16.to_be_bytes().as_slice(), b"udp-ping".as_slice()));

        // The guest answers from its port to whoever sent it (the gateway address, as passt presents the host).
        let reply = b"udp-pong";
        let udp_reply = [&udp[2..4], &udp[0..2], &(8 + reply.len() as u16).to_be_bytes(), &[0, 0], reply.as_slice()].concat();
        let total = (20 + udp_reply.len() as u16).to_be_bytes();
        let mut ip_reply = [&[0x45, 0][..], &total, &[0, 1, 0, 0, 64, 17, 0, 0], &ip[16..20], &ip[12..16]].concat();
        let sum = ip_checksum(&ip_reply).to_be_bytes();
        ip_reply[10..12].copy_from_slice(&sum);
        let reply_frame = [&frame[6..12], &mac, &[8, 0], &ip_reply, &udp_reply].concat();
        let mut buf = [0; 64];
        let (n, from) = (0..20)
            .find_map(|_| {
                send_frame(&mut guest, &reply_frame);
                client.recv_from(&mut buf).ok()
            })
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(log_file(&dir)).unwrap_or_default();
                panic!(
                    "the guest's reply reaches the host client (after {pings} pings; frame {frame:02x?}; client {:?}); passt.log:\n{log}",
                    client.local_addr()
                )
            });
        assert_eq!((&buf[..n], from.port()), (reply.as_slice(), host_port));

        drop(guest);
        stop(&dir, runas).await;
        assert!(running(&dir, runas).is_none());
    }
}

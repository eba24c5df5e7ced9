//! `vmplane vm ssh`: replace this process with the system `ssh`, pointed at
//! the VM's forwarded SSH port. The arguments are a vector given to `exec`
//! (never a shell string); a command after `--` goes to ssh after its own
//! `--`, so nothing in it is read as an ssh option.

use crate::error::{Error, Result};
use clap::Args;
use serde_json::Value;
use std::ffi::OsString;
use std::path::PathBuf;

/// `vm ssh`.
#[derive(Args)]
pub struct SshArgs {
    /// VM id or name.
    pub vm: String,
    /// The user to log in as.
    #[arg(short = 'l', long, default_value = "root")]
    pub user: String,
    /// The address the VM's ports are forwarded on (default: the gateway's host).
    #[arg(long, value_name = "ADDRESS")]
    pub host: Option<String>,
    /// An identity (private key) file for ssh.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// A command to run instead of a login shell (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Where ssh connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vm_id: String,
    pub host: String,
    pub port: u16,
}

/// The VM's SSH endpoint: its forwarded port on `--host` (else the gateway's
/// host), or port 22 of its own address when it has no forward (bridge mode).
pub fn target(gateway: &str, vm: &Value, host: Option<&str>) -> Result<Target> {
    let vm_id = vm.get("id").and_then(Value::as_str).ok_or_else(|| Error::BadResponse("the VM has no id".into()))?.to_owned();
    let forwarded = vm.get("ssh_port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
    let (host, port) = match (forwarded, vm.get("ip").and_then(Value::as_str)) {
        (Some(port), _) => {
            let host = match host {
                Some(h) => h.to_owned(),
                None => reqwest::Url::parse(gateway)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned()))
                    .ok_or_else(|| Error::Invalid(format!("no host in {gateway}: give --host")))?,
            };
            (host, port)
        }
        (None, Some(ip)) => (host.unwrap_or(ip).to_owned(), 22),
        (None, None) => {
            let status = vm.get("status").and_then(Value::as_str).unwrap_or("unknown");
            return Err(Error::Invalid(format!("vm {vm_id} ({status}) has no SSH port forwarded and no address of its own")));
        }
    };
    Ok(Target { vm_id, host, port })
}

/// The arguments of `ssh` (without the program name).
pub fn argv(t: &Target, a: &SshArgs) -> Result<Vec<OsString>> {
    if a.user.is_empty() || a.user.starts_with('-') || a.user.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!("--user `{}` is not a user name", a.user)));
    }
    if t.host.is_empty() || t.host.starts_with('-') || t.host.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!("`{}` is not a host address", t.host)));
    }
    let mut v: Vec<OsString> = vec!["-p".into(), t.port.to_string().into(), "-l".into(), a.user.clone().into()];
    // Host keys are remembered per VM, not per host port (ports are reused by other VMs).
    v.extend(["-o".into(), format!("HostKeyAlias=vmplane-{}", t.vm_id).into()]);
    if let Some(i) = &a.identity {
        v.extend(["-i".into(), i.clone().into_os_string()]);
    }
    v.push(t.host.clone().into());
    if !a.command.is_empty() {
        v.push("--".into());
        v.extend(a.command.iter().cloned());
    }
    Ok(v)
}

/// Replace this process with `ssh` to the VM; returns only if that fails.
pub fn exec(gateway: &str, vm: &Value, a: &SshArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let args = argv(&target(gateway, vm, a.host.as_deref())?, a)?;
    let err = std::process::Command::new("ssh").args(args).exec();
    Err(Error::io("running ssh (is the OpenSSH client installed?)")(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(command: &[&str]) -> SshArgs {
        SshArgs { vm: "web".into(), user: "root".into(), host: None, identity: None, command: command.iter().map(OsString::from).collect() }
    }

    #[test]
    fn the_forwarded_port_on_the_gateways_host() {
        let vm = json!({"id": "vm_1", "ssh_port": 20022, "ip": "10.0.0.5"});
        let t = target("http://127.0.0.1:8080", &vm, None).unwrap();
        assert_eq!(t, Target { vm_id: "vm_1".into(), host: "127.0.0.1".into(), port: 20022 });
        assert_eq!(target("http://[::1]:8080", &vm, None).unwrap().host, "::1");
        assert_eq!(target("https://gw.example", &vm, Some("203.0.113.9")).unwrap().host, "203.0.113.9");
        // Bridge mode: no forward, its own address.
        let t = target("http://127.0.0.1:8080", &json!({"id": "vm_2", "ssh_port": null, "ip": "10.0.0.6"}), None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.6", 22));
        assert!(target("http://127.0.0.1:8080", &json!({"id": "vm_3", "status": "stopped"}), None).is_err());
    }

    #[test]
    fn the_argument_vector() {
        let t = Target { vm_id: "vm_1".into(), host: "127.0.0.1".into(), port: 20022 };
        assert_eq!(argv(&t, &args(&[])).unwrap(), ["-p", "20022", "-l", "root", "-o", "HostKeyAlias=vmplane-vm_1", "127.0.0.1"]);
        // The command stays separate words after `--`: `-v` and `;` are not ssh's, nor a shell's, to read here.
        let v = argv(&t, &args(&["-v", "echo", "a b; rm -rf /"])).unwrap();
        assert_eq!(v[7..], ["--", "-v", "echo", "a b; rm -rf /"]);
        let mut a = args(&[]);
        a.identity = Some("/k/id_ed25519".into());
        assert_eq!(argv(&t, &a).unwrap()[6..], ["-i", "/k/id_ed25519", "127.0.0.1"]);
        a.user = "-oProxyCommand=x".into();
        assert!(argv(&t, &a).is_err());
        assert!(argv(&Target { host: "-oProxyCommand=x".into(), ..t }, &args(&[])).is_err());
    }
}

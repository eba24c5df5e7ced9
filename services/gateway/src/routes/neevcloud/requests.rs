//! `CreateVMRequest` and every constraint the seed puts on it, checked here
//! (each a 400 `ErrorResponse` before anything happens), then translated
//! into a [`VmSpec`].

use super::error::{NeevError, NeevResult};
use super::ids::parse_uuid;
use crate::app::{App, Principal, volumes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;
use vmplane_domain::VolumeId;
use vmplane_domain::catalog::Plan;
use vmplane_domain::spec::{DataDisk, DiskKind, ExposedPort as SpecPort, GpuSpec, PortForward, Protocol, VmSpec, VolumeMount};

/// `ResourceName`: a DNS-1123 label of at most 20 characters.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The seed's pattern for SSH public keys.
pub const SSH_KEY_PATTERN: &str = r"^(ssh-rsa|ssh-ed25519)\s+[A-Za-z0-9+/]+[=]{0,2}(\s+.*)?$";

/// Request body for creating a new VM.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = CreateVMRequest)]
pub struct CreateVmRequest {
    /// User-defined display name for the VM.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 20)]
    pub name: String,
    /// The region ID where the VM will be deployed (a catalog region code, e.g. `us-east`).
    #[schema(value_type = vmplane_domain::catalog::RegionCode)]
    pub region_id: String,
    /// The ID of the VM configuration to use for the VM (a catalog plan name, e.g. `small`).
    #[schema(value_type = vmplane_domain::catalog::PlanName)]
    pub vm_config_id: String,
    /// The number of GPU configurations need to be attached to the VM.
    #[schema(minimum = 0, maximum = 16)]
    pub gpu_config_count: Option<i64>,
    /// The pricing plan ID for billing the VM (a catalog plan name: the same as `vm_config_id`).
    #[schema(value_type = vmplane_domain::catalog::PlanName)]
    pub plan_id: String,
    #[schema(inline)]
    pub root_disk: RootDiskRequest,
    /// Additional data disks to attach or create for the VM.
    #[schema(inline)]
    pub data_disks: Option<DataDisksRequest>,
    /// SSH public keys for VM access. Maximum 10 keys per VM, each once.
    #[schema(value_type = Option<BTreeSet<SshKey>>, max_items = 10, inline)]
    pub ssh_keys: Option<Vec<SshKey>>,
    /// Inbound ports to expose on the VM public IP. Maximum 10 ports per VM,
    /// tcp or udp, 1-65535, not 22, no duplicate port and protocol pairs.
    #[schema(value_type = Option<BTreeSet<ExposedPort>>, max_items = 10)]
    pub exposed_ports: Option<Vec<ExposedPort>>,
    /// If true, VM deletion removes the managed root disk (create_disk_request only); otherwise detach only. Default false.
    pub delete_root_disk: Option<bool>,
}

/// An SSH public key in OpenSSH format (ssh-rsa or ssh-ed25519).
#[derive(Debug, Deserialize)]
pub struct SshKey(pub String);

impl utoipa::PartialSchema for SshKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(SSH_KEY_PATTERN))
            .min_length(Some(50))
            .max_length(Some(2000))
            // What no pattern says (as /v1's `openssh-public-key`): the
            // base64 must decode to a key of its type.
            .format(Some(utoipa::openapi::SchemaFormat::Custom("openssh-public-key".into())))
            .description(Some("SSH public key in OpenSSH format. Supported key types: ssh-rsa, ssh-ed25519; the key must decode (a truncated one is refused)."))
            .into()
    }
}

impl ToSchema for SshKey {}

/// The seed's rule on `root_disk`, which utoipa's derive cannot write
/// (the schema is inlined, as the seed has it): exactly one of
/// `attach_disk_request` and `create_disk_request` is an object.
pub fn root_disk_rule() -> serde_json::Value {
    let one = |field: &str| serde_json::json!({"properties": {field: {"type": "object"}}, "required": [field]});
    serde_json::json!({"allOf": [{"properties": {"root_disk": {"oneOf": [one("attach_disk_request"), one("create_disk_request")]}}}]})
}

/// The rule on an exposed port the seed says in words: 22 is SSH's.
pub fn exposed_port_rule() -> serde_json::Value {
    serde_json::json!({"not": {"properties": {"port": {"const": 22}}, "required": ["port"]}})
}

/// The root disk: exactly one of `attach_disk_request` and `create_disk_request`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RootDiskRequest {
    pub attach_disk_request: Option<AttachDiskRequest>,
    pub create_disk_request: Option<CreateRootDiskRequest>,
}

/// Attach an existing disk to the VM.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AttachDiskRequest {
    /// UUID of an existing disk to attach.
    #[schema(format = "uuid")]
    pub disk_id: String,
}

/// Create a new root disk for the VM by cloning a platform image.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRootDiskRequest {
    /// Name of the disk.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 20)]
    pub name: String,
    /// Size of the root disk in gigabytes. Must be between 20 GB and 2048 GB (2 TB).
    #[schema(minimum = 20, maximum = 2048)]
    pub size_gb: i64,
    /// ID of the platform image to clone as the root disk (a catalog image name, e.g. `ubuntu-24.04`).
    #[schema(value_type = vmplane_domain::catalog::ImageRef)]
    pub image_id: String,
}

/// Additional data disks to attach or create for the VM.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DataDisksRequest {
    /// Additional data disks to attach to the VM, each disk once and not the root disk.
    #[schema(value_type = Option<BTreeSet<AttachDiskRequest>>, max_items = 4)]
    pub attached_disks: Option<Vec<AttachDiskRequest>>,
    /// Additional data disks to create for the VM, each name once.
    #[schema(value_type = Option<BTreeSet<CreateDataDiskRequest>>, max_items = 4)]
    pub create_disks: Option<Vec<CreateDataDiskRequest>>,
}

/// Create a new disk for the VM.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDataDiskRequest {
    /// Name of the disk.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 20)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: DataDiskType,
    /// Size of the data disk in gigabytes. Must be between 10 GB and 2048 GB (2 TB).
    #[schema(minimum = 10, maximum = 2048)]
    pub size_gb: i64,
}

/// Type of the data disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataDiskType {
    Block,
    Filesystem,
}

impl From<DataDiskType> for DiskKind {
    fn from(t: DataDiskType) -> Self {
        match t {
            DataDiskType::Block => DiskKind::Block,
            DataDiskType::Filesystem => DiskKind::Filesystem,
        }
    }
}

impl From<DiskKind> for DataDiskType {
    fn from(k: DiskKind) -> Self {
        match k {
            DiskKind::Block => DataDiskType::Block,
            DiskKind::Filesystem => DataDiskType::Filesystem,
        }
    }
}

/// Inbound port exposed on the VM public IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExposedPort {
    /// Port number inside the VM that the guest process listens on, except
    /// for port 22 which is reserved for SSH when ssh_keys are provided.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: i64,
    /// Layer-4 protocol for an exposed inbound port.
    pub protocol: PortProtocol,
}

/// Layer-4 protocol for an exposed inbound port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl From<Protocol> for PortProtocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }
}

impl From<PortProtocol> for Protocol {
    fn from(p: PortProtocol) -> Self {
        match p {
            PortProtocol::Tcp => Self::Tcp,
            PortProtocol::Udp => Self::Udp,
        }
    }
}

/// The root disk a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootDiskForm {
    Create { name: String, size_gb: u32, image: String },
    Attach(VolumeId),
}

/// A request whose every documented constraint holds.
#[derive(Debug)]
pub struct Checked {
    pub name: String,
    pub region: String,
    pub plan: String,
    pub gpu_count: Option<u32>,
    pub root: RootDiskForm,
    pub attach: Vec<VolumeId>,
    pub create: Vec<(String, DiskKind, u32)>,
    pub ssh_keys: Vec<String>,
    pub ports: Vec<(u16, Protocol)>,
    pub delete_root_disk: bool,
}

/// A DNS-1123 label of at most 20 characters (`ResourceName`).
fn resource_name(field: &str, s: &str) -> NeevResult<String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 20
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok { Ok(s.to_owned()) } else { Err(NeevError::invalid(format!("{field}: must be a DNS-1123 label of at most 20 characters ({NAME_PATTERN})"))) }
}

fn uuid_field(field: &str, s: &str) -> NeevResult<VolumeId> {
    parse_uuid(s).map(VolumeId).ok_or_else(|| NeevError::invalid(format!("{field}: `{s}` is not a UUID")))
}

fn required(field: &str, s: &str) -> NeevResult<String> {
    if s.is_empty() || s.len() > 64 { Err(NeevError::invalid(format!("{field}: must be 1-64 characters"))) } else { Ok(s.to_owned()) }
}

/// Whether `k` matches the seed's [`SSH_KEY_PATTERN`] (ECMA-262 semantics:
/// `\s` is any white space, `.` anything but a line terminator, `$` the end).
pub fn is_seed_ssh_key(k: &str) -> bool {
    let space = |c: char| c.is_whitespace() || c == '\u{feff}';
    let Some(rest) = k.strip_prefix("ssh-rsa").or_else(|| k.strip_prefix("ssh-ed25519")) else { return false };
    let body = rest.trim_start_matches(space);
    if body.len() == rest.len() {
        return false;
    }
    let b64 = body.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/').count();
    let after = &body[b64..];
    let pad = after.bytes().take_while(|b| *b == b'=').count();
    if b64 == 0 || pad > 2 {
        return false;
    }
    let after = &after[pad..];
    let comment = after.trim_start_matches(space);
    after.is_empty() || (comment.len() < after.len() && !comment.contains(['\n', '\r', '\u{2028}', '\u{2029}']))
}

impl CreateVmRequest {
    /// Check every constraint of the document, without any I/O.
    pub fn check(self) -> NeevResult<Checked> {
        let name = resource_name("name", &self.name)?;
        let region = required("region_id", &self.region_id)?;
        let plan = required("vm_config_id", &self.vm_config_id)?;
        required("plan_id", &self.plan_id)?;
        if self.plan_id != self.vm_config_id {
            return Err(NeevError::invalid("plan_id: must name the same catalog plan as vm_config_id (vmplane has one plan per VM)"));
        }
        let gpu_count = match self.gpu_config_count {
            None | Some(0) => None,
            Some(n @ 1..=16) => Some(n as u32),
            Some(_) => return Err(NeevError::invalid("gpu_config_count: must be between 0 and 16")),
        };
        let root = match (self.root_disk.attach_disk_request, self.root_disk.create_disk_request) {
            (Some(a), None) => RootDiskForm::Attach(uuid_field("root_disk.attach_disk_request.disk_id", &a.disk_id)?),
            (None, Some(c)) => {
                let name = resource_name("root_disk.create_disk_request.name", &c.name)?;
                if !(20..=2048).contains(&c.size_gb) {
                    return Err(NeevError::invalid("root_disk.create_disk_request.size_gb: must be between 20 and 2048"));
                }
                let image = required("root_disk.create_disk_request.image_id", &c.image_id)?;
                RootDiskForm::Create { name, size_gb: c.size_gb as u32, image }
            }
            _ => return Err(NeevError::invalid("root_disk: exactly one of attach_disk_request and create_disk_request")),
        };
        let (mut attach, mut create): (Vec<VolumeId>, Vec<(String, DiskKind, u32)>) = (Vec::new(), Vec::new());
        if let Some(d) = self.data_disks {
            let attached = d.attached_disks.unwrap_or_default();
            let created = d.create_disks.unwrap_or_default();
            if attached.len() > 4 || created.len() > 4 {
                return Err(NeevError::invalid("data_disks: at most 4 attached_disks and 4 create_disks"));
            }
            for (i, a) in attached.iter().enumerate() {
                let id = uuid_field(&format!("data_disks.attached_disks[{i}].disk_id"), &a.disk_id)?;
                if attach.contains(&id) || root == RootDiskForm::Attach(id) {
                    return Err(NeevError::invalid(format!("data_disks.attached_disks[{i}].disk_id: disk {} is named twice", a.disk_id)));
                }
                attach.push(id);
            }
            for (i, c) in created.into_iter().enumerate() {
                let name = resource_name(&format!("data_disks.create_disks[{i}].name"), &c.name)?;
                if !(10..=2048).contains(&c.size_gb) {
                    return Err(NeevError::invalid(format!("data_disks.create_disks[{i}].size_gb: must be between 10 and 2048")));
                }
                if create.iter().any(|(n, ..)| *n == name) {
                    return Err(NeevError::invalid(format!("data_disks.create_disks[{i}].name: two disks are named `{name}`")));
                }
                create.push((name, c.kind.into(), c.size_gb as u32));
            }
        }
        let ssh_keys: Vec<String> = self.ssh_keys.unwrap_or_default().into_iter().map(|k| k.0).collect();
        if ssh_keys.len() > 10 {
            return Err(NeevError::invalid("ssh_keys: at most 10"));
        }
        for (i, key) in ssh_keys.iter().enumerate() {
            if !(50..=2000).contains(&key.chars().count()) {
                return Err(NeevError::invalid(format!("ssh_keys[{i}]: must be 50-2000 characters")));
            }
            if !is_seed_ssh_key(key) {
                return Err(NeevError::invalid(format!("ssh_keys[{i}]: must be an OpenSSH ssh-rsa or ssh-ed25519 public key ({SSH_KEY_PATTERN})")));
            }
            if ssh_keys[..i].contains(key) {
                return Err(NeevError::invalid(format!("ssh_keys[{i}]: duplicate key")));
            }
        }
        let exposed = self.exposed_ports.unwrap_or_default();
        if exposed.len() > 10 {
            return Err(NeevError::invalid("exposed_ports: at most 10"));
        }
        let mut ports: Vec<(u16, Protocol)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, p) in exposed.iter().enumerate() {
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| NeevError::invalid(format!("exposed_ports[{i}].port: must be between 1 and 65535")))?;
            if port == 22 {
                return Err(NeevError::invalid(format!("exposed_ports[{i}].port: 22 is reserved for SSH; use ssh_keys")));
            }
            if !seen.insert((port, p.protocol)) {
                return Err(NeevError::invalid(format!("exposed_ports[{i}]: duplicate port and protocol")));
            }
            ports.push((port, p.protocol.into()));
        }
        Ok(Checked { name, region, plan, gpu_count, root, attach, create, ssh_keys, ports, delete_root_disk: self.delete_root_disk.unwrap_or(false) })
    }
}

impl Checked {
    /// The spec this request asks for: the plan's shape, the root disk, the
    /// disks (an attached filesystem disk is mounted at `/mnt/<its name>`,
    /// like a created one), the keys, and each exposed port forwarded from
    /// a host port. Unknown attached disks are 404.
    pub fn into_spec(self, app: &App, who: &Principal, plan: &Plan) -> NeevResult<VmSpec> {
        let mut spec = VmSpec::named(self.name);
        (spec.vcpus, spec.memory_mib, spec.disk_gb) = (plan.vcpus, plan.memory_mib, plan.disk_gb);
        spec.plan = Some(self.plan);
        spec.region = Some(self.region);
        spec.gpu = match self.gpu_count {
            Some(count) => Some(GpuSpec { count, model: plan.gpu.as_ref().and_then(|g| g.model.clone()) }),
            None => plan.gpu.clone(),
        };
        match self.root {
            RootDiskForm::Create { name, size_gb, image } => {
                (spec.image, spec.disk_gb, spec.root_disk_name) = (image, size_gb, Some(name));
                spec.delete_root_disk = self.delete_root_disk;
            }
            // A root disk given at create is never deleted with the VM.
            RootDiskForm::Attach(id) => (spec.root_volume, spec.delete_root_disk) = (Some(id), false),
        }
        spec.data_disks =
            self.create.into_iter().map(|(name, kind, size_gb)| DataDisk { name, size_gb, kind, mount_path: None, delete_with_vm: false }).collect();
        for id in self.attach {
            let vol = volumes::get(app, who, id).map_err(|_| NeevError::not_found(format!("disk {}", super::ids::uuid(id.0))))?;
            let mount_path = (vol.spec.kind == DiskKind::Filesystem).then(|| format!("/mnt/{}", vol.spec.name));
            spec.volumes.push(VolumeMount { volume_id: id, mount_path, readonly: false, overlay: false, overlay_size_mib: None });
        }
        spec.ssh_keys = self.ssh_keys;
        spec.exposed_ports = self.ports.iter().map(|&(port, protocol)| SpecPort { port, protocol }).collect();
        spec.port_forwards = self.ports.iter().map(|&(guest_port, protocol)| PortForward { guest_port, host_port: None, protocol }).collect();
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";

    #[test]
    fn ssh_keys_follow_the_seed_pattern() {
        for good in [ED, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "ssh-ed25519\tAAAA  comment with spaces", "ssh-rsa AAAA= ", "ssh-rsa AAAA\nc"] {
            assert!(is_seed_ssh_key(good), "{good:?}");
        }
        for bad in [
            "ssh-dss AAAA",
            "ecdsa-sha2-nistp256 AAAA",
            "ssh-ed25519",
            "ssh-ed25519 ",
            "ssh-ed25519AAAA",
            "ssh-rsa AAAA===",
            "ssh-rsa AA-A",
            "ssh-rsa AAAA x\ny",
            " ssh-rsa AAAA",
        ] {
            assert!(!is_seed_ssh_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn resource_names_are_short_dns_labels() {
        for good in ["a", "web-1", "0", &"a".repeat(20)] {
            assert!(resource_name("name", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(21)] {
            assert!(resource_name("name", bad).is_err(), "{bad}");
        }
    }
}

//! What a VM is asked to be.
//!
//! [`VmSpec`] is the union of what the five seed APIs let a caller ask for;
//! each API dialect translates its request onto it. Validation lives here so
//! every dialect rejects the same things the same way.

use crate::ids::VolumeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use utoipa::ToSchema;

/// The image a VM boots when the request names none.
pub const DEFAULT_IMAGE: &str = "debian-minimal";
/// Upper bounds that keep a single request from describing an absurd machine;
/// the host's real capacity is checked at placement.
pub const MAX_VCPUS: u32 = 256;
/// See [`MAX_VCPUS`].
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// See [`MAX_VCPUS`].
pub const MAX_DISK_GB: u32 = 64 * 1024;
/// Data disks and volumes a VM can have together, besides its root disk:
/// the hot-plug slots the qemu driver gives every VM.
pub const MAX_DISKS: usize = 8;

/// A VM's requested shape and configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmSpec {
    /// DNS label (RFC 1123), at most 63 characters.
    pub name: String,
    /// Image slug or `img_` id the root disk is created from.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Extra memory that can be hot-plugged later, in MiB (0 = none).
    #[serde(default)]
    pub hotplug_memory_mib: u64,
    /// Root disk size in GB when the root disk is created from the image.
    pub disk_gb: u32,
    /// Boot from an existing root disk (a volume kept from a deleted VM)
    /// instead of creating one from the image. The VM runs the image that disk
    /// holds; the disk is released with the VM, never deleted.
    #[serde(default)]
    pub root_volume: Option<VolumeId>,
    /// Whether deleting the VM deletes the root disk it created from its image.
    /// When false, that disk is kept as a root-disk volume
    /// ([`crate::vm::kept_root_disk_id`]) that a later create can boot from.
    #[serde(default = "yes")]
    pub delete_root_disk: bool,
    /// The name of the root disk created from the image, which the root-disk
    /// volume kept at delete takes; without one, the VM's name.
    #[serde(default)]
    pub root_disk_name: Option<String>,
    /// Data disks created as volumes with the VM and attached before its first boot.
    #[serde(default)]
    pub data_disks: Vec<DataDisk>,
    /// Existing volumes attached before the first boot.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::ssh_key::PublicKeyText>, max_items = 10)]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data (`#!` script or `#cloud-config`), at most 64 Ki characters.
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
    /// Environment variables exported to user-data scripts.
    #[serde(default)]
    #[schema(value_type = Env)]
    pub env: BTreeMap<String, String>,
    /// Extra kernel command line arguments.
    #[serde(default)]
    #[schema(value_type = Option<BootArgs>)]
    pub boot_args: Option<String>,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    #[serde(default)]
    pub exposed_ports: Vec<ExposedPort>,
    #[serde(default)]
    pub gpu: Option<GpuSpec>,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    #[schema(value_type = Labels)]
    pub labels: BTreeMap<String, String>,
    /// Resume from this snapshot instead of booting: the VM is a clone of
    /// the snapshot's machine with its own identity (name, MAC, address).
    #[serde(default)]
    pub from_snapshot: Option<crate::ids::SnapshotId>,
}

fn yes() -> bool {
    true
}

impl VmSpec {
    /// A clone resumes the snapshot's machine as it was: no disks, GPUs or
    /// hot-pluggable memory can be added to it (its devices must be the
    /// snapshot's). Its network is checked against the snapshot's (`snapshot::fit_clone`).
    fn validate_clone(&self) -> Result<(), SpecError> {
        if self.from_snapshot.is_none() {
            return Ok(());
        }
        let refused = [
            ("root_volume_id", self.root_volume.is_some()),
            ("hotplug_memory_mib", self.hotplug_memory_mib > 0),
            ("template", self.template.is_some()),
            ("data_disks", !self.data_disks.is_empty()),
            ("volumes", !self.volumes.is_empty()),
            ("gpu", self.gpu.is_some()),
        ];
        match refused.into_iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(SpecError::new(field, "cannot be given with from_snapshot: a clone has the snapshot's devices")),
            None => Ok(()),
        }
    }

    /// A spec with every documented default and the given name.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: DEFAULT_IMAGE.to_owned(),
            vcpus: 1,
            memory_mib: 512,
            hotplug_memory_mib: 0,
            disk_gb: 10,
            root_volume: None,
            delete_root_disk: true,
            root_disk_name: None,
            data_disks: Vec::new(),
            volumes: Vec::new(),
            ssh_keys: Vec::new(),
            user_data: None,
            env: BTreeMap::new(),
            boot_args: None,
            network: NetworkSpec::default(),
            port_forwards: Vec::new(),
            exposed_ports: Vec::new(),
            gpu: None,
            plan: None,
            region: None,
            template: None,
            labels: BTreeMap::new(),
            from_snapshot: None,
        }
    }

    /// What the VM takes from its host: hot-pluggable memory is reserved up
    /// front. Disks that are volumes (a root volume, data disks) count as volumes.
    pub fn resources(&self) -> crate::host::Resources {
        let disk_gb = if self.root_volume.is_some() { 0 } else { u64::from(self.disk_gb) };
        crate::host::Resources { vcpus: u64::from(self.vcpus), memory_mib: self.memory_mib + self.hotplug_memory_mib, disk_gb }
    }

    /// Every rule a spec must satisfy, checked without any I/O.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) {
            return Err(SpecError::new("name", "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"));
        }
        if !is_image_name(&self.image) {
            return Err(SpecError::new(
                "image",
                "must be an image name: a slug, an `img_` id, a catalog name or an OCI reference, up to 200 of letters, digits and `-_.:/@`",
            ));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(SpecError::new("vcpus", format!("must be between 1 and {MAX_VCPUS}")));
        }
        if !(64..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::new("memory_mib", format!("must be between 64 and {MAX_MEMORY_MIB}")));
        }
        if self.hotplug_memory_mib > MAX_MEMORY_MIB {
            return Err(SpecError::new("hotplug_memory_mib", format!("must be at most {MAX_MEMORY_MIB}")));
        }
        if !(1..=MAX_DISK_GB).contains(&self.disk_gb) {
            return Err(SpecError::new("disk_gb", format!("must be between 1 and {MAX_DISK_GB}")));
        }
        if self.root_disk_name.as_deref().is_some_and(|n| !is_dns_label(n)) {
            return Err(SpecError::new("root_disk_name", "must be a DNS label"));
        }
        self.validate_disks()?;
        self.validate_clone()?;
        if self.ssh_keys.len() > 10 {
            return Err(SpecError::new("ssh_keys", "at most 10"));
        }
        for key in &self.ssh_keys {
            if !is_ssh_public_key(key) {
                return Err(SpecError::new("ssh_keys", "each must be an OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa-sha2-*)"));
            }
        }
        if self.user_data.as_ref().is_some_and(|u| u.chars().count() > MAX_USER_DATA_CHARS) {
            return Err(SpecError::new("user_data", "must be at most 64 KiB"));
        }
        if self.env.len() > 64
            || self.env.keys().any(|k| !is_env_name(k))
            || self.env.values().any(|v| v.chars().count() > 4096 || v.contains(['\n', '\r', '\0']))
        {
            return Err(SpecError::new("env", "at most 64 variables with names of A-Z, a-z, 0-9 and '_' not starting with a digit, and one-line values"));
        }
        if let Some(args) = &self.boot_args {
            if args.chars().count() > 1024 || args.chars().any(char::is_control) {
                return Err(SpecError::new("boot_args", "must be one line of at most 1024 characters"));
            }
            // The guest reads vmplane's own parameters (its network among them) from
            // the command line, splitting on blanks whatever the quotes say.
            if args.split_whitespace().map(|w| w.replace('"', "")).any(|w| w.starts_with("vmplane.") || w == "--") {
                return Err(SpecError::new("boot_args", "may not set vmplane.* parameters or end the kernel's parameters with --"));
            }
        }
        self.network.validate()?;
        if self.port_forwards.len() > 32 {
            return Err(SpecError::new("port_forwards", "at most 32"));
        }
        if self.network.mode == NetworkMode::Bridge && !self.port_forwards.is_empty() {
            return Err(SpecError::new("port_forwards", "are for user-mode networking; in bridge mode the guest has its own address"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for pf in &self.port_forwards {
            if pf.guest_port == 0 || pf.host_port == Some(0) {
                return Err(SpecError::new("port_forwards", "ports must be between 1 and 65535"));
            }
            if !seen.insert((pf.guest_port, pf.protocol)) {
                return Err(SpecError::new("port_forwards", "duplicate guest port and protocol"));
            }
        }
        if self.exposed_ports.len() > 10 {
            return Err(SpecError::new("exposed_ports", "at most 10"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.exposed_ports {
            if p.port == 0 || !seen.insert((p.port, p.protocol)) {
                return Err(SpecError::new("exposed_ports", "ports must be 1-65535 without duplicates"));
            }
        }
        if let Some(gpu) = &self.gpu
            && (gpu.count == 0 || gpu.count > 16 || gpu.model.as_ref().is_some_and(|m| m.is_empty() || m.chars().count() > 64))
        {
            return Err(SpecError::new("gpu", "count must be 1-16 and model at most 64 characters"));
        }
        for (field, value) in [("plan", &self.plan), ("region", &self.region), ("template", &self.template)] {
            if value.as_ref().is_some_and(|v| v.is_empty() || v.len() > 64) {
                return Err(SpecError::new(field, "must be 1-64 characters"));
            }
        }
        if self.labels.len() > 64 || self.labels.iter().any(|(k, v)| k.is_empty() || k.chars().count() > 63 || v.chars().count() > 255) {
            return Err(SpecError::new("labels", "at most 64 labels, keys 1-63 and values up to 255 characters"));
        }
        Ok(())
    }

    /// Data disks and volumes: within the slots, each volume and name once,
    /// each mount path once.
    fn validate_disks(&self) -> Result<(), SpecError> {
        if self.data_disks.len() + self.volumes.len() > MAX_DISKS {
            return Err(SpecError::new("data_disks", format!("at most {MAX_DISKS} data disks and volumes together")));
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &self.data_disks {
            d.validate()?;
            if !names.insert(d.name.as_str()) {
                return Err(SpecError::new("data_disks", format!("two data disks are named `{}`", d.name)));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for v in &self.volumes {
            v.validate()?;
            if !ids.insert(v.volume_id) || self.root_volume == Some(v.volume_id) {
                return Err(SpecError::new("volumes", format!("{} is named twice", v.volume_id)));
            }
        }
        let mut paths = std::collections::BTreeSet::new();
        let mounted = self.data_disks.iter().filter_map(DataDisk::mount_path).chain(self.volumes.iter().filter_map(|v| v.mount_path.clone()));
        for path in mounted {
            if !paths.insert(path.clone()) {
                return Err(SpecError::new("mount_path", format!("{path} is used twice")));
            }
        }
        Ok(())
    }
}

/// A spec field that breaks a rule; maps to HTTP 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

impl SpecError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// What a request may name an image by (see `catalog::Catalog::resolve_image`):
/// the gateway resolves it to an installed slug before a command carries it.
pub fn is_image_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
}

text_schema! {
    /// The OpenAPI schema of extra kernel arguments: one line of at most
    /// 1024 characters. That no word sets a `vmplane.*` parameter or is
    /// `--` is in the description: no pattern without look-ahead says it.
    BootArgs {
        pattern(Some(r"^[^\x00-\x1f\x7f-\x9f]*$")),
        max_length(Some(1024)),
        description(Some("One line of at most 1024 characters; no word may set a `vmplane.*` parameter or be `--` (vmplane's own parameters come last).")),
    }
}

/// Longest user data, in characters.
pub const MAX_USER_DATA_CHARS: usize = 64 * 1024;

/// What [`is_image_name`] accepts, as a pattern (a test checks they agree).
pub const IMAGE_NAME_PATTERN: &str = "^[A-Za-z0-9._:/@-]{1,200}$";

/// What [`is_dns_label`] accepts, as a pattern (a test checks they agree).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

text_schema! {
    /// The OpenAPI schema of a name that must be a DNS label (VMs, volumes,
    /// templates, images, orgs, projects): request fields name it as their
    /// `value_type`, so documents state the rule the domain checks.
    DnsLabel {
        pattern(Some(DNS_LABEL_PATTERN)),
        min_length(Some(1)),
        max_length(Some(63)),
        description(Some("A DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'.")),
        examples([serde_json::json!("web-1")]),
    }
}

/// RFC 1123 label: what a hostname component may be.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 63 && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') && b[0] != b'-' && b[b.len() - 1] != b'-'
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 128 && !b[0].is_ascii_digit() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn is_ssh_public_key(s: &str) -> bool {
    let mut parts = s.split_ascii_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else { return false };
    let kind_ok = kind == "ssh-ed25519" || kind == "ssh-rsa" || kind.starts_with("ecdsa-sha2-");
    kind_ok
        && s.len() <= 4096
        && !s.contains('\n')
        && body.len() >= 16
        && body.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
}

/// A data disk created with its VM: a volume of the VM's org on its host,
/// attached before the first boot and (unless `delete_with_vm` is false)
/// deleted with the VM. Its id is [`crate::vm::data_disk_id`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataDisk {
    /// DNS label; the volume's name, unique among the VM's data disks.
    #[schema(value_type = DnsLabel)]
    pub name: String,
    #[schema(minimum = 1, maximum = 65536)]
    pub size_gb: u32,
    #[serde(default, rename = "type")]
    pub kind: DiskKind,
    /// Where a `filesystem` disk is mounted; default `/mnt/<name>`. A `block` disk has none.
    #[serde(default)]
    #[schema(value_type = Option<MountPath>)]
    pub mount_path: Option<String>,
    /// Whether deleting the VM deletes this disk; when false it stays as a volume.
    #[serde(default = "yes")]
    pub delete_with_vm: bool,
}

impl DataDisk {
    /// Where the guest mounts it: `None` for a block disk.
    pub fn mount_path(&self) -> Option<String> {
        match self.kind {
            DiskKind::Block => None,
            DiskKind::Filesystem => Some(self.mount_path.clone().unwrap_or_else(|| format!("/mnt/{}", self.name))),
        }
    }

    /// How the disk, once it is volume `id`, is attached to its VM.
    pub fn mount(&self, id: VolumeId) -> VolumeMount {
        VolumeMount { volume_id: id, mount_path: self.mount_path(), readonly: false, overlay: false, overlay_size_mib: None }
    }

    fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) || !(1..=MAX_DISK_GB).contains(&self.size_gb) {
            return Err(SpecError::new("data_disks", format!("each needs a DNS-label name and a size between 1 and {MAX_DISK_GB} GB")));
        }
        match (&self.mount_path, self.kind) {
            (Some(_), DiskKind::Block) => Err(SpecError::new("mount_path", "a block disk is not mounted: give the mount path to a filesystem disk")),
            (Some(path), DiskKind::Filesystem) => validate_mount_path(path),
            (None, _) => Ok(()),
        }
    }
}

/// What a disk is to the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    /// A raw block device, plugged in and left alone. Volumes made before
    /// disk types existed were `standard`: that is this.
    #[default]
    #[serde(alias = "standard")]
    Block,
    /// Formatted (when blank) and mounted by the guest agent.
    Filesystem,
}

/// A volume attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub volume_id: VolumeId,
    /// Absolute path in the guest where the guest agent mounts it (formatting
    /// a blank volume first); without one it is only plugged in, as a block device.
    #[serde(default)]
    #[schema(value_type = Option<MountPath>)]
    pub mount_path: Option<String>,
    #[serde(default)]
    pub readonly: bool,
    /// A per-VM writable overlay over a read-only volume.
    #[serde(default)]
    pub overlay: bool,
    /// Overlay size in MiB, required when `overlay` is true (which requires
    /// `readonly`), and only then.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub overlay_size_mib: Option<u64>,
}

/// The rule between a data disk's fields, as JSON Schema: only a
/// `filesystem` disk has a mount path (see [`volume_mount_conditions`]).
pub fn data_disk_conditions() -> serde_json::Value {
    serde_json::json!({"allOf": [{
        "if": {"properties": {"type": {"const": "filesystem"}}, "required": ["type"]},
        "else": {"properties": {"mount_path": {"type": "null"}}}
    }]})
}

/// The rules between a mount's fields, as JSON Schema: an overlay is over a
/// read-only volume and has a size; without an overlay there is no size.
/// Added to `VolumeMount`'s schema where the document is built, since
/// utoipa's derive has no `if`/`then`.
pub fn volume_mount_conditions() -> serde_json::Value {
    serde_json::json!({"allOf": [{
        "if": {"properties": {"overlay": {"const": true}}, "required": ["overlay"]},
        "then": {"properties": {"readonly": {"const": true}, "overlay_size_mib": {"type": "integer"}}, "required": ["readonly", "overlay_size_mib"]},
        "else": {"properties": {"overlay_size_mib": {"type": "null"}}}
    }]})
}

/// The OpenAPI schema of labels (of a VM, or that placement asks a host
/// for): at most 64, keys of 1-63 characters, values of at most 255.
pub struct Labels;

impl utoipa::PartialSchema for Labels {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let key = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(63));
        let value = ObjectBuilder::new().schema_type(Type::String).max_length(Some(255));
        text_map(key, value, "At most 64 labels: keys of 1-63 characters, values of at most 255.")
    }
}

impl utoipa::ToSchema for Labels {}

/// The OpenAPI schema of environment variables: at most 64, names of
/// letters, digits and `_` not starting with a digit (at most 128), values
/// of one line (at most 4096 characters, no NUL).
pub struct Env;

impl utoipa::PartialSchema for Env {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let name = ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z_][A-Za-z0-9_]{0,127}$"));
        let value = ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[^\n\r\x00]*$")).max_length(Some(4096));
        text_map(name, value, "At most 64 variables: names of letters, digits and `_` not starting with a digit, one-line values.")
    }
}

impl utoipa::ToSchema for Env {}

/// An object of at most 64 string values, its keys and values each of
/// their own schema.
fn text_map(
    key: utoipa::openapi::ObjectBuilder,
    value: utoipa::openapi::ObjectBuilder,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(64))
        .property_names(Some(key))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some(description))
        .into()
}

/// What [`validate_mount_path`] accepts, with 255 as the length bound: one
/// or more components after slashes, none of them `..`, no blanks or
/// control characters.
pub const MOUNT_PATH_PATTERN: &str = r"^(/+(\.?[^./ \x00-\x1f\x7f][^/ \x00-\x1f\x7f]*|\.\.[^/ \x00-\x1f\x7f]+|\.))+/*$";

text_schema! {
    /// The OpenAPI schema of a guest mount path (see [`MOUNT_PATH_PATTERN`]).
    MountPath {
        pattern(Some(MOUNT_PATH_PATTERN)),
        max_length(Some(255)),
        description(Some("An absolute path in the guest other than `/`, without blanks, control characters or `..`.")),
        examples([serde_json::json!("/data")]),
    }
}

impl VolumeMount {
    /// Rules shared by attach-at-create and live attach.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(path) = &self.mount_path {
            validate_mount_path(path)?;
        }
        if self.overlay && !self.readonly {
            return Err(SpecError::new("overlay", "requires readonly=true"));
        }
        if self.overlay != self.overlay_size_mib.is_some() {
            return Err(SpecError::new("overlay_size_mib", "is required with overlay=true and only then"));
        }
        Ok(())
    }
}

/// A path the guest agent can mount at: its protocol splits on blanks.
fn validate_mount_path(p: &str) -> Result<(), SpecError> {
    if !p.starts_with('/')
        || p.split('/').all(str::is_empty)
        || p.chars().count() > 255
        || p.split('/').any(|c| c == "..")
        || p.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(SpecError::new("mount_path", "must be an absolute path other than /, without spaces or '..'"));
    }
    Ok(())
}

/// How the VM is networked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: NetworkMode,
    /// Requested address in bridge mode; allocated from the bridge CIDR when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    #[serde(with = "ip_as_text")]
    pub guest_ip: Option<Ipv4Addr>,
    /// Requested MAC, unicast; generated when absent.
    #[serde(default)]
    #[schema(pattern = r"^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$")]
    pub guest_mac: Option<String>,
}

/// The rule between a network's fields, as JSON Schema: an address is
/// chosen only in bridge mode. Added to `NetworkSpec`'s schema where the
/// document is built, as [`volume_mount_conditions`].
pub fn network_conditions() -> serde_json::Value {
    serde_json::json!({"allOf": [{
        "if": {"properties": {"mode": {"const": "bridge"}}, "required": ["mode"]},
        "else": {"properties": {"guest_ip": {"type": "null"}}}
    }]})
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self { enabled: true, mode: NetworkMode::User, guest_ip: None, guest_mac: None }
    }
}

impl NetworkSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(mac) = &self.guest_mac {
            let octets: Vec<&str> = mac.split(':').collect();
            let ok = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(SpecError::new("guest_mac", "must look like 02:fc:00:00:00:0a"));
            }
            if u8::from_str_radix(octets[0], 16).is_ok_and(|first| first & 1 == 1) {
                return Err(SpecError::new("guest_mac", "must be a unicast address"));
            }
        }
        if self.guest_ip.is_some() && self.mode != NetworkMode::Bridge {
            return Err(SpecError::new("guest_ip", "can only be chosen in bridge mode"));
        }
        Ok(())
    }
}

/// Addresses as dotted text in every encoding: serde writes `Ipv4Addr` as
/// four numbers in binary formats, which rmp-serde then cannot read back.
mod ip_as_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::Ipv4Addr;

    pub fn serialize<S: Serializer>(ip: &Option<Ipv4Addr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
        Option::<String>::deserialize(d)?.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
    }
}

/// Network attachment kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// User-mode networking with host port forwards; needs no privileges.
    #[default]
    User,
    /// A tap device on an operator-configured bridge.
    Bridge,
}

/// Transport protocol of a forwarded or exposed port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A host port forwarded to a guest port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    #[schema(minimum = 1, maximum = 65535)]
    pub guest_port: u16,
    /// Allocated from the host's range when absent; one given must be in
    /// the range its host forwards from (`port_range` in `GET /v1/hosts`).
    /// Left out when absent, so a template's forwards show none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A guest port reachable on the VM's public address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposedPort {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// GPUs passed through to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    #[schema(minimum = 1, maximum = 16)]
    pub count: u32,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub model: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";

    proptest::proptest! {
        /// The documented pattern and length bounds accept exactly what the rule does.
        #[test]
        fn the_dns_label_schema_is_the_rule(s in "[a-z0-9A-Z_. -]{0,3}|-?[a-z0-9-]{0,66}-?|[a-z]{60,66}") {
            proptest::prop_assert_eq!(crate::schema_check::accepts(<DnsLabel as utoipa::PartialSchema>::schema(), &s), is_dns_label(&s), "{:?}", s);
        }

        /// The documented image name pattern is the rule.
        #[test]
        fn the_image_name_pattern_is_the_rule(s in "[a-zA-Z0-9 ._:/@é-]{0,6}|[a-z]{198,202}") {
            let schema = <crate::catalog::ImageRef as utoipa::PartialSchema>::schema();
            proptest::prop_assert_eq!(crate::schema_check::accepts(schema, &s), is_image_name(&s), "{:?}", s);
        }

        /// The documented mount path pattern and bound are the rule.
        #[test]
        fn the_mount_path_schema_is_the_rule(s in "[/a. \t\x7fé]{0,8}|/[a.]{250,258}") {
            proptest::prop_assert_eq!(
                crate::schema_check::accepts(<MountPath as utoipa::PartialSchema>::schema(), &s),
                validate_mount_path(&s).is_ok(),
                "{:?}", s
            );
        }
    }

    #[test]
    fn mount_paths_are_checked_by_their_pattern() {
        for ok in ["/data", "/a/", "//a", "/.x", "/..x", "/a/./b", "/é"] {
            assert!(validate_mount_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "//", "a", "/a/../b", "/..", "/a b", "/a\tb"] {
            assert!(validate_mount_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_validate() {
        VmSpec::named("web-1").validate().unwrap();
    }

    #[test]
    fn resources_reserve_hotplug_memory() {
        let mut s = VmSpec::named("a");
        s.hotplug_memory_mib = 256;
        assert_eq!(s.resources(), crate::host::Resources { vcpus: 1, memory_mib: 768, disk_gb: 10 });
    }

    #[test]
    fn names_are_dns_labels() {
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert_eq!(VmSpec::named(bad).validate().unwrap_err().field, "name", "{bad:?}");
        }
        for good in ["a", "a-b", "0", &"a".repeat(63)] {
            VmSpec::named(good).validate().unwrap();
        }
    }

    #[test]
    fn a_root_disk_name_is_a_dns_label() {
        let mut s = VmSpec::named("x");
        s.root_disk_name = Some("boot-1".into());
        s.validate().unwrap();
        s.root_disk_name = Some("Boot".into());
        assert_eq!(s.validate().unwrap_err().field, "root_disk_name");
    }

    #[test]
    fn bounds() {
        let mut s = VmSpec::named("x");
        s.vcpus = 0;
        assert_eq!(s.validate().unwrap_err().field, "vcpus");
        s.vcpus = MAX_VCPUS + 1;
        assert_eq!(s.validate().unwrap_err().field, "vcpus");
        let mut s = VmSpec::named("x");
        s.memory_mib = 1;
        assert_eq!(s.validate().unwrap_err().field, "memory_mib");
        let mut s = VmSpec::named("x");
        s.disk_gb = 0;
        assert_eq!(s.validate().unwrap_err().field, "disk_gb");
    }

    #[test]
    fn ssh_keys() {
        let mut s = VmSpec::named("x");
        s.ssh_keys = vec![KEY.into()];
        s.validate().unwrap();
        s.ssh_keys = vec!["ssh-ed25519".into()];
        assert_eq!(s.validate().unwrap_err().field, "ssh_keys");
        s.ssh_keys = vec![format!("{KEY}\nssh-rsa AAAA")];
        assert_eq!(s.validate().unwrap_err().field, "ssh_keys");
    }

    #[test]
    fn port_forwards() {
        let mut s = VmSpec::named("x");
        s.port_forwards = vec![PortForward { guest_port: 80, host_port: None, protocol: Protocol::Tcp }];
        s.validate().unwrap();
        s.port_forwards.push(PortForward { guest_port: 80, host_port: Some(8080), protocol: Protocol::Tcp });
        assert_eq!(s.validate().unwrap_err().field, "port_forwards");
        s.port_forwards[1].protocol = Protocol::Udp;
        s.validate().unwrap();
        s.port_forwards[1].host_port = Some(0);
        assert_eq!(s.validate().unwrap_err().field, "port_forwards");
    }

    #[test]
    fn volume_mounts() {
        let ok = VolumeMount { volume_id: VolumeId::new(), mount_path: Some("/mnt/data".into()), readonly: false, overlay: false, overlay_size_mib: None };
        ok.validate().unwrap();
        VolumeMount { mount_path: None, ..ok.clone() }.validate().unwrap();
        for path in ["mnt", "/", "/a/../b", "/a b"] {
            let v = VolumeMount { mount_path: Some(path.into()), ..ok.clone() };
            assert_eq!(v.validate().unwrap_err().field, "mount_path", "{path}");
        }
        let v = VolumeMount { overlay: true, overlay_size_mib: Some(64), ..ok.clone() };
        assert_eq!(v.validate().unwrap_err().field, "overlay");
        let v = VolumeMount { overlay: true, readonly: true, ..ok.clone() };
        assert_eq!(v.validate().unwrap_err().field, "overlay_size_mib");
        VolumeMount { overlay: true, readonly: true, overlay_size_mib: Some(64), ..ok }.validate().unwrap();
    }

    fn disk(name: &str, kind: DiskKind) -> DataDisk {
        DataDisk { name: name.into(), size_gb: 10, kind, mount_path: None, delete_with_vm: true }
    }

    #[test]
    fn data_disks_are_block_unless_asked_and_filesystems_mount_under_mnt() {
        let d: DataDisk = serde_json::from_str(r#"{"name":"raw","size_gb":10}"#).unwrap();
        assert_eq!((d.kind, d.delete_with_vm, d.mount_path()), (DiskKind::Block, true, None));
        let d: DataDisk = serde_json::from_str(r#"{"name":"logs","size_gb":10,"type":"filesystem"}"#).unwrap();
        assert_eq!(d.mount_path().as_deref(), Some("/mnt/logs"));
        let d = DataDisk { mount_path: Some("/var/lib/db".into()), ..d };
        assert_eq!(d.mount(VolumeId::new()).mount_path.as_deref(), Some("/var/lib/db"));
        assert!(serde_json::from_str::<DataDisk>(r#"{"name":"x","size_gb":1,"type":"nvme"}"#).is_err());
    }

    #[test]
    fn disks_at_create() {
        let mut s = VmSpec::named("x");
        s.data_disks = vec![disk("a", DiskKind::Filesystem), disk("b", DiskKind::Block)];
        s.validate().unwrap();
        s.data_disks[1].name = "a".into();
        assert_eq!(s.validate().unwrap_err().field, "data_disks", "names are unique");
        s.data_disks[1] = DataDisk { mount_path: Some("/data".into()), ..disk("b", DiskKind::Block) };
        assert_eq!(s.validate().unwrap_err().field, "mount_path", "a block disk is not mounted");
        s.data_disks[1] = DataDisk { mount_path: Some("/mnt/a".into()), ..disk("b", DiskKind::Filesystem) };
        assert_eq!(s.validate().unwrap_err().field, "mount_path", "two disks on one path");
        s.data_disks[1] = disk("b", DiskKind::Block);
        let vol = VolumeId::new();
        let mount = VolumeMount { volume_id: vol, mount_path: Some("/mnt/a".into()), readonly: false, overlay: false, overlay_size_mib: None };
        s.volumes = vec![mount.clone()];
        assert_eq!(s.validate().unwrap_err().field, "mount_path", "a volume on a data disk's path");
        s.volumes = vec![VolumeMount { mount_path: None, ..mount.clone() }];
        s.validate().unwrap();
        s.volumes.push(s.volumes[0].clone());
        assert_eq!(s.validate().unwrap_err().field, "volumes", "a volume twice");
        s.volumes.pop();
        s.root_volume = Some(vol);
        assert_eq!(s.validate().unwrap_err().field, "volumes", "the root volume as a data volume too");
        s.root_volume = None;
        s.data_disks = (0..MAX_DISKS).map(|i| disk(&format!("d{i}"), DiskKind::Block)).collect();
        assert_eq!(s.validate().unwrap_err().field, "data_disks", "more than the slots");
        s.data_disks.pop();
        s.validate().unwrap();
        s.data_disks[0].size_gb = 0;
        assert_eq!(s.validate().unwrap_err().field, "data_disks");
    }

    #[test]
    fn a_root_volume_counts_as_a_volume_not_as_the_vms_disk() {
        let mut s = VmSpec::named("a");
        s.data_disks = vec![disk("d", DiskKind::Block)];
        assert_eq!(s.resources().disk_gb, 10, "data disks count as the volumes they are");
        s.root_volume = Some(VolumeId::new());
        assert_eq!(s.resources().disk_gb, 0);
    }

    #[test]
    fn network() {
        let mut s = VmSpec::named("x");
        s.network.guest_mac = Some("02:fc:00:00:00:0a".into());
        s.validate().unwrap();
        s.network.guest_mac = Some("03:fc:00:00:00:0a".into());
        assert_eq!(s.validate().unwrap_err().field, "guest_mac");
        s.network.guest_mac = Some("zz".into());
        assert_eq!(s.validate().unwrap_err().field, "guest_mac");
        let mut s = VmSpec::named("x");
        s.network.guest_ip = Some(Ipv4Addr::new(172, 16, 0, 10));
        assert_eq!(s.validate().unwrap_err().field, "guest_ip");
        s.network.mode = NetworkMode::Bridge;
        s.validate().unwrap();
        s.port_forwards = vec![PortForward { guest_port: 80, host_port: None, protocol: Protocol::Tcp }];
        assert_eq!(s.validate().unwrap_err().field, "port_forwards");
    }

    #[test]
    fn guest_ip_survives_the_binary_codec() {
        let mut s = VmSpec::named("x");
        s.network.mode = NetworkMode::Bridge;
        s.network.guest_ip = Some(Ipv4Addr::new(172, 30, 0, 9));
        let back: VmSpec = rmp_serde::from_slice(&rmp_serde::to_vec_named(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["network"]["guest_ip"], "172.30.0.9");
    }

    #[test]
    fn boot_args_cannot_override_vmplane_parameters() {
        let mut s = VmSpec::named("x");
        for ok in ["quiet loglevel=3", "init=/sbin/init", "foo=vmplane.net=1", "a --b"] {
            s.boot_args = Some(ok.into());
            s.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "vmplane.net=10.0.0.9/24,10.0.0.1",
            "quiet  vmplane.net=x",
            "quiet\tvmplane.rootwait=0",
            "\"vmplane.net=10.0.0.9/24,10.0.0.1\"",
            "a=\"b vmplane.debug\"",
            "quiet -- init-arg",
            "x\u{0}y",
            "x\ry",
        ] {
            s.boot_args = Some(bad.into());
            assert_eq!(s.validate().unwrap_err().field, "boot_args", "{bad:?}");
        }
    }

    #[test]
    fn env_and_labels() {
        let mut s = VmSpec::named("x");
        s.env.insert("1BAD".into(), "v".into());
        assert_eq!(s.validate().unwrap_err().field, "env");
        let mut s = VmSpec::named("x");
        s.labels.insert(String::new(), "v".into());
        assert_eq!(s.validate().unwrap_err().field, "labels");
    }
}

//! `/api/v2/instances`: create (a JSON:API document in, 201 out), list, get
//! and delete the caller's VMs in the marketplace's shape. A create names
//! its host node, resources, port forwards from the host's available ports,
//! exactly one of `ssh_key` (the key itself) and `ssh_key_id` (a stored key,
//! `/v1/ssh-keys`), and `cloud_init` options rendered as `#cloud-config`.

use super::JsonApi;
use super::auth::Caller;
use super::error::{ErrorDocument, Json, MarketError, MarketResult, PathParam};
use super::hostnodes::host_id;
use crate::AppState;
use crate::app::vms::{self, Action, NewVm};
use crate::app::{Allocation, App, AppError, Principal, Window, hosts};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use vmplane_domain::cloud_init::CloudConfig;
use vmplane_domain::placement::Placement;
use vmplane_domain::spec::{GpuSpec, PortForward, Protocol, VmSpec};
use vmplane_domain::vm::{Vm, VmStatus};
use vmplane_domain::{HostId, SshKeyId, VmId, ssh_key};

/// The only resource type of this collection.
pub const TYPE: &str = "virtualmachine";
/// Defaults of `resources`, which the original leaves unsaid.
const DEFAULT_VCPUS: u32 = 1;
const DEFAULT_RAM_GB: u64 = 1;
const DEFAULT_STORAGE_GB: u32 = 10;

/// `POST /api/v2/instances` body: `{"data":{"type":"virtualmachine","attributes":{…}}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceDocument {
    pub data: CreateInstanceData,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceData {
    /// `virtualmachine` (another type is 409 `type_mismatch`, as JSON:API says).
    #[serde(rename = "type")]
    pub kind: String,
    pub attributes: InstanceAttributes,
}

/// What the new instance is to be.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceAttributes {
    /// A DNS label: 1-63 of a-z, 0-9 and '-'.
    #[schema(value_type = vmplane_domain::spec::DnsLabel)]
    pub name: String,
    /// `virtualmachine`, if given (another type is 409 `type_mismatch`).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// A catalog image name (`ubuntu2404`, `debian-12`, ...), an installed slug or an OCI reference.
    #[schema(value_type = vmplane_domain::catalog::ImageRef)]
    pub image: String,
    /// The host node to run on (`host_…`); without it vmplane chooses.
    #[serde(default)]
    pub hostnode_id: Option<String>,
    /// Default 1 vCPU, 1 GB, 10 GB, no GPU.
    #[serde(default)]
    pub resources: Option<ResourcesRequest>,
    /// External ports come from the host node's `available_ports`. At most
    /// 32, each `internal_port` once (400 `validation_failed` otherwise).
    #[serde(default)]
    #[schema(max_items = 32)]
    pub port_forwards: Vec<PortForwardRequest>,
    /// A stored SSH key (`sshkey_…`, see `/v1/ssh-keys`); exactly one of this and `ssh_key`
    /// (400 `ssh_key_required` otherwise).
    #[serde(default)]
    pub ssh_key_id: Option<String>,
    /// An OpenSSH public key; exactly one of this and `ssh_key_id`.
    #[serde(default)]
    #[schema(value_type = Option<vmplane_domain::ssh_key::PublicKeyText>)]
    pub ssh_key: Option<String>,
    #[serde(default)]
    pub cloud_init: Option<CloudInitRequest>,
}

/// What the instance takes from its host node.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesRequest {
    /// At most `MAX_VCPUS` (256). Default 1.
    #[schema(minimum = 1, maximum = 256)]
    pub vcpu_count: Option<u32>,
    /// Whole GB of memory, at most `MAX_MEMORY_MIB` (4096 GB). Default 1.
    #[schema(minimum = 1, maximum = 4096)]
    pub ram_gb: Option<u64>,
    /// Root disk size in GB, at most `MAX_DISK_GB` (65536). Default 10.
    #[schema(minimum = 1, maximum = 65536)]
    pub storage_gb: Option<u32>,
    /// At most one GPU model: `{"<model>": {"count": N}}`.
    #[serde(default)]
    pub gpus: BTreeMap<String, GpuRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// 1-16.
    #[schema(minimum = 1, maximum = 16)]
    pub count: u32,
}

/// A TCP port of the host node forwarded to the instance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForwardRequest {
    /// The port in the instance, 1-65535.
    #[schema(minimum = 1, maximum = 65535)]
    pub internal_port: u16,
    /// One of the host node's `available_ports` (a port outside the host
    /// node's port range is 400 `port_out_of_range`, one another instance
    /// forwards from 409 `port_conflict`); without it vmplane picks one.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub external_port: Option<u16>,
}

/// Options applied at first boot through the guest's cloud-init.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitRequest {
    /// Shell command lines run after the system has booted, in order: at
    /// most 100, each of at most 4096 bytes (UTF-8).
    #[serde(default)]
    #[schema(value_type = Vec<Command>, max_items = 100)]
    pub runcmd: Vec<String>,
    /// Packages to install: at most 100 Debian package names.
    #[serde(default)]
    #[schema(value_type = Vec<PackageName>, max_items = 100)]
    pub packages: Vec<String>,
    /// Default false.
    #[serde(default)]
    pub package_update: bool,
    /// Default false.
    #[serde(default)]
    pub package_upgrade: bool,
}

/// The OpenAPI schema of a `runcmd` line, as `CloudConfig::validate`
/// checks it: text with something besides blanks, no control characters
/// but newlines and tabs, no line or paragraph separator or byte-order mark.
pub struct Command;

/// What a `runcmd` line may hold (a test checks it against the domain).
pub const COMMAND_PATTERN: &str = concat!(
    r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]*",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]",
    r"[^\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]*$"
);

/// What a package may be: a Debian package name, an optional `=version`.
pub const PACKAGE_PATTERN: &str = r"^[a-z0-9][a-z0-9+.-]{1,127}(=[A-Za-z0-9+.:~-]{1,128})?$";

impl utoipa::PartialSchema for Command {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(COMMAND_PATTERN))
            .max_length(Some(vmplane_domain::cloud_init::MAX_COMMAND_LEN))
            .description(Some("A shell command line: at most 4096 bytes (UTF-8), not only blanks, no control characters but newlines and tabs."))
            .into()
    }
}

impl ToSchema for Command {}

/// The OpenAPI schema of a package name (see [`PACKAGE_PATTERN`]).
pub struct PackageName;

impl utoipa::PartialSchema for PackageName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PACKAGE_PATTERN))
            .description(Some("A Debian package name (a-z, 0-9, '+', '-', '.'), optionally `=version`."))
            .examples([serde_json::json!("curl")])
            .into()
    }
}

impl ToSchema for PackageName {}

/// The rules JSON Schema states that utoipa's derive cannot write: the
/// resource type, on `CreateInstanceData`.
pub fn data_rule() -> serde_json::Value {
    serde_json::json!({"allOf": [{"properties": {"type": {"const": TYPE}}}]})
}

/// The rules of `InstanceAttributes`: exactly one of `ssh_key` and
/// `ssh_key_id`, and the resource type if given.
pub fn attributes_rule() -> serde_json::Value {
    let given = |field: &str| serde_json::json!({"properties": {field: {"type": "string"}}, "required": [field]});
    serde_json::json!({"allOf": [
        {"oneOf": [given("ssh_key"), given("ssh_key_id")]},
        {"properties": {"type": {"enum": [TYPE, null]}}}
    ]})
}

/// The rule of `ResourcesRequest`: GPUs of one model at most, named in
/// 1-64 characters.
pub fn resources_rule() -> serde_json::Value {
    serde_json::json!({"allOf": [{"properties": {"gpus": {"maxProperties": 1, "propertyNames": {"minLength": 1, "maxLength": 64}}}}]})
}

/// `{"data":{…}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceDocument {
    pub data: Instance,
}

/// `{"data":[…],"meta":{"total":N}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceList {
    pub data: Vec<Instance>,
    pub meta: ListMeta,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListMeta {
    pub total: usize,
}

/// An instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Instance {
    /// `virtualmachine`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The vmplane VM id (`vm_…`).
    #[schema(value_type = String)]
    pub id: VmId,
    pub name: String,
    /// `pending`, `provisioning`, `starting`, `running`, `stopping`, `stopped`,
    /// `restarting`, `standby`, `restoring`, `deleting`, `deleted` or `failed`.
    pub status: &'static str,
    #[schema(value_type = String)]
    pub hostnode_id: HostId,
    /// The installed image the instance boots.
    pub image: String,
    pub resources: InstanceResources,
    pub port_forwards: Vec<InstancePort>,
    /// The host port forwarded to the instance's port 22 besides `port_forwards`.
    pub ssh_port: Option<u16>,
    pub ip: Option<String>,
    /// Why the instance failed, or what it is doing.
    pub message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceResources {
    pub vcpu_count: u32,
    /// GB of memory (fractional when the VM was created in MiB elsewhere).
    #[schema(value_type = f64)]
    pub ram_gb: serde_json::Number,
    pub storage_gb: u32,
    pub gpus: BTreeMap<String, InstanceGpu>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceGpu {
    pub count: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstancePort {
    pub internal_port: u16,
    /// Null until the host port is chosen, when the request gave none.
    pub external_port: Option<u16>,
}

impl Instance {
    pub fn new(vm: Vm) -> Self {
        let memory_mib = vm.memory_mib();
        // Whole GB as an integer, as requests give it; MiB sizes from other APIs as a fraction.
        let ram_gb = match memory_mib.is_multiple_of(1024) {
            true => serde_json::Number::from(memory_mib / 1024),
            false => serde_json::Number::from_f64(memory_mib as f64 / 1024.0).unwrap_or_else(|| serde_json::Number::from(memory_mib / 1024)),
        };
        let net = vm.network.unwrap_or_default();
        let s = vm.spec;
        let port_forwards = if net.port_forwards.is_empty() {
            s.port_forwards.iter().map(|p| InstancePort { internal_port: p.guest_port, external_port: p.host_port }).collect()
        } else {
            net.port_forwards.iter().map(|p| InstancePort { internal_port: p.guest_port, external_port: Some(p.host_port) }).collect()
        };
        // A VM created elsewhere may ask for GPUs of no particular model.
        let gpus = s.gpu.map(|g| (g.model.unwrap_or_else(|| "any".into()), InstanceGpu { count: g.count })).into_iter().collect();
        Self {
            kind: TYPE,
            id: vm.id,
            name: s.name,
            status: vm.status.as_str(),
            hostnode_id: vm.host,
            image: s.image,
            resources: InstanceResources { vcpu_count: s.vcpus, ram_gb, storage_gb: s.disk_gb, gpus },
            port_forwards,
            ssh_port: net.ssh_port,
            ip: net.ip,
            message: vm.message,
            created_at: vm.created_at,
        }
    }
}

impl CreateInstanceDocument {
    /// The create this document asks for, every rule of the dialect checked.
    fn into_new_vm(self) -> MarketResult<NewVm> {
        let CreateInstanceData { kind, attributes: a } = self.data;
        if kind != TYPE || a.kind.as_deref().is_some_and(|k| k != TYPE) {
            return Err(MarketError::new(StatusCode::CONFLICT, "type_mismatch", format!("this collection holds resources of type `{TYPE}`")));
        }
        let mut spec = VmSpec::named(a.name);
        spec.image = a.image;
        let r = a.resources.unwrap_or(ResourcesRequest { vcpu_count: None, ram_gb: None, storage_gb: None, gpus: BTreeMap::new() });
        spec.vcpus = r.vcpu_count.unwrap_or(DEFAULT_VCPUS);
        spec.memory_mib = r
            .ram_gb
            .unwrap_or(DEFAULT_RAM_GB)
            .checked_mul(1024)
            .ok_or_else(|| MarketError::bad_request("validation_failed", "resources.ram_gb is too large"))?;
        spec.disk_gb = r.storage_gb.unwrap_or(DEFAULT_STORAGE_GB);
        if r.gpus.len() > 1 {
            return Err(MarketError::bad_request("validation_failed", "resources.gpus: an instance's GPUs are all of one model"));
        }
        spec.gpu = r.gpus.into_iter().next().map(|(model, g)| GpuSpec { count: g.count, model: Some(model) });
        spec.port_forwards =
            a.port_forwards.iter().map(|p| PortForward { guest_port: p.internal_port, host_port: p.external_port, protocol: Protocol::Tcp }).collect();
        let mut ssh_key_ids = Vec::new();
        match (a.ssh_key, a.ssh_key_id) {
            (Some(key), None) => {
                spec.ssh_keys =
                    vec![ssh_key::parse_public_key(&key).map_err(|e| MarketError::bad_request("validation_failed", format!("ssh_key: {e}")))?.openssh]
            }
            (None, Some(id)) => ssh_key_ids.push(id.parse::<SshKeyId>().map_err(|_| MarketError::not_found(format!("ssh key {id} not found")))?),
            _ => return Err(MarketError::bad_request("ssh_key_required", "give exactly one of ssh_key (a public key) and ssh_key_id (a stored key)")),
        }
        if let Some(c) = a.cloud_init {
            let config = CloudConfig { package_update: c.package_update, package_upgrade: c.package_upgrade, packages: c.packages, runcmd: c.runcmd };
            config.validate().map_err(|e| MarketError::bad_request("validation_failed", format!("cloud_init.{e}")))?;
            spec.user_data = Some(config.render());
        }
        let host_id = a.hostnode_id.as_deref().map(host_id).transpose()?;
        Ok(NewVm { ssh_key_ids, placement: Placement { host_id, ..Placement::default() }, ..NewVm::from(spec) })
    }
}

/// Refuse what the named host node has not got available: vCPUs, memory,
/// disk and GPUs as `GET /api/v2/hostnodes/{id}` shows them. (Placement
/// reserves memory, disk, GPUs and ports for real; vCPUs, which vmplane
/// may share, are checked here only.)
fn check_against_hostnode(app: &App, who: &Principal, host: HostId, spec: &VmSpec) -> MarketResult<()> {
    let node = hosts::get(app, who, host).map_err(|e| match e {
        AppError::NotFound(_) => MarketError::not_found(format!("hostnode {host} not found")),
        other => other.into(),
    })?;
    let a = node.available;
    let too_much = |what: &str, want: String, has: String| {
        Err(MarketError::new(
            StatusCode::CONFLICT,
            "insufficient_capacity",
            format!("resources.{what} {want} is more than hostnode {host} has available ({has})"),
        ))
    };
    if u64::from(spec.vcpus) > a.vcpus {
        return too_much("vcpu_count", spec.vcpus.to_string(), a.vcpus.to_string());
    }
    if spec.memory_mib > a.memory_mib {
        return too_much("ram_gb", (spec.memory_mib / 1024).to_string(), format!("{} GB", a.memory_mib / 1024));
    }
    if u64::from(spec.disk_gb) > a.disk_gb {
        return too_much("storage_gb", spec.disk_gb.to_string(), format!("{} GB", a.disk_gb));
    }
    if let Some(GpuSpec { count, model: Some(model) }) = &spec.gpu {
        let free = node.free_gpus.get(model).copied().unwrap_or(0);
        if *count > free {
            return too_much(&format!("gpus.{model}.count"), count.to_string(), free.to_string());
        }
    }
    Ok(())
}

/// The VM ids the marketplace accepts: vmplane's; anything else names no instance.
fn vm_id(raw: &str) -> MarketResult<VmId> {
    raw.parse().map_err(|_| MarketError::not_found(format!("instance {raw} not found")))
}

/// The caller's instance `raw`; a deleted one is gone, as it is from the list.
fn visible(app: &App, who: &Principal, raw: &str) -> MarketResult<Vm> {
    let vm = vms::get(app, who, vm_id(raw)?).map_err(instance_not_found(raw))?;
    if vm.status == VmStatus::Deleted {
        return Err(MarketError::not_found(format!("instance {raw} not found")));
    }
    Ok(vm)
}

/// Not found, in the words of this collection.
fn instance_not_found(id: &str) -> impl Fn(AppError) -> MarketError + '_ {
    move |e| match e {
        AppError::NotFound(_) => MarketError::not_found(format!("instance {id} not found")),
        other => other.into(),
    }
}

/// Create an instance: 201 with it as accepted (usually `pending` or
/// `provisioning`; poll it until `running`).
#[utoipa::path(post, path = "/api/v2/instances", tag = "instances", request_body = CreateInstanceDocument,
    responses((status = 201, body = InstanceDocument), (status = "4XX", body = ErrorDocument), (status = 503, body = ErrorDocument)))]
pub(super) async fn create_instance(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    Json(doc): Json<CreateInstanceDocument>,
) -> MarketResult<(StatusCode, JsonApi<InstanceDocument>)> {
    let new = doc.into_new_vm()?;
    if let Some(host) = new.placement.host_id {
        check_against_hostnode(&state.app, &who, host, &new.spec)?;
    }
    let accepted = vms::create(&state.app, &who, alloc, new).await?;
    Ok((StatusCode::CREATED, JsonApi(InstanceDocument { data: Instance::new(accepted.resource) })))
}

/// The caller's instances, oldest first (deleted ones left out).
#[utoipa::path(get, path = "/api/v2/instances", tag = "instances",
    responses((status = 200, body = InstanceList), (status = "4XX", body = ErrorDocument)))]
pub(super) async fn list_instances(State(state): State<AppState>, Caller(who): Caller) -> MarketResult<JsonApi<InstanceList>> {
    let listed = vms::list(&state.app, &who, Default::default(), Window { offset: 0, limit: usize::MAX })?;
    Ok(JsonApi(InstanceList { data: listed.items.into_iter().map(Instance::new).collect(), meta: ListMeta { total: listed.total } }))
}

/// One instance (a deleted one is not found).
#[utoipa::path(get, path = "/api/v2/instances/{id}", tag = "instances", params(("id" = String, Path, description = "Instance id (`vm_…`)")),
    responses((status = 200, body = InstanceDocument), (status = "4XX", body = ErrorDocument)))]
pub(super) async fn get_instance(State(state): State<AppState>, Caller(who): Caller, PathParam(raw): PathParam) -> MarketResult<JsonApi<InstanceDocument>> {
    Ok(JsonApi(InstanceDocument { data: Instance::new(visible(&state.app, &who, &raw)?) }))
}

/// Delete an instance: 202 with it as the deletion leaves it (`deleting`);
/// one deleted already is not found.
#[utoipa::path(delete, path = "/api/v2/instances/{id}", tag = "instances", params(("id" = String, Path, description = "Instance id (`vm_…`)")),
    responses((status = 202, body = InstanceDocument), (status = "4XX", body = ErrorDocument), (status = 503, body = ErrorDocument)))]
pub(super) async fn delete_instance(
    State(state): State<AppState>,
    Caller(who): Caller,
    alloc: Allocation,
    PathParam(raw): PathParam,
) -> MarketResult<(StatusCode, JsonApi<InstanceDocument>)> {
    let id = visible(&state.app, &who, &raw)?.id;
    let deleted = vms::act(&state.app, &who, alloc, id, Action::Delete).await.map_err(instance_not_found(&raw))?;
    Ok((StatusCode::ACCEPTED, JsonApi(InstanceDocument { data: Instance::new(deleted.resource) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(attributes: serde_json::Value) -> serde_json::Result<CreateInstanceDocument> {
        serde_json::from_value(serde_json::json!({"data": {"type": "virtualmachine", "attributes": attributes}}))
    }

    #[test]
    fn the_example_becomes_a_spec() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";
        let new = doc(serde_json::json!({
            "name": "my-port-forward-instance", "type": "virtualmachine", "image": "ubuntu2404",
            "resources": {"vcpu_count": 2, "ram_gb": 4, "storage_gb": 300, "gpus": {"geforcertx4090-pcie-24gb": {"count": 1}}},
            "port_forwards": [{"internal_port": 22, "external_port": 20000}, {"internal_port": 80, "external_port": 20001}],
            "ssh_key": key,
            "cloud_init": {"runcmd": ["echo 'Hello World'"], "packages": ["curl"], "package_update": true, "package_upgrade": false}
        }))
        .unwrap()
        .into_new_vm()
        .unwrap();
        let s = &new.spec;
        assert_eq!((s.vcpus, s.memory_mib, s.disk_gb, s.image.as_str()), (2, 4096, 300, "ubuntu2404"));
        assert_eq!(s.gpu, Some(GpuSpec { count: 1, model: Some("geforcertx4090-pcie-24gb".into()) }));
        assert_eq!(s.port_forwards.iter().map(|p| (p.guest_port, p.host_port)).collect::<Vec<_>>(), vec![(22, Some(20000)), (80, Some(20001))]);
        assert_eq!(s.ssh_keys, vec![key.to_owned()]);
        assert_eq!(s.user_data.as_deref(), Some("#cloud-config\npackage_update: true\npackages:\n- curl\nruncmd:\n- echo 'Hello World'\n"));
        assert!(new.ssh_key_ids.is_empty() && new.placement.host_id.is_none());
    }

    #[test]
    fn exactly_one_ssh_key() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let id = SshKeyId::new().to_string();
        for attrs in [serde_json::json!({"name": "a", "image": "x"}), serde_json::json!({"name": "a", "image": "x", "ssh_key": key, "ssh_key_id": id})] {
            let e = doc(attrs).unwrap().into_new_vm().unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, "ssh_key_required"));
        }
        let new = doc(serde_json::json!({"name": "a", "image": "x", "ssh_key_id": id})).unwrap().into_new_vm().unwrap();
        assert_eq!(new.ssh_key_ids.len(), 1);
    }
}

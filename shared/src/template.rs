//! The template aggregate: default values for creating VMs, kept per org.
//!
//! A create that names a template (`VmSpec::template`, by id or name) takes
//! the template's value for every field the request did not give; what the
//! request gives wins ([`TemplateSpec::fill`]). A template is control-plane
//! data only: its commands are carried out by any worker (the tenancy
//! consumer), and no host does anything for it.

use crate::ids::{OpId, OrgId, ProjectId, TemplateId};
use crate::spec::{NetworkMode, PortForward, SpecError, VmSpec, is_dns_label};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What a template holds: a name, and default values for a subset of a
/// VM's spec. A field left out gives no default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// DNS label, unique among the org's templates.
    #[schema(value_type = crate::spec::DnsLabel)]
    pub name: String,
    /// Image name (slug, catalog name, `img_` id or OCI reference), resolved when a VM is created.
    #[serde(default)]
    #[schema(value_type = Option<crate::catalog::ImageRef>)]
    pub image: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 64, maximum = 4194304)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4194304)]
    pub hotplug_memory_mib: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65536)]
    pub disk_gb: Option<u32>,
    /// Extra kernel command line arguments.
    #[serde(default)]
    #[schema(value_type = Option<crate::spec::BootArgs>)]
    pub boot_args: Option<String>,
    /// cloud-init user data (`#!` script or `#cloud-config`), at most 64 Ki characters.
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub user_data: Option<String>,
    /// Whether the VM gets a network.
    #[serde(default)]
    pub enable_network: Option<bool>,
    /// `user` or `bridge`.
    #[serde(default)]
    pub network_mode: Option<NetworkMode>,
    /// Guest ports to forward; host ports are chosen per VM, so a template names none.
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeSet<TemplatePortForward>>, max_items = 32)]
    pub port_forwards: Option<Vec<PortForward>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::ssh_key::PublicKeyText>>, max_items = 10)]
    pub ssh_keys: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<crate::spec::Env>)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[schema(value_type = Option<crate::spec::Labels>)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A port forward as a template names it: the guest port only (the schema
/// of `port_forwards` in a template; [`TemplateSpec::validate`] refuses a
/// host port).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePortForward {
    #[schema(minimum = 1, maximum = 65535)]
    pub guest_port: u16,
    #[serde(default)]
    pub protocol: crate::spec::Protocol,
}

/// A field of a create request that a template can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Image,
    Vcpus,
    MemoryMib,
    HotplugMemoryMib,
    DiskGb,
    BootArgs,
    UserData,
    EnableNetwork,
    NetworkMode,
    PortForwards,
    SshKeys,
    Env,
    Labels,
}

impl Field {
    /// Every field a template can fill.
    pub const ALL: [Field; 13] = [
        Self::Image,
        Self::Vcpus,
        Self::MemoryMib,
        Self::HotplugMemoryMib,
        Self::DiskGb,
        Self::BootArgs,
        Self::UserData,
        Self::EnableNetwork,
        Self::NetworkMode,
        Self::PortForwards,
        Self::SshKeys,
        Self::Env,
        Self::Labels,
    ];

    /// The fields of `spec` that hold no value (an absent option, an empty
    /// list or map): what a request that only says "this spec" leaves unset.
    pub fn empty_in(spec: &VmSpec) -> BTreeSet<Field> {
        let empty = |f: &Field| match f {
            Self::BootArgs => spec.boot_args.is_none(),
            Self::UserData => spec.user_data.is_none(),
            Self::PortForwards => spec.port_forwards.is_empty(),
            Self::SshKeys => spec.ssh_keys.is_empty(),
            Self::Env => spec.env.is_empty(),
            Self::Labels => spec.labels.is_empty(),
            _ => false,
        };
        Self::ALL.into_iter().filter(empty).collect()
    }
}

impl TemplateSpec {
    /// Every rule a template must satisfy: a DNS-label name, values a VM spec
    /// accepts, and no host ports (each VM gets its own).
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) {
            return Err(SpecError { field: "name", reason: "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'".into() });
        }
        if self.port_forwards.iter().flatten().any(|pf| pf.host_port.is_some()) {
            return Err(SpecError { field: "port_forwards", reason: "a template names guest ports only; host ports are chosen for each VM".into() });
        }
        // Every value, applied to the defaults, must make a valid spec.
        let mut spec = VmSpec::named("template");
        self.fill(&mut spec, &Field::ALL.into_iter().collect());
        spec.validate()
    }

    /// Put the template's value into every field of `spec` that is in
    /// `unset` and for which the template has one; the rest of `spec` (what
    /// the request gave) stays.
    pub fn fill(&self, spec: &mut VmSpec, unset: &BTreeSet<Field>) {
        for field in unset {
            match field {
                Field::Image => set(&mut spec.image, &self.image),
                Field::Vcpus => set(&mut spec.vcpus, &self.vcpus),
                Field::MemoryMib => set(&mut spec.memory_mib, &self.memory_mib),
                Field::HotplugMemoryMib => set(&mut spec.hotplug_memory_mib, &self.hotplug_memory_mib),
                Field::DiskGb => set(&mut spec.disk_gb, &self.disk_gb),
                Field::BootArgs => set_some(&mut spec.boot_args, &self.boot_args),
                Field::UserData => set_some(&mut spec.user_data, &self.user_data),
                Field::EnableNetwork => set(&mut spec.network.enabled, &self.enable_network),
                Field::NetworkMode => set(&mut spec.network.mode, &self.network_mode),
                Field::PortForwards => set(&mut spec.port_forwards, &self.port_forwards),
                Field::SshKeys => set(&mut spec.ssh_keys, &self.ssh_keys),
                Field::Env => set(&mut spec.env, &self.env),
                Field::Labels => set(&mut spec.labels, &self.labels),
            }
        }
    }
}

fn set<T: Clone>(into: &mut T, from: &Option<T>) {
    if let Some(v) = from {
        *into = v.clone();
    }
}

fn set_some<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
    if from.is_some() {
        into.clone_from(from);
    }
}

/// Commands on a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TemplateCommand {
    Create { spec: Box<TemplateSpec> },
    Delete,
}

impl TemplateCommand {
    /// The operation kind shown in operations.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create_template",
            Self::Delete => "delete_template",
        }
    }
}

/// Everything that can happen to a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TemplateEvent {
    TemplateCreated { org: OrgId, project: ProjectId, spec: Box<TemplateSpec> },
    TemplateDeleted,
}

impl TemplateEvent {
    /// The snake_case event type used in schemas and the SSE feed.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::TemplateCreated { .. } => "template_created",
            Self::TemplateDeleted => "template_deleted",
        }
    }
}

/// A template's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: TemplateId,
    pub org: OrgId,
    pub project: ProjectId,
    pub spec: TemplateSpec,
    pub deleted: bool,
    /// The operation that last changed it.
    pub last_op: Option<OpId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Why a template command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Invalid(SpecError),
    #[error("template not found")]
    NotFound,
    #[error("template already exists")]
    AlreadyExists,
}

impl TemplateError {
    /// Machine-readable code, shared by HTTP errors and failed operations.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "validation_failed",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "conflict",
        }
    }
}

/// Decide a template command.
pub fn decide(state: Option<&Template>, org: OrgId, project: ProjectId, cmd: &TemplateCommand) -> Result<Vec<TemplateEvent>, TemplateError> {
    match (state, cmd) {
        (None, TemplateCommand::Create { spec }) => {
            spec.validate().map_err(TemplateError::Invalid)?;
            Ok(vec![TemplateEvent::TemplateCreated { org, project, spec: spec.clone() }])
        }
        (Some(_), TemplateCommand::Create { .. }) => Err(TemplateError::AlreadyExists),
        (Some(t), TemplateCommand::Delete) if !t.deleted => Ok(vec![TemplateEvent::TemplateDeleted]),
        (_, TemplateCommand::Delete) => Err(TemplateError::NotFound),
    }
}

/// Fold one event into a template's state.
pub fn evolve(state: Option<Template>, id: TemplateId, op: Option<OpId>, at: OffsetDateTime, event: &TemplateEvent) -> Option<Template> {
    match event {
        TemplateEvent::TemplateCreated { org, project, spec } => state.or_else(|| {
            Some(Template { id, org: *org, project: *project, spec: (**spec).clone(), deleted: false, last_op: op, created_at: at, updated_at: at })
        }),
        TemplateEvent::TemplateDeleted => state.map(|t| Template { deleted: true, last_op: op, updated_at: at, ..t }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Protocol;

    fn spec() -> TemplateSpec {
        TemplateSpec {
            name: "web".into(),
            image: Some("ubuntu-24.04".into()),
            vcpus: Some(2),
            memory_mib: Some(2048),
            user_data: Some("#!/bin/sh\necho hi".into()),
            enable_network: Some(false),
            port_forwards: Some(vec![PortForward { guest_port: 80, host_port: None, protocol: Protocol::Tcp }]),
            ..TemplateSpec::default()
        }
    }

    #[test]
    fn fills_only_unset_fields_and_only_with_values_it_has() {
        let mut vm = VmSpec::named("a");
        vm.vcpus = 4;
        vm.user_data = Some("mine".into());
        let unset: BTreeSet<Field> = [Field::Image, Field::MemoryMib, Field::EnableNetwork, Field::DiskGb, Field::PortForwards].into();
        spec().fill(&mut vm, &unset);
        assert_eq!(vm.image, "ubuntu-24.04");
        assert_eq!(vm.vcpus, 4, "given by the request: not in unset");
        assert_eq!(vm.memory_mib, 2048);
        assert_eq!(vm.user_data.as_deref(), Some("mine"));
        assert!(!vm.network.enabled);
        assert_eq!(vm.disk_gb, 10, "the template has no disk size: the default stays");
        assert_eq!(vm.port_forwards.len(), 1);
    }

    #[test]
    fn empty_fields_of_a_spec() {
        let mut vm = VmSpec::named("a");
        assert!(Field::empty_in(&vm).contains(&Field::UserData));
        assert!(!Field::empty_in(&vm).contains(&Field::Vcpus));
        vm.user_data = Some("x".into());
        assert!(!Field::empty_in(&vm).contains(&Field::UserData));
    }

    #[test]
    fn validation() {
        spec().validate().unwrap();
        assert_eq!(TemplateSpec { name: "Web!".into(), ..spec() }.validate().unwrap_err().field, "name");
        assert_eq!(TemplateSpec { vcpus: Some(0), ..spec() }.validate().unwrap_err().field, "vcpus");
        assert_eq!(TemplateSpec { memory_mib: Some(1), ..spec() }.validate().unwrap_err().field, "memory_mib");
        assert_eq!(TemplateSpec { boot_args: Some("vmplane.net=x".into()), ..spec() }.validate().unwrap_err().field, "boot_args");
        let pinned = vec![PortForward { guest_port: 80, host_port: Some(20080), protocol: Protocol::Tcp }];
        assert_eq!(TemplateSpec { port_forwards: Some(pinned), ..spec() }.validate().unwrap_err().field, "port_forwards");
        assert!(serde_json::from_str::<TemplateSpec>(r#"{"name":"a","cpus":2}"#).is_err());
    }

    #[test]
    fn lifecycle() {
        let (id, org, at) = (TemplateId::new(), OrgId::new(), OffsetDateTime::UNIX_EPOCH);
        let create = TemplateCommand::Create { spec: Box::new(spec()) };
        let events = decide(None, org, ProjectId::DEFAULT, &create).unwrap();
        let t = events.iter().fold(None, |s, e| evolve(s, id, None, at, e)).unwrap();
        assert_eq!((t.org, t.deleted, t.spec.name.as_str()), (org, false, "web"));
        assert_eq!(decide(Some(&t), org, ProjectId::DEFAULT, &create), Err(TemplateError::AlreadyExists));
        let events = decide(Some(&t), org, ProjectId::DEFAULT, &TemplateCommand::Delete).unwrap();
        assert_eq!(events, vec![TemplateEvent::TemplateDeleted]);
        let t = evolve(Some(t), id, None, at, &events[0]).unwrap();
        assert!(t.deleted);
        assert_eq!(decide(Some(&t), org, ProjectId::DEFAULT, &TemplateCommand::Delete), Err(TemplateError::NotFound));
        assert_eq!(decide(None, org, ProjectId::DEFAULT, &TemplateCommand::Delete), Err(TemplateError::NotFound));
        let bad = TemplateCommand::Create { spec: Box::new(TemplateSpec { name: String::new(), ..spec() }) };
        assert!(matches!(decide(None, org, ProjectId::DEFAULT, &bad), Err(TemplateError::Invalid(_))));
    }

    #[test]
    fn events_survive_the_binary_codec() {
        let ev = TemplateEvent::TemplateCreated { org: OrgId::new(), project: ProjectId::DEFAULT, spec: Box::new(spec()) };
        let back: TemplateEvent = rmp_serde::from_slice(&rmp_serde::to_vec_named(&ev).unwrap()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(serde_json::to_value(&TemplateEvent::TemplateDeleted).unwrap(), serde_json::json!({"type": "template_deleted"}));
    }
}

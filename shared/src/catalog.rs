//! The catalog: the plans, regions, locations and image names that every API
//! dialect reads, so that `small`, `eu-west` or `ubuntu-24.04` mean one thing
//! whichever API names them.
//!
//! The built-in defaults are the JSON document `catalog.json` beside this
//! file; an operator's override file (`<data-dir>/catalog.json`, read by the
//! binary) has the same shape and is merged over them entry by entry. This
//! module only parses, merges, validates and looks up: no I/O.
//!
//! Images are keyed by the installed image's slug, and carry the OS and
//! version of *that* image, so a view that renders a VM's booted slug through
//! [`Catalog::image`] always says which image really runs, whatever name the
//! request used.

use crate::host::ImageInfo;
use crate::ids::ImageId;
use crate::spec::{GpuSpec, MAX_DISK_GB, MAX_MEMORY_MIB, MAX_VCPUS, is_dns_label, is_image_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

// A region, plan or image in a request is named by a format: the names a
// deployment's catalog and hosts hold are its configuration, not the
// document's. The contract test teaches its fuzzer each format.

text_schema! {
    /// The OpenAPI schema of a region's code in a request.
    RegionCode {
        format(Some(utoipa::openapi::SchemaFormat::Custom("region".into()))),
        min_length(Some(1)),
        max_length(Some(63)),
        description(Some("A region of the catalog (`GET /v1/regions`) that an online host serves.")),
        examples([serde_json::json!(DEFAULT_REGION)]),
    }
}

text_schema! {
    /// The OpenAPI schema of a plan's name in a request.
    PlanName {
        format(Some(utoipa::openapi::SchemaFormat::Custom("plan".into()))),
        min_length(Some(1)),
        max_length(Some(63)),
        description(Some("A plan of the catalog (`GET /v1/plans`).")),
        examples([serde_json::json!("small")]),
    }
}

text_schema! {
    /// The OpenAPI schema of an image named in a create.
    ImageRef {
        format(Some(utoipa::openapi::SchemaFormat::Custom("image".into()))),
        pattern(Some(crate::spec::IMAGE_NAME_PATTERN)),
        description(Some("An image an online host has (`GET /v1/images`), by slug or id, or a catalog image name.")),
        examples([serde_json::json!("debian-minimal")]),
    }
}

/// The region a host serves when its operator names none (`--region`).
pub const DEFAULT_REGION: &str = "us-east";

/// The operator's override file, in the data dir.
pub const OVERRIDE_FILE: &str = "catalog.json";

/// The built-in catalog (a unit test proves it valid).
const BUILT_IN: &str = include_str!("catalog.json");

/// A machine size a create request may name instead of vCPUs, memory and disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Root disk size.
    pub disk_gb: u32,
    /// What dialects report as the disk's kind (Visor's `diskType`).
    #[serde(default = "ssd")]
    pub disk_type: String,
    /// The VM's vCPUs are meant to be its own, not shared with other VMs (Visor's `power-dedicated`).
    #[serde(default)]
    pub dedicated: bool,
    /// GPUs passed through to VMs of this plan.
    #[serde(default)]
    pub gpu: Option<GpuSpec>,
}

fn ssd() -> String {
    "ssd".into()
}

/// A region code's entry: hosts announce the code (`--region`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Human-readable name.
    pub name: String,
}

/// Where a host stands, as the marketplace API describes a location; a host
/// names one with `--location <id>` and announces this entry with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// The region code the location is in.
    pub region: String,
    pub city: String,
    #[serde(default)]
    pub state_province: Option<String>,
    pub country: String,
    #[serde(default)]
    pub tier: Option<u8>,
    #[serde(default)]
    pub network_speed_gbps: Option<u32>,
    #[serde(default)]
    pub network_speed_upload_gbps: Option<u32>,
    #[serde(default)]
    pub has_network_storage: bool,
}

/// An installed image (keyed by its slug) and the names requests may use for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The name views show for this image (e.g. Visor's `os`); default: the slug.
    #[serde(default)]
    pub name: Option<String>,
    /// The OS the image really holds, and its version: what views report.
    pub os: String,
    pub version: String,
    /// Human-readable description.
    #[serde(default)]
    pub title: Option<String>,
    /// Other names that resolve to this image: seed names (`ubuntu2404`,
    /// `img_default`) and OCI references (normalized: `alpine:3` is
    /// `docker.io/library/alpine:3`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The merged catalog. Build it with [`Catalog::built_in`] or
/// [`Catalog::with_override`]; it is valid by construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalog {
    plans: BTreeMap<String, Plan>,
    regions: BTreeMap<String, Region>,
    locations: BTreeMap<String, Location>,
    images: BTreeMap<String, ImageEntry>,
    /// Every name an image may be asked for (slug, name, aliases) -> slug.
    #[serde(skip)]
    names: BTreeMap<String, String>,
}

/// An override file (and the built-in document): entries by key, `null` removes one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    plans: BTreeMap<String, Option<Plan>>,
    #[serde(default)]
    regions: BTreeMap<String, Option<Region>>,
    #[serde(default)]
    locations: BTreeMap<String, Option<Location>>,
    #[serde(default)]
    images: BTreeMap<String, Option<ImageEntry>>,
}

/// Why a catalog document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("not a catalog document: {0}")]
    Syntax(String),
    #[error("{kind} `{key}`: {problem}")]
    Invalid { kind: &'static str, key: String, problem: String },
    #[error("image name `{name}` is given to both `{first}` and `{second}`")]
    NameTwice { name: String, first: String, second: String },
}

/// Why a name did not resolve. Each message says what exists or what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown plan `{name}`; plans: {known}")]
    UnknownPlan { name: String, known: String },
    #[error("unknown region `{code}`; regions: {known}")]
    UnknownRegion { code: String, known: String },
    #[error("no online host serves region `{code}`; served: {served}")]
    RegionNotServed { code: String, served: String },
    #[error("unknown location `{id}`; locations: {known}")]
    UnknownLocation { id: String, known: String },
    /// (The message leaves the name out: it may be anything, of any length.)
    #[error("not an image name: a slug, an `img_` id, a catalog name or an OCI reference, up to 200 of letters, digits and `-_.:/@`")]
    BadImageName { name: String },
    #[error(
        "no host can boot image `{name}`{}; an admin imports it with POST /v1/images {{\"name\": \"{slug}\", \"source\": \"<path on the host>\", \"format\": \"raw|qcow2|oci_layout|docker_archive\"}}, or maps `{name}` to an installed image in the data dir's catalog.json",
        if name == slug { String::new() } else { format!(" (installed as `{slug}`)") }
    )]
    ImageNotInstalled { name: String, slug: String },
    #[error(
        "image `{name}` is not in the catalog; an admin imports it with POST /v1/images under a DNS-label name and adds that name to the data dir's catalog.json with `{name}` among its aliases"
    )]
    ImageNotInCatalog { name: String },
    #[error("no host has an image with id `{id}`; see GET /v1/images")]
    UnknownImageId { id: String },
}

/// The image a request's name resolved to, with what views report about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The installed image's slug: what the VM's spec names and boots.
    pub slug: String,
    /// The name views show for it ([`ImageEntry::name`], else the slug).
    pub name: String,
    /// The OS and version the image really holds, when the catalog or the host says.
    pub os: Option<String>,
    pub version: Option<String>,
}

impl Catalog {
    /// The built-in catalog alone.
    pub fn built_in() -> Self {
        Self::merged(Document::default()).expect("the built-in catalog is valid (tested)")
    }

    /// The built-in catalog with an override document (the contents of
    /// `<data-dir>/catalog.json`) merged over it: an entry replaces the
    /// built-in entry of the same key, `null` removes it, and an image's names
    /// taken by an override entry leave the built-in entry that had them.
    pub fn with_override(json: &str) -> Result<Self, CatalogError> {
        let doc: Document = serde_json::from_str(json).map_err(|e| CatalogError::Syntax(e.to_string()))?;
        Self::merged(doc)
    }

    fn merged(over: Document) -> Result<Self, CatalogError> {
        let base: Document = serde_json::from_str(BUILT_IN).map_err(|e| CatalogError::Syntax(format!("built-in catalog: {e}")))?;
        let mut images: BTreeMap<String, ImageEntry> = base.images.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        // Names an override entry claims move to it from built-in entries.
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        for (slug, entry) in over.images.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
            for name in entry.names(slug) {
                if let Some(first) = claimed.insert(name.clone(), slug.clone())
                    && first != *slug
                {
                    return Err(CatalogError::NameTwice { name, first, second: slug.clone() });
                }
            }
        }
        for (slug, entry) in images.iter_mut() {
            if over.images.contains_key(slug) {
                continue;
            }
            entry.aliases.retain(|a| !claimed.contains_key(&normalize_alias(a)));
            if entry.name.as_ref().is_some_and(|n| claimed.contains_key(n)) {
                entry.name = None;
            }
        }
        overlay(&mut images, over.images);
        let mut catalog = Self {
            plans: layered(base.plans, over.plans),
            regions: layered(base.regions, over.regions),
            locations: layered(base.locations, over.locations),
            images,
            names: BTreeMap::new(),
        };
        catalog.validate()?;
        Ok(catalog)
    }

    fn validate(&mut self) -> Result<(), CatalogError> {
        let bad = |kind, key: &str, problem: String| Err(CatalogError::Invalid { kind, key: key.to_owned(), problem });
        for (name, p) in &self.plans {
            if !is_dns_label(name) {
                return bad("plan", name, "names are DNS labels".into());
            }
            if !(1..=MAX_VCPUS).contains(&p.vcpus) || !(64..=MAX_MEMORY_MIB).contains(&p.memory_mib) || !(1..=MAX_DISK_GB).contains(&p.disk_gb) {
                return bad("plan", name, format!("needs 1-{MAX_VCPUS} vcpus, 64-{MAX_MEMORY_MIB} memory_mib and 1-{MAX_DISK_GB} disk_gb"));
            }
            if p.disk_type.is_empty() || p.gpu.as_ref().is_some_and(|g| g.count == 0 || g.model.as_ref().is_some_and(|m| !is_gpu_model(m))) {
                return bad("plan", name, "needs a disk_type, and a gpu count of at least 1 with a model of letters, digits, '.', '_' and '-'".into());
            }
        }
        for (code, r) in &self.regions {
            if !is_dns_label(code) || r.name.trim().is_empty() {
                return bad("region", code, "codes are DNS labels and need a name".into());
            }
        }
        for (id, l) in &self.locations {
            if !is_dns_label(id) {
                return bad("location", id, "ids are DNS labels".into());
            }
            if !self.regions.contains_key(&l.region) {
                return bad("location", id, format!("region `{}` is not in the catalog", l.region));
            }
        }
        let mut names = BTreeMap::new();
        for (slug, entry) in &self.images {
            if !is_dns_label(slug) {
                return bad("image", slug, "slugs are DNS labels, as POST /v1/images names them".into());
            }
            if entry.os.trim().is_empty() || entry.version.trim().is_empty() {
                return bad("image", slug, "needs an os and a version".into());
            }
            for name in entry.names(slug) {
                if !is_image_name(&name) {
                    return bad("image", slug, format!("`{name}` is not an image name (up to 200 of letters, digits and `-_.:/@`)"));
                }
                if name != *slug && self.images.contains_key(&name) {
                    return bad("image", slug, format!("name `{name}` is the slug of another image"));
                }
                if let Some(first) = names.insert(name.clone(), slug.clone())
                    && first != *slug
                {
                    return Err(CatalogError::NameTwice { name, first, second: slug.clone() });
                }
            }
        }
        self.names = names;
        Ok(())
    }

    /// Every plan, by name.
    pub fn plans(&self) -> &BTreeMap<String, Plan> {
        &self.plans
    }

    /// Every region, by code.
    pub fn regions(&self) -> &BTreeMap<String, Region> {
        &self.regions
    }

    /// Every location, by id.
    pub fn locations(&self) -> &BTreeMap<String, Location> {
        &self.locations
    }

    /// Every image entry, by installed slug.
    pub fn images(&self) -> &BTreeMap<String, ImageEntry> {
        &self.images
    }

    /// The plan called `name` (Visor's `plan`, NeevCloud's `plan_id` and `vm_config_id`).
    pub fn plan(&self, name: &str) -> Result<&Plan, LookupError> {
        self.plans.get(name).ok_or_else(|| LookupError::UnknownPlan { name: name.to_owned(), known: keys(&self.plans) })
    }

    /// The region with code `code`.
    pub fn region(&self, code: &str) -> Result<&Region, LookupError> {
        self.regions.get(code).ok_or_else(|| LookupError::UnknownRegion { code: code.to_owned(), known: keys(&self.regions) })
    }

    /// The region with code `code`, which one of `served` (the regions of the
    /// online hosts) must be: a request for it can be placed.
    pub fn served_region<'a>(&self, code: &str, served: impl IntoIterator<Item = &'a str>) -> Result<&Region, LookupError> {
        let region = self.region(code)?;
        let mut served: Vec<&str> = served.into_iter().collect();
        if served.contains(&code) {
            return Ok(region);
        }
        served.sort_unstable();
        served.dedup();
        Err(LookupError::RegionNotServed { code: code.to_owned(), served: if served.is_empty() { "none".into() } else { served.join(", ") } })
    }

    /// The location with id `id`.
    pub fn location(&self, id: &str) -> Result<&Location, LookupError> {
        self.locations.get(id).ok_or_else(|| LookupError::UnknownLocation { id: id.to_owned(), known: keys(&self.locations) })
    }

    /// What views report about the installed image `slug`: its catalog name,
    /// OS and version, or (outside the catalog) the slug and what the host
    /// announced for it.
    pub fn image(&self, slug: &str, installed: Option<&ImageInfo>) -> BootImage {
        match self.images.get(slug) {
            Some(e) => BootImage {
                slug: slug.to_owned(),
                name: e.name.clone().unwrap_or_else(|| slug.to_owned()),
                os: Some(e.os.clone()),
                version: Some(e.version.clone()),
            },
            None => BootImage { slug: slug.to_owned(), name: slug.to_owned(), os: installed.map(|i| i.os.clone()), version: None },
        }
    }

    /// Resolve a request's image name to an image some host has. `installed`
    /// is what the candidate hosts announce. In order: a catalog name (slug,
    /// name or alias), an installed slug, an `img_` id, an OCI reference
    /// normalized to a catalog alias; a catalog name wins over an installed
    /// slug spelled the same.
    pub fn resolve_image<'a>(&self, name: &str, installed: impl IntoIterator<Item = &'a ImageInfo>) -> Result<BootImage, LookupError> {
        if !is_image_name(name) {
            return Err(LookupError::BadImageName { name: name.to_owned() });
        }
        let installed: Vec<&ImageInfo> = installed.into_iter().collect();
        let found = |slug: &str| -> Result<BootImage, LookupError> {
            match installed.iter().find(|i| i.name == slug) {
                Some(i) => Ok(self.image(slug, Some(i))),
                None => Err(LookupError::ImageNotInstalled { name: name.to_owned(), slug: slug.to_owned() }),
            }
        };
        if let Some(slug) = self.names.get(name) {
            return found(slug);
        }
        if installed.iter().any(|i| i.name == name) {
            return found(name);
        }
        if let Ok(id) = name.parse::<ImageId>() {
            let slugs = installed.iter().map(|i| i.name.as_str()).chain(self.images.keys().map(String::as_str));
            return match slugs.into_iter().find(|s| ImageId::for_slug(s) == id) {
                Some(slug) => found(slug),
                None => Err(LookupError::UnknownImageId { id: name.to_owned() }),
            };
        }
        if let Some(slug) = normalize_oci(name).and_then(|r| self.names.get(&r)) {
            return found(slug);
        }
        match normalize_oci(name) {
            Some(reference) if name.contains(['/', ':', '@']) => Err(LookupError::ImageNotInCatalog { name: reference }),
            _ if is_dns_label(name) => found(name),
            _ => Err(LookupError::ImageNotInCatalog { name: name.to_owned() }),
        }
    }
}

impl ImageEntry {
    /// Every name that resolves to this entry: the slug, the display name, the aliases (normalized).
    fn names(&self, slug: &str) -> Vec<String> {
        let mut out = vec![slug.to_owned()];
        out.extend(self.name.iter().cloned());
        out.extend(self.aliases.iter().map(|a| normalize_alias(a)));
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// `base` with `over`'s entries put over it; a `null` entry removes the key.
fn layered<T>(base: BTreeMap<String, Option<T>>, over: BTreeMap<String, Option<T>>) -> BTreeMap<String, T> {
    let mut out: BTreeMap<String, T> = base.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    overlay(&mut out, over);
    out
}

fn overlay<T>(into: &mut BTreeMap<String, T>, over: BTreeMap<String, Option<T>>) {
    for (k, v) in over {
        match v {
            Some(v) => into.insert(k, v),
            None => into.remove(&k),
        };
    }
}

fn keys<T>(map: &BTreeMap<String, T>) -> String {
    if map.is_empty() { "none".into() } else { map.keys().map(String::as_str).collect::<Vec<_>>().join(", ") }
}

/// Aliases that look like OCI references (a `/` or `:`) are kept normalized,
/// so `alpine:3` in a file matches `docker.io/library/alpine:3` in a request.
fn normalize_alias(alias: &str) -> String {
    if alias.contains(['/', ':']) { normalize_oci(alias).unwrap_or_else(|| alias.to_owned()) } else { alias.to_owned() }
}

/// A container image reference in Docker's canonical form: the registry
/// (`docker.io` when the first component is not a host), `library/` for
/// Docker Hub's official images, and the tag `latest` when neither tag nor
/// digest is given. `None` for what is not a reference.
pub fn normalize_oci(reference: &str) -> Option<String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    // A tag is a `:` after the last `/` (an earlier one is a registry's port).
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last..].find(':') {
        Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
        None => (rest, None),
    };
    let token = |s: &str, extra: &[u8]| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b));
    if !tag.is_none_or(|t| token(t, b"")) || !digest.is_none_or(|d| token(d, b":")) {
        return None;
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let registry = if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") { parts.remove(0) } else { "docker.io" };
    let registry = if registry == "index.docker.io" { "docker.io" } else { registry };
    if registry == "docker.io" && parts.len() == 1 {
        parts.insert(0, "library");
    }
    let repo = parts.join("/");
    if !repo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)) {
        return None;
    }
    let tag = tag.or(if digest.is_some() { None } else { Some("latest") });
    Some(format!("{registry}/{repo}{}{}", tag.map(|t| format!(":{t}")).unwrap_or_default(), digest.map(|d| format!("@{d}")).unwrap_or_default()))
}

/// A GPU model as hosts announce it (`A100`, `h100-sxm5-80gb`).
pub fn is_gpu_model(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(slugs: &[&str]) -> Vec<ImageInfo> {
        slugs
            .iter()
            .map(|s| ImageInfo {
                name: (*s).into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                size_bytes: 0,
                boot: "kernel+initrd".into(),
                kernel_version: None,
            })
            .collect()
    }

    #[test]
    fn built_in_has_every_seed_name() {
        let c = Catalog::built_in();
        let power = c.plan("power").unwrap();
        assert_eq!((power.vcpus, power.memory_mib, power.disk_gb, power.disk_type.as_str(), power.dedicated), (8, 16384, 320, "ssd", false));
        assert!(c.plan("power-dedicated").unwrap().dedicated);
        for plan in ["nano", "micro", "small", "medium"] {
            assert!(c.plan(plan).unwrap().vcpus <= power.vcpus, "{plan}");
        }
        for region in ["us-east", "us-west", "eu-west", "ap-south"] {
            c.region(region).unwrap();
        }
        assert!(c.regions().contains_key(DEFAULT_REGION));
        let all = installed(&c.images().keys().map(String::as_str).collect::<Vec<_>>());
        // Visor's OS list, NeevCloud's image_id, Hatch's default, the marketplace's name, hypeman's OCI references.
        for (name, slug, os) in [
            ("ubuntu-22.04", "ubuntu-2204", "ubuntu"),
            ("ubuntu-24.04", "ubuntu-2404", "ubuntu"),
            ("debian-12", "debian-minimal", "debian"),
            ("rocky-9", "rocky-9", "rocky"),
            ("fedora-40", "fedora-40", "fedora"),
            ("img_default", "debian-minimal", "debian"),
            ("ubuntu2404", "ubuntu-2404", "ubuntu"),
            ("docker.io/library/alpine:latest", "alpine-3", "alpine"),
            ("alpine:latest", "alpine-3", "alpine"),
            ("alpine", "alpine-3", "alpine"),
            ("ubuntu:24.04", "ubuntu-2404", "ubuntu"),
            ("debian-minimal", "debian-minimal", "debian"),
        ] {
            let got = c.resolve_image(name, &all).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((got.slug.as_str(), got.os.as_deref()), (slug, Some(os)), "{name}");
        }
    }

    #[test]
    fn views_report_the_image_that_booted() {
        let c = Catalog::built_in();
        let img = c.resolve_image("img_default", &installed(&["debian-minimal"])).unwrap();
        assert_eq!(img, BootImage { slug: "debian-minimal".into(), name: "debian-12".into(), os: Some("debian".into()), version: Some("12".into()) });
        // An operator who maps a Visor name onto the one image they have gets that image reported, not the name's OS.
        let c = Catalog::with_override(r#"{"images": {"debian-minimal": {"os": "debian", "version": "12", "aliases": ["ubuntu-24.04"]}}}"#).unwrap();
        let img = c.resolve_image("ubuntu-24.04", &installed(&["debian-minimal"])).unwrap();
        assert_eq!((img.slug.as_str(), img.name.as_str(), img.os.as_deref()), ("debian-minimal", "debian-minimal", Some("debian")));
        // The built-in ubuntu entry lost the name to the override.
        assert_eq!(c.image("ubuntu-2404", None).name, "ubuntu-2404");
        // Outside the catalog: the slug, and what the host announced.
        let other = c.image("my-app", installed(&["my-app"]).first());
        assert_eq!((other.name.as_str(), other.os.as_deref(), other.version), ("my-app", Some("linux"), None));
    }

    #[test]
    fn missing_images_say_how_to_import_them() {
        let c = Catalog::built_in();
        let none = installed(&["debian-minimal"]);
        let e = c.resolve_image("ubuntu-24.04", &none).unwrap_err();
        assert_eq!(e, LookupError::ImageNotInstalled { name: "ubuntu-24.04".into(), slug: "ubuntu-2404".into() });
        let msg = e.to_string();
        assert!(msg.contains("POST /v1/images") && msg.contains("\"name\": \"ubuntu-2404\"") && msg.contains("catalog.json"), "{msg}");
        assert_eq!(c.resolve_image("my-app", &none).unwrap_err(), LookupError::ImageNotInstalled { name: "my-app".into(), slug: "my-app".into() });
        assert!(!c.resolve_image("my-app", &none).unwrap_err().to_string().contains("installed as"));
        let e = c.resolve_image("nginx:alpine", &none).unwrap_err();
        assert_eq!(e, LookupError::ImageNotInCatalog { name: "docker.io/library/nginx:alpine".into() });
        assert!(e.to_string().contains("aliases"));
        assert_eq!(c.resolve_image("rm -rf /", &none).unwrap_err(), LookupError::BadImageName { name: "rm -rf /".into() });
        assert!(matches!(c.resolve_image("", &none), Err(LookupError::BadImageName { .. })));
    }

    #[test]
    fn installed_slugs_and_ids_resolve() {
        let c = Catalog::built_in();
        let have = installed(&["debian-minimal", "my-app", "odd_name.v1"]);
        assert_eq!(c.resolve_image("my-app", &have).unwrap().slug, "my-app");
        assert_eq!(c.resolve_image("odd_name.v1", &have).unwrap().slug, "odd_name.v1");
        let id = ImageId::for_slug("my-app").to_string();
        assert_eq!(c.resolve_image(&id, &have).unwrap().slug, "my-app");
        let id = ImageId::for_slug("ubuntu-2404").to_string();
        assert!(matches!(c.resolve_image(&id, &have), Err(LookupError::ImageNotInstalled { slug, .. }) if slug == "ubuntu-2404"));
        let id = ImageId::for_slug("never").to_string();
        assert_eq!(c.resolve_image(&id, &have).unwrap_err(), LookupError::UnknownImageId { id });
    }

    #[test]
    fn plans_and_regions_say_what_exists() {
        let c = Catalog::built_in();
        assert_eq!(c.plan("huge").unwrap_err().to_string(), "unknown plan `huge`; plans: medium, micro, nano, power, power-dedicated, small");
        assert!(c.region("mars").unwrap_err().to_string().contains("us-east"));
        assert_eq!(c.served_region("eu-west", ["us-east", "eu-west"]).unwrap().name, "EU West");
        assert_eq!(c.served_region("ap-south", ["us-east", "us-east"]).unwrap_err().to_string(), "no online host serves region `ap-south`; served: us-east");
        assert_eq!(c.served_region("ap-south", []).unwrap_err(), LookupError::RegionNotServed { code: "ap-south".into(), served: "none".into() });
        assert!(matches!(c.served_region("mars", ["mars"]), Err(LookupError::UnknownRegion { .. })));
        assert!(matches!(c.location("ams-1"), Err(LookupError::UnknownLocation { .. })));
    }

    #[test]
    fn overrides_add_replace_and_remove() {
        let c = Catalog::with_override(
            r#"{
              "plans": {"small": {"vcpus": 3, "memory_mib": 3072, "disk_gb": 30}, "nano": null,
                        "gpu-a100": {"vcpus": 16, "memory_mib": 65536, "disk_gb": 500, "gpu": {"count": 1, "model": "A100"}}},
              "regions": {"eu-central": {"name": "EU Central"}, "ap-south": null},
              "locations": {"fra-1": {"region": "eu-central", "city": "Frankfurt", "country": "DE", "tier": 3}},
              "images": {"my-ubuntu": {"name": "ubuntu-24.04", "os": "ubuntu", "version": "24.04.1", "aliases": ["ubuntu:24.04"]}, "rocky-9": null}
            }"#,
        )
        .unwrap();
        assert_eq!(c.plan("small").unwrap().vcpus, 3);
        assert_eq!(c.plan("power").unwrap().vcpus, 8, "untouched entries stay");
        assert!(c.plan("nano").is_err());
        assert_eq!(c.plan("gpu-a100").unwrap().gpu, Some(GpuSpec { count: 1, model: Some("A100".into()) }));
        assert!(c.region("eu-central").is_ok() && c.region("ap-south").is_err());
        assert_eq!(c.location("fra-1").unwrap().city, "Frankfurt");
        let have = installed(&["my-ubuntu", "ubuntu-2404"]);
        assert_eq!(c.resolve_image("ubuntu-24.04", &have).unwrap().slug, "my-ubuntu");
        assert_eq!(c.resolve_image("docker.io/library/ubuntu:24.04", &have).unwrap().slug, "my-ubuntu");
        assert_eq!(c.resolve_image("ubuntu2404", &have).unwrap().slug, "ubuntu-2404", "aliases not claimed stay");
        assert!(!c.images().contains_key("rocky-9"));
        assert_eq!(Catalog::with_override("{}").unwrap(), Catalog::built_in());
    }

    #[test]
    fn malformed_overrides_are_refused_with_the_reason() {
        let err = |json: &str| Catalog::with_override(json).unwrap_err();
        assert!(matches!(err("{\"plans\": "), CatalogError::Syntax(m) if m.contains("line 1")));
        assert!(matches!(err(r#"{"plan": {}}"#), CatalogError::Syntax(m) if m.contains("unknown field `plan`")));
        assert!(
            matches!(err(r#"{"plans": {"x": {"vcpus": 1, "memory_mib": 512, "disk_gb": 10, "cores": 2}}}"#), CatalogError::Syntax(m) if m.contains("cores"))
        );
        assert!(
            matches!(err(r#"{"plans": {"x": {"vcpus": 0, "memory_mib": 512, "disk_gb": 10}}}"#), CatalogError::Invalid { kind: "plan", key, .. } if key == "x")
        );
        assert!(matches!(err(r#"{"plans": {"Big Plan": {"vcpus": 1, "memory_mib": 512, "disk_gb": 10}}}"#), CatalogError::Invalid { kind: "plan", .. }));
        assert!(matches!(
            err(r#"{"plans": {"g": {"vcpus": 1, "memory_mib": 512, "disk_gb": 10, "gpu": {"count": 0}}}}"#),
            CatalogError::Invalid { kind: "plan", .. }
        ));
        assert!(matches!(err(r#"{"regions": {"eu": {"name": " "}}}"#), CatalogError::Invalid { kind: "region", .. }));
        assert!(matches!(
            err(r#"{"locations": {"x": {"region": "mars", "city": "c", "country": "c"}}}"#),
            CatalogError::Invalid { kind: "location", problem, .. } if problem.contains("mars")
        ));
        // Removing a region that a location still names is refused too.
        assert!(matches!(
            err(r#"{"regions": {"us-east": null}, "locations": {"x": {"region": "us-east", "city": "c", "country": "c"}}}"#),
            CatalogError::Invalid { kind: "location", .. }
        ));
        assert!(matches!(err(r#"{"images": {"Ubuntu 24": {"os": "ubuntu", "version": "24"}}}"#), CatalogError::Invalid { kind: "image", .. }));
        assert!(matches!(err(r#"{"images": {"x": {"os": "", "version": "1"}}}"#), CatalogError::Invalid { kind: "image", .. }));
        assert!(matches!(
            err(r#"{"images": {"x": {"os": "a", "version": "1", "aliases": ["fedora-40"]}}}"#),
            CatalogError::Invalid { kind: "image", problem, .. } if problem.contains("slug of another image")
        ));
        assert!(matches!(
            err(r#"{"images": {"a": {"os": "a", "version": "1", "aliases": ["n"]}, "b": {"os": "b", "version": "1", "name": "n"}}}"#),
            CatalogError::NameTwice { name, .. } if name == "n"
        ));
        assert!(matches!(err(r#"{"images": {"x": {"os": "a", "version": "1", "aliases": ["a b"]}}}"#), CatalogError::Invalid { kind: "image", .. }));
    }

    #[test]
    fn oci_references_normalize_as_docker_does() {
        for (given, want) in [
            ("alpine", Some("docker.io/library/alpine:latest")),
            ("alpine:3.20", Some("docker.io/library/alpine:3.20")),
            ("library/alpine", Some("docker.io/library/alpine:latest")),
            ("index.docker.io/library/alpine:3", Some("docker.io/library/alpine:3")),
            ("me/app:v1", Some("docker.io/me/app:v1")),
            ("ghcr.io/me/app", Some("ghcr.io/me/app:latest")),
            ("localhost:5000/app:1", Some("localhost:5000/app:1")),
            ("alpine@sha256:abc", Some("docker.io/library/alpine@sha256:abc")),
            ("alpine:3@sha256:abc", Some("docker.io/library/alpine:3@sha256:abc")),
            ("Alpine", None),
            ("alpine:", None),
            ("a//b", None),
            ("alpine@", None),
        ] {
            assert_eq!(normalize_oci(given).as_deref(), want, "{given}");
        }
    }
}

//! The catalog as the use cases read it: plans a create may name, regions it
//! may be placed in, and the names an image may go by (see `docs/catalog.md`).
//!
//! The gateway loads the same catalog the worker does (built in, with the
//! data dir's `catalog.json` over it), so a name means one thing on both
//! sides. Resolution against the installed images happens in
//! [`super::vms::create`]; views render a booted slug with [`image`].

use super::{App, AppError, AppResult};
use vmplane_domain::catalog::{BootImage, Catalog, LookupError, Plan};

/// The gateway's catalog.
pub fn get(app: &App) -> &Catalog {
    &app.cfg.catalog
}

/// The plan called `name`. A dialect that takes a plan fills the spec's
/// sizes from it (explicit sizes in the request win) and sets `spec.plan`.
pub fn plan(app: &App, name: &str) -> AppResult<Plan> {
    Ok(get(app).plan(name)?.clone())
}

/// What views say about the image a VM booted (`spec.image` is always an
/// installed slug once created): its catalog name, OS and version.
pub fn image(app: &App, slug: &str) -> BootImage {
    let installed = app.proj.hosts().ok().into_iter().flatten().flat_map(|h| h.info.images).find(|i| i.name == slug);
    get(app).image(slug, installed.as_ref())
}

impl From<LookupError> for AppError {
    fn from(e: LookupError) -> Self {
        let code = match e {
            LookupError::UnknownPlan { .. } => "unknown_plan",
            LookupError::UnknownRegion { .. } => "unknown_region",
            LookupError::RegionNotServed { .. } => "region_not_served",
            LookupError::UnknownLocation { .. } => "unknown_location",
            LookupError::BadImageName { .. } => "validation_failed",
            LookupError::ImageNotInstalled { .. } | LookupError::ImageNotInCatalog { .. } | LookupError::UnknownImageId { .. } => "unknown_image",
        };
        AppError::Invalid(code, e.to_string())
    }
}

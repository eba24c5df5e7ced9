//! HTTP routes, one module per resource.

pub mod events;
pub mod hosts;
pub mod images;
pub mod logs;
pub mod operations;
pub mod pagination;
pub mod system;
pub mod tenancy;
pub mod terminal;
pub mod vms;
pub mod volumes;

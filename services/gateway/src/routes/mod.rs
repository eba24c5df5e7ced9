//! The HTTP layer: one module per dialect, each parsing its own requests into
//! use case input, calling `app`, and rendering its own responses and errors;
//! the system routes every dialect shares (`system`), and what their HTTP
//! layers do alike (`shared`). No dialect imports another.

pub mod console;
pub mod contract;
pub mod hatch;
pub mod hypeman;
pub mod marketplace;
pub mod native;
pub mod neevcloud;
pub mod shared;
pub mod system;
pub mod visor;

//! Rebuild when a web console file is added, changed or removed: the console
//! is embedded by `rust-embed` (`src/routes/console.rs`), and cargo does not
//! otherwise notice a new file in that directory.

fn main() {
    println!("cargo:rerun-if-changed=console");
}

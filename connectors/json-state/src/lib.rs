//! `connector-json-state`: sync state as one JSON file per database, in the original tool's
//! format (`status_dir/<database>.json` with `database_info` and `tables`).
//!
//! Files are replaced atomically (write a temporary file, fsync, rename, fsync the folder), so a
//! crash leaves either the old or the new file. A lock file (`status_dir/.lock`, an OS file
//! lock) keeps two runs from sharing a status folder. While a run holds the lock, its records
//! go to a journal it folds into the files when it ends (`journal.rs`). A file that cannot be parsed stops that
//! database with an error and is never overwritten.

mod config;
mod journal;
mod store;
pub mod tools;

pub use config::JsonStateConfig;
pub use store::{JsonStateStore, exposure, private_dir, private_file};

/// Referenced by `connector-run` so the linker keeps this crate's registration.
pub fn link() {}

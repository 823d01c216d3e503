//! Host crate root of spantrack's logic (`cargo test -p spantrack-logic`).
//!
//! The modules below are also compiled into `spantrack.ko`, whose crate root declares
//! `mod uapi;` (path-included from `uapi/src/lib.rs`) and includes each file here with
//! `#[path = "logic/<name>.rs"] mod <name>;`. So the module files name the ABI only as
//! `crate::uapi` and each other as `crate::<name>`, use `core` only, and never panic.
#![no_std]

#[cfg(test)]
extern crate std;

pub use spantrack_uapi as uapi;

pub mod hot;
pub mod key;
pub mod record;
pub mod sched;
pub mod syscalls;
pub mod table;
pub mod tracker;
pub mod tunables;

//! spantrack-stress: stress, fault and bad-input tests of `spantrack.ko` (see
//! `src/stress/mod.rs` for the modes; run by `tests/vm/t_stress.sh` and `tests/vm/t_fuzz.sh`).
//! Reuses the in-guest test program's modules for system calls, span lines, relay records
//! and sysfs, unchanged.

#[allow(dead_code, unused_imports)]
#[path = "../checks.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../relay.rs"]
mod relay;
#[allow(dead_code)]
#[path = "../span.rs"]
mod span;
#[allow(dead_code)]
#[path = "../sys.rs"]
mod sys;
#[allow(dead_code)]
#[path = "../sysfs.rs"]
mod sysfs;

#[path = "../stress/mod.rs"]
mod stress;

fn main() {
    stress::main()
}

// SPDX-License-Identifier: GPL-2.0

//! spantrack: the system calls of slow OpenTelemetry spans, captured per span.
//!
//! A registered process writes span begin/end lines to `/proc/spantrack/{begin,end}`; the
//! module records the system calls each span's thread makes while the span is open, and
//! sends the record of every span that ends slower than `threshold_ns` to the process's
//! relay channel. See README.md for the interface, `uapi/` for the ABI.
//!
//! Layout: the decisions (key parsing, hash tables, span stacks, the tracker state machine,
//! tunables) live in `logic/`, in files that also compile into the host crate
//! `spantrack-logic` for `cargo test`; `facilities.rs` wraps the C glue (`glue.c`) in RAII
//! types; `state.rs` holds the module's global state and the entry points called from C.

#![allow(unreachable_pub)]

use kernel::prelude::*;

// Kernel-series differences (cfg flags from Kbuild); first, for its macro.
#[macro_use]
mod compat;

// The ABI crate's `#![no_std]` only means something at a crate root.
#[allow(unused_attributes, dead_code)]
#[path = "../uapi/src/lib.rs"]
mod uapi;

#[allow(dead_code)]
#[path = "logic/hot.rs"]
mod hot;

#[allow(dead_code)]
#[path = "logic/key.rs"]
mod key;
#[allow(dead_code)]
#[path = "logic/record.rs"]
mod record;
#[allow(dead_code)]
#[path = "logic/sched.rs"]
mod sched;

#[allow(dead_code)]
#[path = "logic/table.rs"]
mod table;
#[allow(dead_code)]
#[path = "logic/tracker.rs"]
mod tracker;
#[allow(dead_code)]
#[path = "logic/tunables.rs"]
mod tunables;
#[allow(dead_code)]
#[path = "logic/syscalls.rs"]
mod syscalls;

mod facilities;
mod state;

use facilities::{
    DebugfsRoot, ExpiryTimer, ProcEntries, ReapWork, SysfsDir, Tracepoints, TrackedBitmaps,
};

spantrack_module! {
    type: SpanTrack,
    name: "spantrack",
    author: "spantrack developers",
    description: "System calls of slow OpenTelemetry spans, per span, through relay",
    license: "GPL",
}

/// The loaded module. Fields drop in declaration order, which is the reverse of the order
/// in which `init` set them up: probes stop first, the state goes last.
struct SpanTrack {
    _tracepoints: Tracepoints,
    _timer: ExpiryTimer,
    _proc: ProcEntries,
    _sysfs: SysfsDir,
    _reap: ReapWork,
    _bitmap: TrackedBitmaps,
    channels: state::Channels,
    _debugfs: DebugfsRoot,
    _state: state::Installed,
}

impl kernel::Module for SpanTrack {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let installed = state::Installed::new()?;
        let debugfs = DebugfsRoot::create()?;
        let channels = state::Channels;
        let bitmap = installed.publish_bitmap();
        let reap = ReapWork;
        let sysfs = SysfsDir::create()?;
        let proc = ProcEntries::create()?;
        let timer = ExpiryTimer::start();
        let tracepoints = Tracepoints::register()?;
        pr_info!(
            "loaded (ABI {}, {} CPUs, {} KiB reserved)\n",
            uapi::ABI_VERSION,
            // SAFETY: plain query.
            unsafe { facilities::st_possible_cpus() },
            installed.reserved_bytes() / 1024
        );
        Ok(SpanTrack {
            _tracepoints: tracepoints,
            _timer: timer,
            _proc: proc,
            _sysfs: sysfs,
            _reap: reap,
            _bitmap: bitmap,
            channels,
            _debugfs: debugfs,
            _state: installed,
        })
    }
}

impl Drop for SpanTrack {
    fn drop(&mut self) {
        // Fields drop after this body. First, every span write and ioctl fails from now on
        // (all files at once); then the fields go in order. `channels` closes every relay
        // channel still open when it drops (after the reap work is flushed).
        state::start_unload();
        let _ = &self.channels;
        pr_info!("unloaded\n");
    }
}

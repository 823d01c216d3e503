// SPDX-License-Identifier: GPL-2.0

//! What differs between the kernel series spantrack.ko builds against, in one place.
//!
//! `Kbuild` derives rustc cfg flags from the version of the kernel tree the module is built
//! against (its `VERSION` make variable) and passes them to this crate:
//!
//! | cfg        | set when      | used for                                       |
//! | ---------- | ------------- | ---------------------------------------------- |
//! | `kernel_7` | Linux >= 7.0  | `module!` keys (`authors: [..]`, not `author`) |
//!
//! Everything else the module uses from the `kernel` crate (`KBox`, `Error`, `pr_info!`,
//! `kernel::Module`) is the same on 6.12 and 7.x. A new difference on the Rust side gets a
//! cfg in `Kbuild`, a row above and its code here, not elsewhere. The C side's differences
//! (three tracepoint prototypes) are in the one `LINUX_VERSION_CODE` block at the top of
//! `glue.c`, which also has the compiler check every probe against its tracepoint.

/// `module!` with the keys of the kernel's macro: 6.12 takes `author: "a"`, 7.x (the macro
/// rewritten over `syn`) takes `authors: ["a", ..]` and wants the keys in a fixed order.
#[cfg(not(kernel_7))]
macro_rules! spantrack_module {
    (type: $t:ident, name: $n:tt, author: $a:tt, description: $d:tt, license: $l:tt $(,)?) => {
        ::kernel::prelude::module! {
            type: $t,
            name: $n,
            author: $a,
            description: $d,
            license: $l,
        }
    };
}

#[cfg(kernel_7)]
macro_rules! spantrack_module {
    (type: $t:ident, name: $n:tt, author: $a:tt, description: $d:tt, license: $l:tt $(,)?) => {
        ::kernel::prelude::module! {
            type: $t,
            name: $n,
            authors: [$a],
            description: $d,
            license: $l,
        }
    };
}

//! Names of Linux errno values (x86_64), for the `error.type` of failed system calls: the
//! user-visible ones of `asm-generic/errno-base.h` and `errno.h` (1..=133) and the
//! kernel-internal restart codes (512..=531) that a system-call exit tracepoint can see
//! when a signal interrupts a call. Generated from the headers. The one errno table of the
//! exported spans: the Python hook's `spantrack_hook/errnos.py` is generated from `USER` and
//! `KERNEL` below by `preload/python/tools/gen_errno.py` (a test keeps it current).

/// The symbolic name of errno `e` (`"EAGAIN"`, `"ENOENT"`, ...), `None` if it has none.
pub fn errno_name(e: u32) -> Option<&'static str> {
    let name = match e {
        0..=133 => USER.get(e as usize),
        512..=531 => KERNEL.get((e - 512) as usize),
        _ => None,
    };
    name.copied().filter(|n| !n.is_empty())
}

/// Is `ret` a failed system call's return value (`-4095..=-1`)?
pub fn is_error_return(ret: i64) -> bool {
    (-4095..=-1).contains(&ret)
}

/// `error.type` for a failed call's return value: the errno name, or `errno_<n>`.
pub fn error_type(ret: i64) -> String {
    let e = ret.unsigned_abs() as u32;
    match errno_name(e) {
        Some(n) => n.to_string(),
        None => format!("errno_{e}"),
    }
}

static USER: [&str; 134] = [
    "", // 0
    "EPERM", // 1
    "ENOENT", // 2
    "ESRCH", // 3
    "EINTR", // 4
    "EIO", // 5
    "ENXIO", // 6
    "E2BIG", // 7
    "ENOEXEC", // 8
    "EBADF", // 9
    "ECHILD", // 10
    "EAGAIN", // 11
    "ENOMEM", // 12
    "EACCES", // 13
    "EFAULT", // 14
    "ENOTBLK", // 15
    "EBUSY", // 16
    "EEXIST", // 17
    "EXDEV", // 18
    "ENODEV", // 19
    "ENOTDIR", // 20
    "EISDIR", // 21
    "EINVAL", // 22
    "ENFILE", // 23
    "EMFILE", // 24
    "ENOTTY", // 25
    "ETXTBSY", // 26
    "EFBIG", // 27
    "ENOSPC", // 28
    "ESPIPE", // 29
    "EROFS", // 30
    "EMLINK", // 31
    "EPIPE", // 32
    "EDOM", // 33
    "ERANGE", // 34
    "EDEADLK", // 35
    "ENAMETOOLONG", // 36
    "ENOLCK", // 37
    "ENOSYS", // 38
    "ENOTEMPTY", // 39
    "ELOOP", // 40
    "", // 41
    "ENOMSG", // 42
    "EIDRM", // 43
    "ECHRNG", // 44
    "EL2NSYNC", // 45
    "EL3HLT", // 46
    "EL3RST", // 47
    "ELNRNG", // 48
    "EUNATCH", // 49
    "ENOCSI", // 50
    "EL2HLT", // 51
    "EBADE", // 52
    "EBADR", // 53
    "EXFULL", // 54
    "ENOANO", // 55
    "EBADRQC", // 56
    "EBADSLT", // 57
    "", // 58
    "EBFONT", // 59
    "ENOSTR", // 60
    "ENODATA", // 61
    "ETIME", // 62
    "ENOSR", // 63
    "ENONET", // 64
    "ENOPKG", // 65
    "EREMOTE", // 66
    "ENOLINK", // 67
    "EADV", // 68
    "ESRMNT", // 69
    "ECOMM", // 70
    "EPROTO", // 71
    "EMULTIHOP", // 72
    "EDOTDOT", // 73
    "EBADMSG", // 74
    "EOVERFLOW", // 75
    "ENOTUNIQ", // 76
    "EBADFD", // 77
    "EREMCHG", // 78
    "ELIBACC", // 79
    "ELIBBAD", // 80
    "ELIBSCN", // 81
    "ELIBMAX", // 82
    "ELIBEXEC", // 83
    "EILSEQ", // 84
    "ERESTART", // 85
    "ESTRPIPE", // 86
    "EUSERS", // 87
    "ENOTSOCK", // 88
    "EDESTADDRREQ", // 89
    "EMSGSIZE", // 90
    "EPROTOTYPE", // 91
    "ENOPROTOOPT", // 92
    "EPROTONOSUPPORT", // 93
    "ESOCKTNOSUPPORT", // 94
    "EOPNOTSUPP", // 95
    "EPFNOSUPPORT", // 96
    "EAFNOSUPPORT", // 97
    "EADDRINUSE", // 98
    "EADDRNOTAVAIL", // 99
    "ENETDOWN", // 100
    "ENETUNREACH", // 101
    "ENETRESET", // 102
    "ECONNABORTED", // 103
    "ECONNRESET", // 104
    "ENOBUFS", // 105
    "EISCONN", // 106
    "ENOTCONN", // 107
    "ESHUTDOWN", // 108
    "ETOOMANYREFS", // 109
    "ETIMEDOUT", // 110
    "ECONNREFUSED", // 111
    "EHOSTDOWN", // 112
    "EHOSTUNREACH", // 113
    "EALREADY", // 114
    "EINPROGRESS", // 115
    "ESTALE", // 116
    "EUCLEAN", // 117
    "ENOTNAM", // 118
    "ENAVAIL", // 119
    "EISNAM", // 120
    "EREMOTEIO", // 121
    "EDQUOT", // 122
    "ENOMEDIUM", // 123
    "EMEDIUMTYPE", // 124
    "ECANCELED", // 125
    "ENOKEY", // 126
    "EKEYEXPIRED", // 127
    "EKEYREVOKED", // 128
    "EKEYREJECTED", // 129
    "EOWNERDEAD", // 130
    "ENOTRECOVERABLE", // 131
    "ERFKILL", // 132
    "EHWPOISON", // 133
];

static KERNEL: [&str; 20] = [
    "ERESTARTSYS", // 512
    "ERESTARTNOINTR", // 513
    "ERESTARTNOHAND", // 514
    "ENOIOCTLCMD", // 515
    "ERESTART_RESTARTBLOCK", // 516
    "EPROBE_DEFER", // 517
    "EOPENSTALE", // 518
    "ENOPARAM", // 519
    "", // 520
    "EBADHANDLE", // 521
    "ENOTSYNC", // 522
    "EBADCOOKIE", // 523
    "ENOTSUPP", // 524
    "ETOOSMALL", // 525
    "ESERVERFAULT", // 526
    "EBADTYPE", // 527
    "EJUKEBOX", // 528
    "EIOCBQUEUED", // 529
    "ERECALLCONFLICT", // 530
    "ENOGRACE", // 531
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_libc() {
        for (e, n) in [
            (libc::EPERM, "EPERM"),
            (libc::ENOENT, "ENOENT"),
            (libc::EINTR, "EINTR"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::EBADF, "EBADF"),
            (libc::EINVAL, "EINVAL"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::EDEADLK, "EDEADLK"),
            (libc::ENOSYS, "ENOSYS"),
            (libc::ETIMEDOUT, "ETIMEDOUT"),
            (libc::ECONNREFUSED, "ECONNREFUSED"),
            (libc::EALREADY, "EALREADY"),
            (libc::EINPROGRESS, "EINPROGRESS"),
            (libc::EHWPOISON, "EHWPOISON"),
        ] {
            assert_eq!(errno_name(e as u32), Some(n), "errno {e}");
        }
        assert_eq!(errno_name(0), None);
        assert_eq!(errno_name(41), None);
        assert_eq!(errno_name(134), None);
        assert_eq!(errno_name(512), Some("ERESTARTSYS"));
        assert_eq!(errno_name(516), Some("ERESTART_RESTARTBLOCK"));
        assert_eq!(errno_name(520), None);
        assert_eq!(errno_name(4095), None);
    }

    #[test]
    fn error_returns() {
        assert!(is_error_return(-1));
        assert!(is_error_return(-4095));
        assert!(!is_error_return(-4096));
        assert!(!is_error_return(0));
        assert!(!is_error_return(5));
        assert_eq!(error_type(-11), "EAGAIN");
        assert_eq!(error_type(-2), "ENOENT");
        assert_eq!(error_type(-4000), "errno_4000");
        assert_eq!(error_type(-512), "ERESTARTSYS");
    }
}

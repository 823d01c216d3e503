//! Text I/O of the sysfs files under `/sys/kernel/spantrack`: strict parsers for the values
//! written to the tunables, their formatters, and a bounded text writer for `stats`.
//!
//! sysfs hands the module a buffer of at most one page; every function here works on any
//! byte slice and never panics.

use crate::syscalls::{syscall_name, syscall_nr_bytes, SyscallFilter, FILTER_BITS};

/// `EINVAL`: not a well-formed value.
pub const EINVAL: i32 = 22;
/// `ERANGE`: well-formed but outside the allowed range.
pub const ERANGE: i32 = 34;

/// Default span latency threshold (ns) at or above which a record is written.
pub const DEFAULT_THRESHOLD_NS: u64 = 1_000_000;
/// Largest accepted threshold (1 hour).
pub const MAX_THRESHOLD_NS: u64 = 3_600_000_000_000;
/// Default time after which an open span is dropped (60 s).
pub const DEFAULT_TIMEOUT_NS: u64 = 60_000_000_000;
/// Shortest accepted span timeout (1 ms).
pub const MIN_TIMEOUT_NS: u64 = 1_000_000;
/// Longest accepted span timeout (24 h).
pub const MAX_TIMEOUT_NS: u64 = 86_400_000_000_000;

/// Strips one optional trailing `'\n'`.
fn strip_newline(buf: &[u8]) -> &[u8] {
    match buf {
        [rest @ .., b'\n'] => rest,
        _ => buf,
    }
}

/// Parses a plain decimal number (digits only; no overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// Parses a sysfs write of an unsigned number: decimal digits only (no sign, no spaces, no
/// `0x`), one optional trailing `'\n'`.
///
/// Errors: [`EINVAL`] if malformed or overflowing `u64`, [`ERANGE`] outside `min..=max`.
pub fn parse_u64(buf: &[u8], min: u64, max: u64) -> Result<u64, i32> {
    let v = parse_decimal(strip_newline(buf)).ok_or(EINVAL)?;
    if v < min || v > max {
        return Err(ERANGE);
    }
    Ok(v)
}

/// One list item: a syscall name, a number `< FILTER_BITS`, or a range `a-b` of numbers.
fn parse_item(item: &[u8]) -> Option<(u32, u32)> {
    let number = |d: &[u8]| {
        parse_decimal(d)
            .filter(|&n| n < u64::from(FILTER_BITS))
            .map(|n| n as u32)
    };
    if item.first().is_some_and(u8::is_ascii_digit) {
        match item.iter().position(|&c| c == b'-') {
            Some(dash) => {
                let (a, b) = item.split_at_checked(dash)?;
                let (a, b) = (number(a)?, number(b.get(1..)?)?);
                (a <= b).then_some((a, b))
            }
            None => number(item).map(|n| (n, n)),
        }
    } else {
        syscall_nr_bytes(item).map(|n| (n, n))
    }
}

/// Parses a write to the `syscall_filter` file into `filter`:
/// - `all`: itemise every call (the default);
/// - `allow <list>`: only the listed calls (`allow` alone: none);
/// - `deny <list>`: every call but the listed ones (also every number `>= 512`).
///
/// `<list>` is comma-separated (no spaces) syscall names (`read`), numbers `< 512` (`0`) or
/// number ranges (`336-423`); one optional trailing `'\n'`. On error ([`EINVAL`]) `filter`
/// is unchanged.
pub fn parse_filter(buf: &[u8], filter: &mut SyscallFilter) -> Result<(), i32> {
    let line = strip_newline(buf);
    if line == b"all" {
        *filter = SyscallFilter::ALLOW_ALL;
        return Ok(());
    }
    let (allow, list) = if let Some(rest) = line.strip_prefix(b"allow") {
        (true, rest)
    } else if let Some(rest) = line.strip_prefix(b"deny") {
        (false, rest)
    } else {
        return Err(EINVAL);
    };
    let list = match list {
        [] => &[][..],
        [b' ', items @ ..] if !items.is_empty() => items,
        _ => return Err(EINVAL),
    };
    let mut new = if allow {
        SyscallFilter::ALLOW_NONE
    } else {
        SyscallFilter::ALLOW_ALL
    };
    if !list.is_empty() {
        for item in list.split(|&c| c == b',') {
            let (a, b) = parse_item(item).ok_or(EINVAL)?;
            for nr in a..=b {
                new.set(nr, allow);
            }
        }
    }
    new.set_others(!allow);
    *filter = new;
    Ok(())
}

/// Appends text to a byte buffer, never past its end. Each `push_*` writes all of its text
/// or none of it; after the first refused push every later one is refused too (so the text
/// is always a prefix of the intended one), see [`TextBuf::overflowed`].
pub struct TextBuf<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflowed: bool,
}

impl<'b> TextBuf<'b> {
    /// An empty text over `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        TextBuf {
            buf,
            len: 0,
            overflowed: false,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before anything was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once a push did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Appends `s`; false if it does not fit (or an earlier push did not).
    pub fn push_bytes(&mut self, s: &[u8]) -> bool {
        let end = match self.len.checked_add(s.len()) {
            Some(e) if !self.overflowed => e,
            _ => {
                self.overflowed = true;
                return false;
            }
        };
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                for (d, c) in dst.iter_mut().zip(s) {
                    *d = *c;
                }
                self.len = end;
                true
            }
            None => {
                self.overflowed = true;
                false
            }
        }
    }

    /// Appends `s`; false if it does not fit (or an earlier push did not).
    pub fn push_str(&mut self, s: &str) -> bool {
        self.push_bytes(s.as_bytes())
    }

    /// Decimal form of `v`.
    pub fn push_u64(&mut self, mut v: u64) -> bool {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start = start.wrapping_sub(1);
            if let Some(d) = digits.get_mut(start) {
                *d = b'0' + (v % 10) as u8;
            }
            v /= 10;
            if v == 0 || start == 0 {
                break;
            }
        }
        self.push_bytes(digits.get(start..).unwrap_or(&[]))
    }
}

/// Writes `filter` in the form [`parse_filter`] reads back (`all`, `allow <list>` or
/// `deny <list>`, with a trailing `'\n'`), naming calls by name and unnamed numbers by
/// ranges. Returns the length written; 4096 bytes always suffice (the longest form is
/// about 3.8 KB).
pub fn format_filter(filter: &SyscallFilter, out: &mut [u8]) -> usize {
    let mut w = TextBuf::new(out);
    if filter.is_allow_all() {
        w.push_str("all\n");
        return w.len();
    }
    // Deny mode lists the calls that are not allowed, allow mode the ones that are.
    let deny = filter.others_allowed();
    w.push_str(if deny { "deny" } else { "allow" });
    let listed = |nr: u32| filter.allows(nr) != deny;
    let mut first = true;
    let mut nr = 0u32;
    while nr < FILTER_BITS {
        if !listed(nr) {
            nr = nr.wrapping_add(1);
            continue;
        }
        w.push_str(if first { " " } else { "," });
        first = false;
        if let Some(name) = syscall_name(nr) {
            w.push_str(name);
            nr = nr.wrapping_add(1);
            continue;
        }
        // A run of listed numbers without names.
        let start = nr;
        while nr.wrapping_add(1) < FILTER_BITS
            && listed(nr.wrapping_add(1))
            && syscall_name(nr.wrapping_add(1)).is_none()
        {
            nr = nr.wrapping_add(1);
        }
        w.push_u64(u64::from(start));
        if nr != start {
            w.push_str("-");
            w.push_u64(u64::from(nr));
        }
        nr = nr.wrapping_add(1);
    }
    w.push_str("\n");
    w.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::syscall_nr;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn u64_accepts_plain_decimal() {
        assert_eq!(parse_u64(b"0", 0, 10), Ok(0));
        assert_eq!(parse_u64(b"10\n", 0, 10), Ok(10));
        assert_eq!(parse_u64(b"007", 0, 10), Ok(7));
        assert_eq!(
            parse_u64(b"18446744073709551615", 0, u64::MAX),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn u64_rejects() {
        for bad in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"1\n\n",
            b" 1",
            b"1 ",
            b"+1",
            b"-1",
            b"0x10",
            b"1e3",
            b"1.0",
            b"18446744073709551616",
            b"99999999999999999999999",
            b"1\0",
            b"1\r\n",
        ] {
            assert_eq!(parse_u64(bad, 0, u64::MAX), Err(EINVAL), "{:?}", bad);
        }
        assert_eq!(parse_u64(b"11", 0, 10), Err(ERANGE));
        assert_eq!(parse_u64(b"4\n", 5, 10), Err(ERANGE));
    }

    fn parsed(s: &str) -> Result<SyscallFilter, i32> {
        let mut f = SyscallFilter::ALLOW_ALL;
        parse_filter(s.as_bytes(), &mut f).map(|()| f)
    }

    fn formatted(f: &SyscallFilter) -> std::string::String {
        let mut buf = [0u8; 4096];
        let n = format_filter(f, &mut buf);
        std::string::String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn filter_forms() {
        let f = parsed("allow read,write,39\n").unwrap();
        assert!(f.allows(0) && f.allows(1) && f.allows(39) && !f.allows(2) && !f.allows(600));
        assert_eq!(formatted(&f), "allow read,write,getpid\n");

        let f = parsed("deny futex,epoll_wait").unwrap();
        assert!(!f.allows(202) && !f.allows(232) && f.allows(0) && f.allows(600));
        assert_eq!(formatted(&f), "deny futex,epoll_wait\n");

        let f = parsed("allow").unwrap();
        assert_eq!(f, SyscallFilter::ALLOW_NONE);
        assert_eq!(formatted(&f), "allow\n");
        assert_eq!(parsed("deny\n").unwrap(), SyscallFilter::ALLOW_ALL);
        assert_eq!(parsed("all").unwrap(), SyscallFilter::ALLOW_ALL);
        assert_eq!(formatted(&SyscallFilter::ALLOW_ALL), "all\n");

        let f = parsed("allow 340-345,500,511").unwrap();
        assert_eq!(formatted(&f), "allow 340-345,500,511\n");
        let f = parsed("deny 330-340").unwrap();
        assert_eq!(
            formatted(&f),
            "deny pkey_alloc,pkey_free,statx,io_pgetevents,rseq,uretprobe,336-340\n"
        );
    }

    #[test]
    fn filter_errors_leave_filter_unchanged() {
        let orig = parsed("allow read").unwrap();
        for bad in [
            "",
            "\n",
            "al",
            "alll",
            "allow ",
            "allow\t1",
            "allow read,",
            "allow ,read",
            "allow read,,write",
            "allow nosuch",
            "allow 512",
            "allow 1-512",
            "allow 5-4",
            "allow 1-",
            "allow -1",
            "allow 1-2-3",
            "deny  read",
            "deny read write",
            "allow READ",
            "allow read\n\n",
            "all\n\n",
            "all ",
            "allowread",
            "deny 99999999999999999999999",
        ] {
            let mut f = orig;
            assert_eq!(parse_filter(bad.as_bytes(), &mut f), Err(EINVAL), "{bad:?}");
            assert_eq!(f, orig);
        }
    }

    #[test]
    fn longest_filter_text_fits_a_page() {
        // Every number in allow mode: every name plus the unnamed ranges.
        let mut f = SyscallFilter::ALLOW_ALL;
        f.set_others(false);
        let s = formatted(&f);
        assert!(s.len() < 4096, "{}", s.len());
        assert!(s.contains(",uretprobe,336-423,pidfd_send_signal,"));
        assert!(s.ends_with(",mseal,463-511\n"));
        assert_eq!(parsed(&s).unwrap(), f);
        // Alternating numbers: no ranges to merge.
        let mut f = SyscallFilter::ALLOW_NONE;
        for nr in (0..512).step_by(2) {
            f.set(nr, true);
        }
        let s = formatted(&f);
        assert!(s.len() < 4096);
        assert_eq!(parsed(&s).unwrap(), f);
        // A small buffer gets whole items only, never a panic.
        let mut small = [0u8; 10];
        let n = format_filter(&f, &mut small);
        assert_eq!(&small[..n], b"allow read");
    }

    #[test]
    fn text_buf() {
        let mut b = [0u8; 8];
        let mut w = TextBuf::new(&mut b);
        assert!(w.push_u64(0));
        assert!(w.push_u64(1234567));
        assert!(!w.push_u64(12));
        assert!(w.overflowed());
        assert_eq!(w.as_bytes(), b"01234567");
        let mut b = [0u8; 20];
        let mut w = TextBuf::new(&mut b);
        assert!(w.push_u64(u64::MAX));
        assert_eq!(w.as_bytes(), b"18446744073709551615");
    }

    proptest! {
        #[test]
        fn u64_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..30), min in any::<u64>(), max in any::<u64>()) {
            let r = parse_u64(&bytes, min, max);
            let s = std::string::String::from_utf8_lossy(&bytes);
            let t = s.strip_suffix('\n').unwrap_or(&s);
            let std_parse = if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) { t.parse::<u64>().ok() } else { None };
            match std_parse {
                None => prop_assert_eq!(r, Err(EINVAL)),
                Some(v) if v < min || v > max => prop_assert_eq!(r, Err(ERANGE)),
                Some(v) => prop_assert_eq!(r, Ok(v)),
            }
        }

        #[test]
        fn u64_round_trip(v in any::<u64>(), nl in any::<bool>()) {
            let mut s = std::format!("{v}");
            if nl { s.push('\n'); }
            prop_assert_eq!(parse_u64(s.as_bytes(), 0, u64::MAX), Ok(v));
        }

        #[test]
        fn filter_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut f = SyscallFilter::ALLOW_ALL;
            let _ = parse_filter(&bytes, &mut f);
        }

        #[test]
        fn filter_random_text_never_panics(s in "(allow|deny|all)? ?[a-z0-9_,\\-]{0,40}\n?") {
            let mut f = SyscallFilter::ALLOW_NONE;
            if parse_filter(s.as_bytes(), &mut f).is_ok() {
                // Whatever parses formats to something that parses to the same filter.
                let mut g = SyscallFilter::ALLOW_NONE;
                prop_assert_eq!(parse_filter(formatted(&f).as_bytes(), &mut g), Ok(()));
                prop_assert_eq!(f, g);
            }
        }

        #[test]
        fn filter_round_trip(words in proptest::array::uniform8(any::<u64>()), deny in any::<bool>()) {
            let mut f = SyscallFilter::ALLOW_NONE;
            for nr in 0..512u32 {
                f.set(nr, (words[(nr / 64) as usize] >> (nr % 64)) & 1 != 0);
            }
            f.set_others(deny);
            let s = formatted(&f);
            prop_assert!(s.len() < 4096);
            let mut g = SyscallFilter::ALLOW_NONE;
            prop_assert_eq!(parse_filter(s.as_bytes(), &mut g), Ok(()));
            prop_assert_eq!(f, g);
        }

        #[test]
        fn filter_lists_by_name_and_number(nrs in proptest::collection::vec(0u32..512, 0..20), deny in any::<bool>()) {
            let items: Vec<std::string::String> = nrs
                .iter()
                .map(|&n| match syscall_name(n) { Some(name) if n % 2 == 0 => name.into(), _ => std::format!("{n}") })
                .collect();
            let mut line = std::string::String::from(if deny { "deny" } else { "allow" });
            if !items.is_empty() {
                line.push(' ');
                line.push_str(&items.join(","));
            }
            let f = parsed(&line).unwrap();
            for n in 0..600u32 {
                prop_assert_eq!(f.allows(n), if n >= 512 { deny } else { nrs.contains(&n) != deny });
            }
            prop_assert!(syscall_nr("read") == Some(0));
        }
    }
}

//! Span keys: the binary form of the `"<32 hex trace id> <16 hex span id>\n"` lines written
//! to `/proc/spantrack/begin` and `/proc/spantrack/end`, their parser, formatter and hash.
//!
//! Compiled into `spantrack.ko` and into the host crate `spantrack-logic`: `core` only, no
//! panics on any input.

use crate::uapi;

/// Length of a formatted span line without a threshold, newline included.
pub const SPAN_LINE_LEN: usize = 32 + 1 + 16 + 1;
/// Longest begin line: with a threshold of 13 digits (`SPAN_LINE_MAX`).
pub const BEGIN_LINE_MAX: usize = SPAN_LINE_LEN + 13 + 1;
/// Digits of the largest threshold a begin line may carry.
const THRESHOLD_DIGITS_MAX: usize = 13;

const _: () = assert!(BEGIN_LINE_MAX == uapi::SPAN_LINE_MAX);
const _: () = assert!(uapi::BEGIN_THRESHOLD_MAX_NS == crate::tunables::MAX_THRESHOLD_NS);
const _: () = assert!(uapi::BEGIN_THRESHOLD_MAX_NS < 10_000_000_000_000);

/// W3C trace context ids of one span, parsed once at begin/end: hashed and compared as bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpanKey {
    /// W3C trace id (16 bytes, big-endian as written in hex).
    pub trace_id: [u8; 16],
    /// W3C span id (parent id in `traceparent` terms).
    pub span_id: [u8; 8],
}

const M1: u64 = 0x9e37_79b9_7f4a_7c15;
const M2: u64 = 0xbf58_476d_1ce4_e5b9;
const M3: u64 = 0x94d0_49bb_1331_11eb;

/// Final avalanche of splitmix64.
#[inline]
const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(M2);
    x = (x ^ (x >> 27)).wrapping_mul(M3);
    x ^ (x >> 31)
}

impl SpanKey {
    /// All-zero key (invalid per W3C; never stored as an open span).
    pub const EMPTY: SpanKey = SpanKey {
        trace_id: [0; 16],
        span_id: [0; 8],
    };

    /// Both ids are non-zero (W3C trace context: all-zero ids are invalid).
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// The three 64-bit words of the key (trace id high, trace id low, span id), read in
    /// little-endian order (any fixed order would do: only the hash uses them).
    #[inline]
    fn words(&self) -> [u64; 3] {
        let t = &self.trace_id;
        let s = &self.span_id;
        [
            u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]),
            u64::from_le_bytes([t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]]),
            u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        ]
    }

    /// Hash of the key with a seed (the tracker uses a random per-load seed so that a
    /// process cannot easily pick ids that all land in one probe chain).
    #[inline]
    pub fn hash_seeded(&self, seed: u64) -> u32 {
        let [a, b, c] = self.words();
        let mut h = seed ^ M1;
        h = mix64(h ^ a);
        h = mix64(h.wrapping_add(b));
        h = mix64(h ^ c.rotate_left(17));
        (h ^ (h >> 32)) as u32
    }

    /// Unseeded hash (seed 0).
    #[inline]
    pub fn hash(&self) -> u32 {
        self.hash_seeded(0)
    }
}

/// Value of one ASCII hex digit, either case (the reference [`decode_hex8`] is tested
/// against).
#[cfg(test)]
const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Per byte of `x` (each below 0x80): 0x80 if it is in `lo..=hi`, else 0.
#[inline(always)]
const fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    // Adding 0x80 - lo sets the high bit iff byte >= lo; adding 0x7f - hi iff byte > hi.
    // No byte carries into the next: every byte is < 0x80 and every addend <= 0x80.
    let ge_lo = x.wrapping_add(ONES.wrapping_mul(0x80 - lo as u64));
    let gt_hi = x.wrapping_add(ONES.wrapping_mul(0x7f - hi as u64));
    ge_lo & !gt_hi & HIGH
}

/// Eight ASCII hex digits (little-endian in `x`: the first digit is the low byte) → the four
/// bytes they spell, in order, and whether all eight were hex digits. About 30 instructions
/// instead of about 70 for a digit-by-digit loop.
#[inline(always)]
const fn decode_hex8(x: u64) -> (u32, bool) {
    let ascii = x & HIGH == 0;
    let digit = in_range(x, b'0', b'9');
    let letter = in_range(x, b'a', b'f') | in_range(x, b'A', b'F');
    let valid = ascii && (digit | letter) == HIGH;
    // Value of each digit: low nibble, plus 9 for letters ('a' = 0x61 -> 1 + 9).
    let nib = (x & (ONES * 0x0f)).wrapping_add((letter >> 7).wrapping_mul(9));
    // Pairs of nibbles (first = high) into the low byte of each 16-bit lane.
    let pairs = ((nib & 0x000f_000f_000f_000f) << 4) | ((nib >> 8) & 0x000f_000f_000f_000f);
    // Gather the four lane bytes.
    let t = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let t = (t | (t >> 16)) & 0xffff_ffff;
    (t as u32, valid)
}

/// Parses one begin/end line: exactly `"<32 hex> <16 hex>"` optionally followed by a single
/// `'\n'`; hex digits in either case. Both ids must be non-zero.
///
/// Errors: [`uapi::ERR_MALFORMED`] for anything else.
pub fn parse_span_line(buf: &[u8]) -> Result<SpanKey, i32> {
    let line = match buf {
        [rest @ .., b'\n'] => rest,
        _ => buf,
    };
    if line.len() != SPAN_LINE_LEN - 1 {
        return Err(uapi::ERR_MALFORMED);
    }
    if line.get(32) != Some(&b' ') {
        return Err(uapi::ERR_MALFORMED);
    }
    // Six groups of eight digits at fixed offsets: four of the trace id, two of the span id.
    let load = |at: usize| -> u64 {
        match line.get(at..at.wrapping_add(8)).map(<[u8; 8]>::try_from) {
            Some(Ok(b)) => u64::from_le_bytes(b),
            _ => 0, // not hex: rejected below
        }
    };
    let mut key = SpanKey::EMPTY;
    let mut ok = true;
    for (g, at) in [0usize, 8, 16, 24, 33, 41].into_iter().enumerate() {
        let (v, good) = decode_hex8(load(at));
        ok &= good;
        let dst = if g < 4 {
            key.trace_id.get_mut(g * 4..g * 4 + 4)
        } else {
            key.span_id.get_mut((g - 4) * 4..(g - 4) * 4 + 4)
        };
        if let Some(d) = dst {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }
    if !ok {
        return Err(uapi::ERR_MALFORMED);
    }
    if !key.is_valid() {
        return Err(uapi::ERR_MALFORMED);
    }
    Ok(key)
}

/// Parses a begin line: a span line ([`parse_span_line`]) optionally followed, before the
/// optional `'\n'`, by one space and the span's threshold in ns (1 to 13 decimal digits, no
/// sign). Returns the key and the threshold (`None`: the line had none).
///
/// Errors: [`uapi::ERR_MALFORMED`] for a malformed line or threshold,
/// [`uapi::ERR_THRESHOLD_RANGE`] above [`uapi::BEGIN_THRESHOLD_MAX_NS`].
pub fn parse_begin_line(buf: &[u8]) -> Result<(SpanKey, Option<u64>), i32> {
    let line = match buf {
        [rest @ .., b'\n'] => rest,
        _ => buf,
    };
    let Some((ids, rest)) = line.split_at_checked(SPAN_LINE_LEN - 1) else {
        return Err(uapi::ERR_MALFORMED);
    };
    if rest.is_empty() {
        return parse_span_line(ids).map(|k| (k, None));
    }
    let [b' ', digits @ ..] = rest else {
        return Err(uapi::ERR_MALFORMED);
    };
    if digits.is_empty() || digits.len() > THRESHOLD_DIGITS_MAX {
        return Err(uapi::ERR_MALFORMED);
    }
    let mut v: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return Err(uapi::ERR_MALFORMED);
        }
        // 13 digits < 10^13 never overflow a u64.
        v = v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
    }
    let key = parse_span_line(ids)?;
    if v > uapi::BEGIN_THRESHOLD_MAX_NS {
        return Err(uapi::ERR_THRESHOLD_RANGE);
    }
    Ok((key, Some(v)))
}

/// Formats a begin line [`parse_begin_line`] accepts: the span line, and `threshold_ns`
/// (clamped to [`uapi::BEGIN_THRESHOLD_MAX_NS`]) when there is one. Returns the written part
/// of `out`.
pub fn format_begin_line<'b>(key: &SpanKey, threshold_ns: Option<u64>, out: &'b mut [u8; BEGIN_LINE_MAX]) -> &'b [u8] {
    let mut line = [0u8; SPAN_LINE_LEN];
    format_span_line(key, &mut line);
    let Some(t) = threshold_ns else {
        if let Some(o) = out.get_mut(..SPAN_LINE_LEN) {
            o.copy_from_slice(&line);
        }
        return out.get(..SPAN_LINE_LEN).unwrap_or(&[]);
    };
    let mut t = t.min(uapi::BEGIN_THRESHOLD_MAX_NS);
    let mut digits = [0u8; THRESHOLD_DIGITS_MAX];
    let mut n = 0;
    loop {
        if let Some(d) = digits.get_mut(THRESHOLD_DIGITS_MAX.wrapping_sub(n).wrapping_sub(1)) {
            *d = b'0' + (t % 10) as u8;
        }
        n += 1;
        t /= 10;
        if t == 0 || n == THRESHOLD_DIGITS_MAX {
            break;
        }
    }
    let ids = SPAN_LINE_LEN - 1;
    let len = ids + 1 + n + 1;
    if let (Some(o), Some(l)) = (out.get_mut(..ids), line.get(..ids)) {
        o.copy_from_slice(l);
    }
    if let Some(o) = out.get_mut(ids) {
        *o = b' ';
    }
    if let (Some(o), Some(d)) = (out.get_mut(ids + 1..ids + 1 + n), digits.get(THRESHOLD_DIGITS_MAX - n..)) {
        o.copy_from_slice(d);
    }
    if let Some(o) = out.get_mut(len - 1) {
        *o = b'\n';
    }
    out.get(..len).unwrap_or(&[])
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

fn encode_hex(src: &[u8], out: &mut [u8]) {
    for (i, b) in src.iter().enumerate() {
        let hi = HEX_LOWER[usize::from(*b >> 4)];
        let lo = HEX_LOWER[usize::from(*b & 0xf)];
        if let Some(o) = out.get_mut(i.wrapping_mul(2)) {
            *o = hi;
        }
        if let Some(o) = out.get_mut(i.wrapping_mul(2).wrapping_add(1)) {
            *o = lo;
        }
    }
}

/// Formats `key` as the line [`parse_span_line`] accepts: lower-case hex, one space, `'\n'`.
/// Returns the written part of `out` (all of it).
pub fn format_span_line<'b>(key: &SpanKey, out: &'b mut [u8; SPAN_LINE_LEN]) -> &'b [u8] {
    if let Some((trace, [sp, span @ .., nl])) = out.split_at_mut_checked(32) {
        encode_hex(&key.trace_id, trace);
        *sp = b' ';
        encode_hex(&key.span_id, span);
        *nl = b'\n';
    }
    &out[..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::collections::HashSet;
    use std::vec::Vec;

    const LINE: &[u8] = b"0af7651916cd43dd8448eb211c80319c b7ad6b7169203331\n";

    fn key_of(t: u128, s: u64) -> SpanKey {
        SpanKey {
            trace_id: t.to_be_bytes(),
            span_id: s.to_be_bytes(),
        }
    }

    #[test]
    fn parses_w3c_example() {
        let k = parse_span_line(LINE).unwrap();
        assert_eq!(
            k,
            key_of(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331)
        );
        // Without the newline, and in upper case.
        assert_eq!(parse_span_line(&LINE[..49]), Ok(k));
        let upper: Vec<u8> = LINE.to_ascii_uppercase();
        assert_eq!(parse_span_line(&upper), Ok(k));
        let mut mixed = LINE.to_vec();
        mixed[1] = b'A';
        mixed[33] = b'B';
        assert_eq!(parse_span_line(&mixed), Ok(k));
    }

    #[test]
    fn rejects_malformed() {
        let bad: &[&[u8]] = &[
            b"",
            b"\n",
            b"\n\n",
            &LINE[..48],
            b"0af7651916cd43dd8448eb211c80319c b7ad6b7169203331\n\n",
            b"0af7651916cd43dd8448eb211c80319c b7ad6b7169203331 \n",
            b"0af7651916cd43dd8448eb211c80319c b7ad6b7169203331\r\n",
            b"0af7651916cd43dd8448eb211c80319c  7ad6b7169203331\n",
            b"0af7651916cd43dd8448eb211c80319c\tb7ad6b7169203331\n",
            b"0af7651916cd43dd8448eb211c80319cxb7ad6b7169203331\n",
            b"0af7651916cd43dd8448eb211c80319cb7ad6b7169203331\n\n",
            b"0af7651916cd43dd8448eb211c80319g b7ad6b7169203331\n",
            b"0af7651916cd43dd8448eb211c80319c b7ad6b716920333z\n",
            b" 0af7651916cd43dd8448eb211c80319c b7ad6b716920333\n",
            b"0af7651916cd43dd8448eb211c80319 cb7ad6b7169203331\n",
            b"00000000000000000000000000000000 b7ad6b7169203331\n",
            b"0af7651916cd43dd8448eb211c80319c 0000000000000000\n",
            b"00000000000000000000000000000000 0000000000000000",
            b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"+af7651916cd43dd8448eb211c80319c b7ad6b7169203331",
            b"0af7651916cd43dd8448eb211c80319c b7ad6b7169203331\n\0",
            b"0af7651916cd43dd8448eb211c80319c b7ad6b7169203331\0",
        ];
        for b in bad {
            assert_eq!(
                parse_span_line(b),
                Err(uapi::ERR_MALFORMED),
                "{:?}",
                std::string::String::from_utf8_lossy(b)
            );
        }
        let long = [b'a'; 200];
        assert_eq!(parse_span_line(&long), Err(uapi::ERR_MALFORMED));
    }

    #[test]
    fn non_ascii_bytes_rejected_everywhere() {
        for pos in 0..LINE.len() {
            for byte in [0u8, 0x80, 0xff, b'g', b'G', b'/', b':', b'@', b'`'] {
                let mut l = LINE.to_vec();
                if l[pos] == byte {
                    continue;
                }
                l[pos] = byte;
                assert_eq!(
                    parse_span_line(&l),
                    Err(uapi::ERR_MALFORMED),
                    "pos {pos} byte {byte}"
                );
            }
        }
    }

    #[test]
    fn formats_lower_case() {
        let k = parse_span_line(&LINE.to_ascii_uppercase()).unwrap();
        let mut out = [0u8; SPAN_LINE_LEN];
        assert_eq!(format_span_line(&k, &mut out), LINE);
    }

    #[test]
    fn hash_spreads_sequential_and_single_bit_keys() {
        // Keys that differ in a single byte must spread over the low bits (the table masks).
        let mut seen = HashSet::new();
        for i in 0..24usize {
            for v in 1..=255u8 {
                let mut k = key_of(1, 1);
                if i < 16 {
                    k.trace_id[i] ^= v;
                } else {
                    k.span_id[i - 16] ^= v;
                }
                seen.insert(k.hash() & 0xfff);
            }
        }
        // 6120 keys into 4096 buckets: a good hash fills ~77% of them.
        assert!(seen.len() > 3000, "only {} buckets", seen.len());
        // Seeds change the hash.
        let k = key_of(5, 7);
        assert_ne!(k.hash_seeded(1), k.hash_seeded(2));
        assert_eq!(k.hash(), k.hash_seeded(0));
    }

    #[test]
    fn decode_hex8_matches_digit_by_digit() {
        let slow = |b: [u8; 8]| -> Option<u32> {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = (hex_val(b[2 * i])? << 4) | hex_val(b[2 * i + 1])?;
            }
            Some(u32::from_le_bytes(o))
        };
        let base = *b"09afAF3c";
        // Every byte value at every position of a valid group.
        for pos in 0..8 {
            for c in 0..=255u8 {
                let mut b = base;
                b[pos] = c;
                let (v, ok) = decode_hex8(u64::from_le_bytes(b));
                match slow(b) {
                    Some(want) => assert!(ok && v == want, "{b:?}"),
                    None => assert!(!ok, "{b:?} accepted"),
                }
            }
        }
        assert_eq!(decode_hex8(u64::from_le_bytes(*b"deadBEEF")), (u32::from_le_bytes([0xde, 0xad, 0xbe, 0xef]), true));
    }

    proptest! {
        #[test]
        fn decode_hex8_agrees_on_random_groups(
            b in proptest::array::uniform8(prop_oneof![
                Just(b'0'), Just(b'9'), Just(b'a'), Just(b'f'), Just(b'A'), Just(b'F'),
                Just(b'/'), Just(b':'), Just(b'@'), Just(b'G'), Just(b'`'), Just(b'g'),
                0x20u8..0x7f, any::<u8>()
            ])
        ) {
            let mut want = [0u8; 4];
            let mut good = true;
            for i in 0..4 {
                match (hex_val(b[2 * i]), hex_val(b[2 * i + 1])) {
                    (Some(h), Some(l)) => want[i] = (h << 4) | l,
                    _ => good = false,
                }
            }
            let (v, ok) = decode_hex8(u64::from_le_bytes(b));
            prop_assert_eq!(ok, good);
            if good {
                prop_assert_eq!(v, u32::from_le_bytes(want));
            }
        }
    }

    #[test]
    fn begin_lines_with_thresholds() {
        let k = parse_span_line(LINE).unwrap();
        let ids = &LINE[..49];
        let with = |t: &str| {
            let mut l = ids.to_vec();
            l.extend_from_slice(t.as_bytes());
            l
        };
        // Old lines are still accepted, with and without the newline.
        assert_eq!(parse_begin_line(LINE), Ok((k, None)));
        assert_eq!(parse_begin_line(ids), Ok((k, None)));
        assert_eq!(parse_begin_line(&with(" 5000000\n")), Ok((k, Some(5_000_000))));
        assert_eq!(parse_begin_line(&with(" 0")), Ok((k, Some(0))));
        assert_eq!(parse_begin_line(&with(" 3600000000000\n")), Ok((k, Some(3_600_000_000_000))));
        assert_eq!(with(" 3600000000000\n").len(), uapi::SPAN_LINE_MAX);
        assert_eq!(parse_begin_line(&with(" 3600000000001")), Err(uapi::ERR_THRESHOLD_RANGE));
        assert_eq!(parse_begin_line(&with(" 9999999999999")), Err(uapi::ERR_THRESHOLD_RANGE));
        for bad in [" ", " \n", "  5", " 5 ", " +5", " -5", " 5x", " 0x10", " 10000000000000", "\t5", " 5\n\n", "5", " 5\r\n", " 1e6"] {
            assert_eq!(parse_begin_line(&with(bad)), Err(uapi::ERR_MALFORMED), "{bad:?}");
        }
        // A bad id with a good threshold is still malformed.
        let mut l = with(" 5");
        l[3] = b'z';
        assert_eq!(parse_begin_line(&l), Err(uapi::ERR_MALFORMED));
        // End lines take no threshold.
        assert_eq!(parse_span_line(&with(" 5")), Err(uapi::ERR_MALFORMED));
        let mut out = [0u8; BEGIN_LINE_MAX];
        assert_eq!(format_begin_line(&k, None, &mut out), LINE);
        assert_eq!(format_begin_line(&k, Some(0), &mut out), &with(" 0\n")[..]);
        assert_eq!(format_begin_line(&k, Some(u64::MAX), &mut out), &with(" 3600000000000\n")[..]);
    }

    proptest! {
        #[test]
        fn begin_lines_round_trip(t in 1u128.., s in 1u64.., th in proptest::option::of(0u64..=uapi::BEGIN_THRESHOLD_MAX_NS)) {
            let k = key_of(t, s);
            let mut out = [0u8; BEGIN_LINE_MAX];
            let l = format_begin_line(&k, th, &mut out).to_vec();
            prop_assert_eq!(parse_begin_line(&l), Ok((k, th)));
        }

        #[test]
        fn begin_lines_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_begin_line(&bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let r = parse_span_line(&bytes);
            if let Ok(k) = r {
                prop_assert!(k.is_valid());
                let mut out = [0u8; SPAN_LINE_LEN];
                let f = format_span_line(&k, &mut out);
                // Whatever was accepted equals the canonical form up to case and newline.
                let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                prop_assert_eq!(&f[..49], &trimmed.to_ascii_lowercase()[..]);
            }
        }

        #[test]
        fn near_valid_lines_never_panic(t in 1u128.., s in 1u64.., pos in 0usize..50, byte in any::<u8>(), cut in 0usize..51) {
            let k = key_of(t, s);
            let mut out = [0u8; SPAN_LINE_LEN];
            let mut l = format_span_line(&k, &mut out).to_vec();
            l[pos] = byte;
            let _ = parse_span_line(&l);
            let _ = parse_span_line(&l[..cut]);
        }

        #[test]
        fn valid_lines_round_trip(t in 1u128.., s in 1u64.., upper in any::<bool>(), nl in any::<bool>()) {
            let k = key_of(t, s);
            let mut out = [0u8; SPAN_LINE_LEN];
            let mut l = format_span_line(&k, &mut out).to_vec();
            if upper { l.make_ascii_uppercase(); }
            if !nl { l.pop(); }
            prop_assert_eq!(parse_span_line(&l), Ok(k));
        }
    }
}

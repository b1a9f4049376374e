//! Decoded msgpack values compared with recipe literals: numbers across integer and float
//! encodings, strings byte for byte, bools, nil, lists and maps structurally.

use std::cmp::Ordering;

use rmpv::ValueRef;

use super::conf::Conf;

/// Nesting deeper than this in a field value is treated as undecodable.
const MAX_DEPTH: usize = 64;

/// Decode one msgpack value that must fill `bytes` exactly.
pub(crate) fn decode(bytes: &[u8]) -> Result<ValueRef<'_>, String> {
    if let Some(value) = decode_scalar(bytes) {
        return Ok(value);
    }
    let mut rd = bytes;
    let value = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| format!("not valid msgpack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!("not valid msgpack: {} trailing bytes", rd.len()));
    }
    Ok(value)
}

/// The common scalars (nil, bool, integers, floats, UTF-8 strings) read straight from
/// bytes that hold exactly one of them; None for anything else (containers, binary, ext,
/// invalid UTF-8, trailing or missing bytes), which `decode` leaves to rmpv. Gives the same
/// value rmpv would.
fn decode_scalar(bytes: &[u8]) -> Option<ValueRef<'_>> {
    let (&marker, rest) = bytes.split_first()?;
    let exact = |n: usize| (rest.len() == n).then_some(rest);
    let be = |n: usize| -> Option<u64> {
        let b = exact(n)?;
        Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    let text = |len: usize, at: usize| -> Option<ValueRef<'_>> {
        let body = rest.get(at..)?;
        if body.len() != len {
            return None;
        }
        if body.is_ascii() {
            // SAFETY: every byte of `body` is ASCII (checked just above), so it is UTF-8.
            return Some(ValueRef::from(unsafe { std::str::from_utf8_unchecked(body) }));
        }
        std::str::from_utf8(body).ok().map(ValueRef::from)
    };
    let value = match marker {
        0x00..=0x7f if rest.is_empty() => ValueRef::from(u64::from(marker)),
        0xe0..=0xff if rest.is_empty() => ValueRef::from(i64::from(marker as i8)),
        0xc0 if rest.is_empty() => ValueRef::Nil,
        0xc2 if rest.is_empty() => ValueRef::Boolean(false),
        0xc3 if rest.is_empty() => ValueRef::Boolean(true),
        0xcc => ValueRef::from(be(1)?),
        0xcd => ValueRef::from(be(2)?),
        0xce => ValueRef::from(be(4)?),
        0xcf => ValueRef::from(be(8)?),
        0xd0 => ValueRef::from(i64::from(be(1)? as u8 as i8)),
        0xd1 => ValueRef::from(i64::from(be(2)? as u16 as i16)),
        0xd2 => ValueRef::from(i64::from(be(4)? as u32 as i32)),
        0xd3 => ValueRef::from(be(8)? as i64),
        0xca => ValueRef::F32(f32::from_bits(be(4)? as u32)),
        0xcb => ValueRef::F64(f64::from_bits(be(8)?)),
        0xa0..=0xbf => text(usize::from(marker & 0x1f), 0)?,
        0xd9 => text(usize::from(*rest.first()?), 1)?,
        0xda => text(usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), 2)?,
        0xdb => text(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize, 4)?,
        _ => return None,
    };
    Some(value)
}

/// A number from either side, kept exact for integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    pub(crate) fn from_conf(conf: &Conf) -> Option<Num> {
        match conf {
            Conf::Int(i) => Some(Num::Int(*i)),
            Conf::Float(f) => Some(Num::Float(*f)),
            _ => None,
        }
    }

    pub(crate) fn from_value(value: &ValueRef<'_>) -> Option<Num> {
        match value {
            ValueRef::Integer(i) => i
                .as_i64()
                .map(|v| Num::Int(v.into()))
                .or_else(|| i.as_u64().map(|v| Num::Int(v.into()))),
            ValueRef::F32(f) => Some(Num::Float(f64::from(*f))),
            ValueRef::F64(f) => Some(Num::Float(*f)),
            _ => None,
        }
    }

    /// Numeric order; None when either side is NaN.
    pub(crate) fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => cmp_int_float(a, b),
            (Num::Float(a), Num::Int(b)) => cmp_int_float(b, a).map(Ordering::reverse),
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Compare an integer with a float exactly (no rounding of large integers).
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // Beyond +-2^126 every i128 we can hold (from i64/u64) is smaller/larger.
    const LIMIT: f64 = 8.507_059_173_023_462e37;
    if f >= LIMIT {
        return Some(Ordering::Less);
    }
    if f <= -LIMIT {
        return Some(Ordering::Greater);
    }
    let floor = f.floor();
    match i.cmp(&(floor as i128)) {
        Ordering::Equal if f > floor => Some(Ordering::Less),
        other => Some(other),
    }
}

/// Structural equality of a decoded value and a recipe literal. Numbers compare by value
/// (`1 == 1.0`); NaN equals nothing; strings compare as bytes; a map equals a table with
/// the same keys and equal values.
pub(crate) fn equals(value: &ValueRef<'_>, conf: &Conf) -> bool {
    match (value, conf) {
        (ValueRef::Nil, Conf::Nil) => true,
        (ValueRef::Boolean(a), Conf::Bool(b)) => a == b,
        (ValueRef::String(s), Conf::Str(c)) => s.as_bytes() == c.as_bytes(),
        (ValueRef::Array(items), Conf::List(list)) => {
            items.len() == list.len() && items.iter().zip(list).all(|(v, c)| equals(v, c))
        }
        (ValueRef::Map(entries), Conf::Map(table)) => {
            entries.len() == table.len()
                && table.iter().all(|(k, c)| match map_get(entries, k) {
                    Some(v) => equals(v, c),
                    None => false,
                })
        }
        _ => match (Num::from_value(value), Num::from_conf(conf)) {
            (Some(a), Some(b)) => a.cmp(b) == Some(Ordering::Equal),
            _ => false,
        },
    }
}

/// The value under a string key of a msgpack map.
pub(crate) fn map_get<'v, 'a>(
    entries: &'v [(ValueRef<'a>, ValueRef<'a>)],
    key: &str,
) -> Option<&'v ValueRef<'a>> {
    entries.iter().find_map(|(k, v)| match k {
        ValueRef::String(s) if s.as_bytes() == key.as_bytes() => Some(v),
        _ => None,
    })
}

/// The length of a string (in characters), binary (bytes), list or map (entries).
pub(crate) fn length(value: &ValueRef<'_>) -> Option<u64> {
    let n = match value {
        ValueRef::String(s) => match s.as_str() {
            Some(text) => text.chars().count(),
            None => s.as_bytes().len(),
        },
        ValueRef::Binary(b) => b.len(),
        ValueRef::Array(a) => a.len(),
        ValueRef::Map(m) => m.len(),
        _ => return None,
    };
    Some(n as u64)
}

/// A short rendering of a value for findings (long strings and containers are cut).
pub(crate) fn render(value: &ValueRef<'_>) -> String {
    let text = match value {
        ValueRef::Nil => "nil".to_string(),
        ValueRef::String(s) => match s.as_str() {
            Some(t) => format!("{t:?}"),
            None => format!("<invalid utf-8, {} bytes>", s.as_bytes().len()),
        },
        ValueRef::Binary(b) => format!("<{} bytes>", b.len()),
        ValueRef::Array(a) => format!("<list of {}>", a.len()),
        ValueRef::Map(m) => format!("<map of {}>", m.len()),
        other => other.to_string(),
    };
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar fast path gives exactly what rmpv gives, and declines what it must.
    #[test]
    fn scalar_fast_path_matches_rmpv() {
        let mut cases: Vec<Vec<u8>> = vec![
            vec![0x00],
            vec![0x7f],
            vec![0xe0],
            vec![0xff],
            vec![0xc0],
            vec![0xc2],
            vec![0xc3],
            vec![0xcc, 0xff],
            vec![0xcd, 0x12, 0x34],
            vec![0xce, 0xff, 0xff, 0xff, 0xff],
            vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0xd0, 0x05],
            vec![0xd0, 0x80],
            vec![0xd1, 0x80, 0x00],
            vec![0xd2, 0x80, 0x00, 0x00, 0x00],
            vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![0xd3, 0x00, 0, 0, 0, 0, 0, 0, 7],
            vec![0xca, 0x3f, 0xc0, 0x00, 0x00],
            vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1],
            vec![0xa0],
            vec![0xa3, b'a', b'b', b'c'],
            vec![0xd9, 2, 0xc3, 0xa9],
            vec![0xda, 0, 1, b'x'],
            vec![0xdb, 0, 0, 0, 1, b'y'],
        ];
        for c in cases.clone() {
            let fast = decode_scalar(&c).unwrap_or_else(|| panic!("{c:?} not fast"));
            let mut rd = c.as_slice();
            let slow = rmpv::decode::read_value_ref(&mut rd).unwrap();
            assert!(rd.is_empty());
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{c:?}");
        }
        // Trailing, missing or invalid bytes and non-scalars are left to rmpv.
        cases = vec![
            vec![],
            vec![0x01, 0x00],
            vec![0xc0, 0x00],
            vec![0xcc],
            vec![0xcd, 0x01, 0x02, 0x03],
            vec![0xa2, b'a'],
            vec![0xa1, b'a', b'b'],
            vec![0xa1, 0xff],
            vec![0xd9],
            vec![0xda, 0],
            vec![0x90],
            vec![0x80],
            vec![0xc4, 1, 0],
            vec![0xc1],
        ];
        for c in cases {
            assert!(decode_scalar(&c).is_none(), "{c:?}");
            if let Ok(v) = decode(&c) {
                let mut rd = c.as_slice();
                assert_eq!(rmpv::decode::read_value_ref(&mut rd).ok(), Some(v));
            }
        }
    }
}

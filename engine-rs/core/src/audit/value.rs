//! Decoded msgpack values compared with recipe literals: numbers across integer and float
//! encodings, strings byte for byte, bools, nil, lists and maps structurally.

use std::cmp::Ordering;

use rmpv::ValueRef;

use super::conf::Conf;

/// Nesting deeper than this in a field value is treated as undecodable.
const MAX_DEPTH: usize = 64;

/// Decode one msgpack value that must fill `bytes` exactly.
pub(crate) fn decode(bytes: &[u8]) -> Result<ValueRef<'_>, String> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| format!("not valid msgpack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!("not valid msgpack: {} trailing bytes", rd.len()));
    }
    Ok(value)
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

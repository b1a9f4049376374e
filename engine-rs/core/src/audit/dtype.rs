//! numpy-style dtype strings (`"<f8"`, `"|u1"`, `"float32"`, ...) parsed into a small value.

use std::fmt;

/// The element kinds the auditor understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DKind {
    Float,
    Int,
    UInt,
    Bool,
}

/// A parsed dtype: kind, item size in bytes, byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DType {
    pub kind: DKind,
    pub size: usize,
    /// Only meaningful when `size > 1`; false for single-byte types.
    pub big_endian: bool,
}

impl DType {
    /// Parse `[<>=|]?[fiub]N` or a numpy name (`float64`, `int32`, `uint8`, `bool`).
    /// `=` and no prefix mean this machine's byte order.
    pub fn parse(text: &str) -> Option<DType> {
        if let Some(dt) = Self::from_name(text) {
            return Some(dt);
        }
        let (order, rest) = match text.chars().next()? {
            c @ ('<' | '>' | '=' | '|') => (c, &text[1..]),
            _ => ('=', text),
        };
        let mut chars = rest.chars();
        let kind = match chars.next()? {
            'f' => DKind::Float,
            'i' => DKind::Int,
            'u' => DKind::UInt,
            'b' => DKind::Bool,
            _ => return None,
        };
        let size: usize = chars.as_str().parse().ok()?;
        let big = match order {
            '>' => true,
            '<' => false,
            '|' if size != 1 => return None,
            _ => cfg!(target_endian = "big"),
        };
        Self::new(kind, size, big)
    }

    fn new(kind: DKind, size: usize, big: bool) -> Option<DType> {
        let ok = match kind {
            DKind::Float => matches!(size, 2 | 4 | 8),
            DKind::Int | DKind::UInt => matches!(size, 1 | 2 | 4 | 8),
            DKind::Bool => size == 1,
        };
        ok.then_some(DType {
            kind,
            size,
            big_endian: big && size > 1,
        })
    }

    fn from_name(text: &str) -> Option<DType> {
        let native = cfg!(target_endian = "big");
        let (kind, size) = match text {
            "bool" => (DKind::Bool, 1),
            "float16" => (DKind::Float, 2),
            "float32" => (DKind::Float, 4),
            "float64" => (DKind::Float, 8),
            "int8" => (DKind::Int, 1),
            "int16" => (DKind::Int, 2),
            "int32" => (DKind::Int, 4),
            "int64" => (DKind::Int, 8),
            "uint8" => (DKind::UInt, 1),
            "uint16" => (DKind::UInt, 2),
            "uint32" => (DKind::UInt, 4),
            "uint64" => (DKind::UInt, 8),
            _ => return None,
        };
        Self::new(kind, size, native)
    }
}

impl fmt::Display for DType {
    /// numpy's `dtype.str` form: `<f8`, `>i4`, `|u1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = match (self.size, self.big_endian) {
            (1, _) => '|',
            (_, true) => '>',
            (_, false) => '<',
        };
        let kind = match self.kind {
            DKind::Float => 'f',
            DKind::Int => 'i',
            DKind::UInt => 'u',
            DKind::Bool => 'b',
        };
        write!(f, "{order}{kind}{}", self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_strings_and_names() {
        let f8 = DType {
            kind: DKind::Float,
            size: 8,
            big_endian: false,
        };
        assert_eq!(DType::parse("<f8"), Some(f8));
        assert_eq!(DType::parse("float64"), Some(f8));
        assert_eq!(DType::parse("f8"), Some(f8));
        assert_eq!(DType::parse("=f8"), Some(f8));
        assert_eq!(DType::parse("|u1"), DType::parse("<u1"));
        assert_eq!(
            DType::parse("|u1").map(|d| d.to_string()).as_deref(),
            Some("|u1")
        );
        assert_eq!(DType::parse(">i4").map(|d| d.big_endian), Some(true));
        assert_eq!(DType::parse("|f8"), None);
        assert_eq!(DType::parse("<c16"), None);
        assert_eq!(DType::parse("<f3"), None);
        assert_eq!(DType::parse(""), None);
    }
}

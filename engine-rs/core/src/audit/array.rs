//! Conditions on heavy arrays (`heavy.<name>`): dtype, shape, ndim, element count
//! (min_len/max_len), finite, value range (min/max) and checksum, evaluated straight over
//! the mapped bytes.

use std::cmp::Ordering;

use crate::audit_api::ArrayField;

use super::conf::Conf;
use super::dtype::DType;
use super::error::AuditError;
use super::scan::{self, Stats};
use super::schema::Table;
use super::value::Num;

/// A checksum the bytes must have.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Checksum {
    Crc32(u32),
    Blake3(String),
}

/// The conditions of a rule on a heavy array.
#[derive(Clone, Debug, Default)]
pub(crate) struct ArrayConds {
    pub(crate) dtype: Option<DType>,
    /// `None` entries (written -1) match any length on that axis.
    pub(crate) shape: Option<Vec<Option<u64>>>,
    pub(crate) ndim: Option<u64>,
    pub(crate) finite: Option<bool>,
    pub(crate) min: Option<Num>,
    pub(crate) max: Option<Num>,
    pub(crate) min_len: Option<u64>,
    pub(crate) max_len: Option<u64>,
    pub(crate) checksum: Option<Checksum>,
}

impl ArrayConds {
    pub(crate) fn read(t: &mut Table<'_>) -> Result<ArrayConds, AuditError> {
        let dtype = match t.string(&["dtype"])? {
            Some(s) => Some(DType::parse(&s).ok_or_else(|| t.err(format!("unknown dtype '{s}'")))?),
            None => None,
        };
        let conds = ArrayConds {
            dtype,
            shape: read_shape(t)?,
            ndim: t.uint(&["ndim"], 64)?,
            finite: t.boolean(&["finite"])?,
            min: read_num(t, "min")?,
            max: read_num(t, "max")?,
            min_len: t.uint(&["min_len"], u64::MAX)?,
            max_len: t.uint(&["max_len"], u64::MAX)?,
            checksum: read_checksum(t)?,
        };
        for key in ["eq", "neq", "nil", "regex"] {
            if t.take(&[key]).is_some() {
                return Err(t.err(format!("'{key}' does not apply to heavy.<name> fields")));
            }
        }
        Ok(conds)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.dtype.is_none()
            && self.shape.is_none()
            && self.ndim.is_none()
            && self.finite.is_none()
            && self.min_len.is_none()
            && self.max_len.is_none()
            && !self.reads_data()
    }

    /// Whether any condition needs the array's bytes.
    pub(crate) fn reads_data(&self) -> bool {
        self.finite == Some(true)
            || self.min.is_some()
            || self.max.is_some()
            || self.checksum.is_some()
    }

    /// Ok, or Err(what is wrong).
    pub(crate) fn eval(&self, field: &str, arr: &ArrayField<'_>) -> Result<(), String> {
        let dtype = DType::parse(arr.dtype);
        if let Some(want) = self.dtype {
            if dtype != Some(want) {
                return Err(format!(
                    "{field} has dtype '{}', expected '{want}'",
                    arr.dtype
                ));
            }
        }
        self.check_shape(field, arr.shape)?;
        let count = arr
            .shape
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d))
            .ok_or_else(|| format!("{field} has an impossible shape {:?}", arr.shape))?;
        self.check_count(field, count)?;
        if !self.reads_data() {
            return Ok(());
        }
        let Some(dtype) = dtype else {
            return Err(format!("{field} has unsupported dtype '{}'", arr.dtype));
        };
        let data = arr
            .data
            .ok_or_else(|| format!("{field}: array data not mapped"))?;
        let need = count.checked_mul(dtype.size as u64);
        if need != Some(data.len() as u64) {
            return Err(format!(
                "{field} holds {} bytes but dtype '{}' and shape {:?} need {}",
                data.len(),
                arr.dtype,
                arr.shape,
                need.map_or("more than 2^64".into(), |n| n.to_string())
            ));
        }
        self.check_checksum(field, data)?;
        self.check_values(field, dtype, data)
    }

    fn check_shape(&self, field: &str, shape: &[u64]) -> Result<(), String> {
        if let Some(ndim) = self.ndim.filter(|n| *n != shape.len() as u64) {
            return Err(format!(
                "{field} has {} dimensions, expected {ndim}",
                shape.len()
            ));
        }
        let Some(want) = &self.shape else {
            return Ok(());
        };
        let fits = want.len() == shape.len()
            && want
                .iter()
                .zip(shape)
                .all(|(w, d)| w.is_none_or(|w| w == *d));
        if fits {
            return Ok(());
        }
        let shown: Vec<String> = want
            .iter()
            .map(|w| w.map_or("-1".into(), |w| w.to_string()))
            .collect();
        Err(format!(
            "{field} has shape {shape:?}, expected [{}]",
            shown.join(", ")
        ))
    }

    fn check_count(&self, field: &str, count: u64) -> Result<(), String> {
        if let Some(min) = self.min_len.filter(|m| count < *m) {
            return Err(format!("{field} has {count} elements < min_len {min}"));
        }
        if let Some(max) = self.max_len.filter(|m| count > *m) {
            return Err(format!("{field} has {count} elements > max_len {max}"));
        }
        Ok(())
    }

    fn check_checksum(&self, field: &str, data: &[u8]) -> Result<(), String> {
        match &self.checksum {
            None => Ok(()),
            Some(Checksum::Crc32(want)) => {
                let got = scan::crc32(data);
                (got == *want).then_some(()).ok_or_else(|| {
                    format!("{field} has crc32:{got:08x}, expected crc32:{want:08x}")
                })
            }
            Some(Checksum::Blake3(want)) => {
                let got = blake3::hash(data).to_hex();
                (got.as_str() == want)
                    .then_some(())
                    .ok_or_else(|| format!("{field} has blake3:{got}, expected blake3:{want}"))
            }
        }
    }

    fn check_values(&self, field: &str, dtype: DType, data: &[u8]) -> Result<(), String> {
        if self.finite != Some(true) && self.min.is_none() && self.max.is_none() {
            return Ok(());
        }
        let stats = scan::scan(dtype, data)
            .ok_or_else(|| format!("{field}: values of dtype '{dtype}' cannot be scanned"))?;
        let (lo, hi, count) = match stats {
            Stats::Float(s) => {
                if s.has_nan
                    && (self.finite == Some(true) || self.min.is_some() || self.max.is_some())
                {
                    return Err(format!("{field} contains NaN"));
                }
                if !s.finite && self.finite == Some(true) {
                    return Err(format!(
                        "{field} contains inf (min {}, max {})",
                        s.min, s.max
                    ));
                }
                (Num::Float(s.min), Num::Float(s.max), s.count)
            }
            Stats::Int(s) => (Num::Int(s.min), Num::Int(s.max), s.count),
        };
        if count == 0 {
            return Ok(());
        }
        if let Some(min) = self.min.filter(|m| lo.cmp(*m) == Some(Ordering::Less)) {
            return Err(format!("{field} has min value {lo} < min {min}"));
        }
        if let Some(max) = self.max.filter(|m| hi.cmp(*m) == Some(Ordering::Greater)) {
            return Err(format!("{field} has max value {hi} > max {max}"));
        }
        Ok(())
    }
}

fn read_num(t: &mut Table<'_>, key: &str) -> Result<Option<Num>, AuditError> {
    match t.take(&[key]) {
        None => Ok(None),
        Some((_, c)) if c.is_number() && !matches!(c, Conf::Float(f) if f.is_nan()) => {
            Ok(Num::from_conf(c))
        }
        Some((_, other)) => Err(t.err(format!(
            "'{key}' of an array must be a number, found {}",
            other.render()
        ))),
    }
}

fn read_shape(t: &mut Table<'_>) -> Result<Option<Vec<Option<u64>>>, AuditError> {
    let Some((_, conf)) = t.take(&["shape"]) else {
        return Ok(None);
    };
    let bad = || {
        t.err(format!(
            "'shape' must be a list of lengths (-1 for any), found {}",
            conf.render()
        ))
    };
    let Conf::List(items) = conf else {
        return Err(bad());
    };
    items
        .iter()
        .map(|item| match item {
            Conf::Int(-1) => Ok(None),
            Conf::Int(n) if *n >= 0 && *n <= i128::from(u64::MAX) => Ok(Some(*n as u64)),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn read_checksum(t: &mut Table<'_>) -> Result<Option<Checksum>, AuditError> {
    let Some(text) = t.string(&["checksum"])? else {
        return Ok(None);
    };
    let lower = text.to_ascii_lowercase();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(h) = lower.strip_prefix("crc32:").filter(|h| hex(h, 8)) {
        return Ok(u32::from_str_radix(h, 16).ok().map(Checksum::Crc32));
    }
    if let Some(h) = lower.strip_prefix("blake3:").filter(|h| hex(h, 64)) {
        return Ok(Some(Checksum::Blake3(h.to_string())));
    }
    Err(t.err(format!(
        "'checksum' must be crc32:<8 hex digits> or blake3:<64 hex digits>, found '{text}'"
    )))
}

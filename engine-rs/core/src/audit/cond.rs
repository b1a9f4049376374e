//! Conditions on small values (`input.<arg>`, `output.<key>`): min, max, eq, neq, nil,
//! min_len, max_len, regex. A value that cannot be decoded or compared fails the condition.

use std::cmp::Ordering;

use regex::Regex;
use rmpv::ValueRef;

use super::array::ArrayConds;
use super::conf::Conf;
use super::error::AuditError;
use super::schema::{Table, Target};
use super::value::{self, Num};

/// A `min`/`max` bound: numbers compare numerically, strings byte-lexicographically.
#[derive(Clone, Debug)]
pub(crate) enum Bound {
    Num(Num),
    Str(String),
}

/// The conditions of a rule on a small value.
#[derive(Clone, Debug, Default)]
pub(crate) struct ValueConds {
    pub(crate) min: Option<Bound>,
    pub(crate) max: Option<Bound>,
    pub(crate) eq: Option<Conf>,
    pub(crate) neq: Option<Conf>,
    pub(crate) nil: Option<bool>,
    pub(crate) min_len: Option<u64>,
    pub(crate) max_len: Option<u64>,
    pub(crate) regex: Option<Regex>,
}

/// What a rule checks, by the kind of field it targets.
#[derive(Clone, Debug)]
pub(crate) enum Check {
    Value(ValueConds),
    Array(ArrayConds),
}

impl Check {
    /// Read the condition keys of a rule table.
    pub(crate) fn read(t: &mut Table<'_>, target: &Target) -> Result<Check, AuditError> {
        match target {
            Target::Heavy(_) => Ok(Check::Array(ArrayConds::read(t)?)),
            _ => Ok(Check::Value(ValueConds::read(t)?)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Check::Value(v) => v.is_empty(),
            Check::Array(a) => a.is_empty(),
        }
    }
}

impl ValueConds {
    fn read(t: &mut Table<'_>) -> Result<ValueConds, AuditError> {
        let conds = ValueConds {
            min: read_bound(t, "min")?,
            max: read_bound(t, "max")?,
            eq: t.take(&["eq"]).map(|(_, c)| c.clone()),
            neq: t.take(&["neq"]).map(|(_, c)| c.clone()),
            nil: t.boolean(&["nil"])?,
            min_len: t.uint(&["min_len"], u64::MAX)?,
            max_len: t.uint(&["max_len"], u64::MAX)?,
            regex: read_regex(t)?,
        };
        for key in ["dtype", "shape", "ndim", "finite", "checksum"] {
            if t.take(&[key]).is_some() {
                return Err(t.err(format!("'{key}' applies to heavy.<name> fields only")));
            }
        }
        Ok(conds)
    }

    fn is_empty(&self) -> bool {
        self.min.is_none()
            && self.max.is_none()
            && self.eq.is_none()
            && self.neq.is_none()
            && self.nil.is_none()
            && self.min_len.is_none()
            && self.max_len.is_none()
            && self.regex.is_none()
    }

    /// Ok, or Err(what is wrong) for a decoded value.
    pub(crate) fn eval(&self, field: &str, value: &ValueRef<'_>) -> Result<(), String> {
        let shown = || value::render(value);
        if let Some(want_nil) = self.nil {
            if matches!(value, ValueRef::Nil) != want_nil {
                let want = if want_nil { "nil" } else { "not nil" };
                return Err(format!("{field} = {} must be {want}", shown()));
            }
        }
        if let Some(eq) = &self.eq {
            if !value::equals(value, eq) {
                return Err(format!("{field} = {} != {}", shown(), eq.render()));
            }
        }
        if let Some(neq) = &self.neq {
            if value::equals(value, neq) {
                return Err(format!(
                    "{field} = {} must not equal {}",
                    shown(),
                    neq.render()
                ));
            }
        }
        if let Some(min) = &self.min {
            check_bound(field, value, min, Ordering::Less, "<")?;
        }
        if let Some(max) = &self.max {
            check_bound(field, value, max, Ordering::Greater, ">")?;
        }
        self.check_len(field, value)?;
        self.check_regex(field, value)
    }

    fn check_len(&self, field: &str, value: &ValueRef<'_>) -> Result<(), String> {
        if self.min_len.is_none() && self.max_len.is_none() {
            return Ok(());
        }
        let Some(len) = value::length(value) else {
            return Err(format!("{field} = {} has no length", value::render(value)));
        };
        if let Some(min) = self.min_len.filter(|m| len < *m) {
            return Err(format!("{field} has length {len} < min_len {min}"));
        }
        if let Some(max) = self.max_len.filter(|m| len > *m) {
            return Err(format!("{field} has length {len} > max_len {max}"));
        }
        Ok(())
    }

    fn check_regex(&self, field: &str, value: &ValueRef<'_>) -> Result<(), String> {
        let Some(re) = &self.regex else { return Ok(()) };
        let text = match value {
            ValueRef::String(s) => s.as_str(),
            _ => None,
        };
        match text {
            Some(text) if re.is_match(text) => Ok(()),
            Some(_) => Err(format!(
                "{field} = {} does not match /{}/",
                value::render(value),
                re.as_str()
            )),
            None => Err(format!(
                "{field} = {} is not a UTF-8 string",
                value::render(value)
            )),
        }
    }
}

fn read_bound(t: &mut Table<'_>, key: &str) -> Result<Option<Bound>, AuditError> {
    match t.take(&[key]) {
        None => Ok(None),
        Some((_, Conf::Str(s))) => Ok(Some(Bound::Str(s.clone()))),
        Some((_, c)) if c.is_number() => Ok(Num::from_conf(c).map(Bound::Num)),
        Some((_, other)) => Err(t.err(format!(
            "'{key}' must be a number or a string, found {}",
            other.kind()
        ))),
    }
}

fn read_regex(t: &mut Table<'_>) -> Result<Option<Regex>, AuditError> {
    let Some(pattern) = t.string(&["regex"])? else {
        return Ok(None);
    };
    Regex::new(&pattern)
        .map(Some)
        .map_err(|e| t.err(format!("invalid regex /{pattern}/: {e}")))
}

/// Fail when the value lies on the `bad` side of the bound (or cannot be compared).
fn check_bound(
    field: &str,
    value: &ValueRef<'_>,
    bound: &Bound,
    bad: Ordering,
    sign: &str,
) -> Result<(), String> {
    // The bound is rendered only for a finding: the passing path does not format.
    let order = match bound {
        Bound::Num(b) => match Num::from_value(value) {
            Some(v) => v.cmp(*b),
            None => {
                return Err(format!(
                    "{field} = {} is not a number",
                    value::render(value)
                ))
            }
        },
        Bound::Str(b) => match value {
            ValueRef::String(s) => Some(s.as_bytes().cmp(b.as_bytes())),
            _ => {
                return Err(format!(
                    "{field} = {} is not a string",
                    value::render(value)
                ))
            }
        },
    };
    match order {
        Some(o) if o != bad => Ok(()),
        Some(_) => {
            let shown = match bound {
                Bound::Num(b) => b.to_string(),
                Bound::Str(b) => format!("{b:?}"),
            };
            Err(format!(
                "{field} = {} {sign} {} {shown}",
                value::render(value),
                bound_name(bad)
            ))
        }
        None => Err(format!("{field} = {} is NaN", value::render(value))),
    }
}

fn bound_name(bad: Ordering) -> &'static str {
    if bad == Ordering::Less {
        "min"
    } else {
        "max"
    }
}

//! Test helpers: msgpack encoding and an owned update that lends an `AuditInput`.

use rmpv::Value;

use crate::audit_api::{ArrayField, Audit, AuditInput, Field, Verdict};

use super::Auditor;

/// msgpack bytes of a value.
pub(crate) fn mp(v: impl Into<Value>) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &v.into()).expect("encode");
    out
}

pub(crate) fn nil() -> Vec<u8> {
    mp(Value::Nil)
}

/// One heavy array of an update.
pub(crate) struct Arr {
    pub(crate) name: String,
    pub(crate) dtype: String,
    pub(crate) shape: Vec<u64>,
    pub(crate) data: Option<Vec<u8>>,
}

/// An update that owns its fields.
#[derive(Default)]
pub(crate) struct Upd {
    pub(crate) process: String,
    pub(crate) args: Vec<(String, Vec<u8>)>,
    pub(crate) writes: Vec<(String, Vec<u8>)>,
    pub(crate) arrays: Vec<Arr>,
}

impl Upd {
    pub(crate) fn new(process: &str) -> Self {
        Upd {
            process: process.into(),
            ..Upd::default()
        }
    }

    pub(crate) fn arg(mut self, name: &str, value: Vec<u8>) -> Self {
        self.args.push((name.into(), value));
        self
    }

    pub(crate) fn out(mut self, key: &str, value: Vec<u8>) -> Self {
        self.writes.push((key.into(), value));
        self
    }

    pub(crate) fn arr(
        mut self,
        name: &str,
        dtype: &str,
        shape: &[u64],
        data: Option<Vec<u8>>,
    ) -> Self {
        self.arrays.push(Arr {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            data,
        });
        self
    }

    /// Run the auditor's `check` on this update.
    pub(crate) fn check(&self, a: &mut Auditor, now_ms: u64) -> Verdict {
        let args = fields(&self.args);
        let writes = fields(&self.writes);
        let arrays: Vec<ArrayField<'_>> = self
            .arrays
            .iter()
            .map(|x| ArrayField {
                name: &x.name,
                dtype: &x.dtype,
                shape: &x.shape,
                data: x.data.as_deref(),
            })
            .collect();
        let input = AuditInput {
            process: &self.process,
            args: &args,
            writes: &writes,
            arrays: &arrays,
        };
        a.check(&input, now_ms)
    }
}

fn fields(v: &[(String, Vec<u8>)]) -> Vec<Field<'_>> {
    v.iter().map(|(n, b)| Field { name: n, value: b }).collect()
}

pub(crate) fn toml(text: &str) -> Auditor {
    Auditor::from_toml_str(text).unwrap_or_else(|e| panic!("recipe: {e}"))
}

pub(crate) fn is_pass(v: &Verdict) -> bool {
    matches!(v, Verdict::Pass { .. })
}

/// The rejected finding's message, or a panic naming what came instead.
pub(crate) fn rejected(v: &Verdict) -> (&str, Option<&str>) {
    match v {
        Verdict::Reject { finding, blocked } => (finding.message.as_str(), blocked.as_deref()),
        other => panic!("expected Reject, got {other:?}"),
    }
}

pub(crate) fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

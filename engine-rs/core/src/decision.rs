//! Typed decisions and their wire encoding (Decision in docs/PROTOCOL.md).
use std::sync::Arc;

use crate::audit_api::Level;
use crate::msgpack::{put, DecodeResult, Reader};
use crate::update::ErrorInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Committed,
    Rejected,
    Conflict,
    Duplicate,
    Blocked,
    Failed,
    /// Born at or before the de-duplication horizon: cannot be checked, so not committed
    /// (the broker dead-letters it). Not final at the sink: never journalled or remembered.
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Committed => "committed",
            Status::Rejected => "rejected",
            Status::Conflict => "conflict",
            Status::Duplicate => "duplicate",
            Status::Blocked => "blocked",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }

    pub(crate) fn parse(s: &str) -> DecodeResult<Status> {
        Ok(match s {
            "committed" => Status::Committed,
            "rejected" => Status::Rejected,
            "conflict" => Status::Conflict,
            "duplicate" => Status::Duplicate,
            "blocked" => Status::Blocked,
            "failed" => Status::Failed,
            "expired" => Status::Expired,
            _ => return Err("unknown status"),
        })
    }

    /// Final decisions are remembered (de-duplication) and journalled.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Committed | Status::Rejected | Status::Failed)
    }
}

pub(crate) fn parse_level(s: &str) -> DecodeResult<Level> {
    Ok(match s {
        "S" => Level::S,
        "A" => Level::A,
        "B" => Level::B,
        "C" => Level::C,
        "I" => Level::I,
        _ => return Err("unknown level"),
    })
}

/// One decision. Cheap to clone: the task and process names are shared.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub task: Arc<str>,
    pub status: Status,
    pub process: Arc<str>,
    pub attempt: u64,
    pub version: u64,
    pub reason: String,
    pub rule: Option<String>,
    pub level: Option<Level>,
    pub retry_after_ms: u64,
    pub error: Option<Box<ErrorInfo>>,
    pub blocked: bool,
}

impl Decision {
    pub fn new(task: Arc<str>, process: Arc<str>, attempt: u64, status: Status) -> Self {
        Decision {
            task,
            status,
            process,
            attempt,
            version: 0,
            reason: String::new(),
            rule: None,
            level: None,
            retry_after_ms: 0,
            error: None,
            blocked: false,
        }
    }

    /// Start afresh as a decision of `status` for `attempt`, keeping the task and process
    /// names (and the capacity of the reason).
    #[inline]
    pub fn reset(&mut self, attempt: u64, status: Status) {
        (self.status, self.attempt, self.version) = (status, attempt, 0);
        self.reason.clear();
        (self.rule, self.level, self.error) = (None, None, None);
        (self.retry_after_ms, self.blocked) = (0, false);
    }

    /// Append this decision as a msgpack map with every field of PROTOCOL.md (the keys
    /// are written as pre-encoded constants).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        self.encode_as(&self.task, buf);
    }

    /// [`Decision::encode`] with `task` as the task's name.
    pub fn encode_as(&self, task: &str, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"\x8b\xa4task");
        put::str(buf, task);
        buf.extend_from_slice(match self.status {
            Status::Committed => b"\xa6status\xa9committed\xa7process",
            Status::Duplicate => b"\xa6status\xa9duplicate\xa7process",
            _ => b"\xa6status",
        });
        if !matches!(self.status, Status::Committed | Status::Duplicate) {
            put::str(buf, self.status.as_str());
            buf.extend_from_slice(b"\xa7process");
        }
        put::str(buf, &self.process);
        buf.extend_from_slice(b"\xa7attempt");
        put::uint(buf, self.attempt);
        buf.extend_from_slice(b"\xa7version");
        put::uint(buf, self.version);
        if self.reason.is_empty() && self.rule.is_none() && self.level.is_none() {
            buf.extend_from_slice(b"\xa6reason\xa0\xa4rule\xc0\xa5level\xc0\xaeretry_after_ms");
        } else {
            buf.extend_from_slice(b"\xa6reason");
            put::str(buf, &self.reason);
            buf.extend_from_slice(b"\xa4rule");
            put::opt_str(buf, self.rule.as_deref());
            buf.extend_from_slice(b"\xa5level");
            put::opt_str(buf, self.level.map(Level::as_str));
            buf.extend_from_slice(b"\xaeretry_after_ms");
        }
        put::uint(buf, self.retry_after_ms);
        buf.extend_from_slice(b"\xa5error");
        self.encode_error(buf);
        buf.extend_from_slice(if self.blocked {
            b"\xa7blocked\xc3"
        } else {
            b"\xa7blocked\xc2"
        });
    }

    pub(crate) fn encode_error(&self, buf: &mut Vec<u8>) {
        let Some(e) = &self.error else {
            return put::nil(buf);
        };
        put::map_len(buf, 3);
        put::str(buf, "type");
        put::str(buf, &e.kind);
        put::str(buf, "message");
        put::str(buf, &e.message);
        put::str(buf, "traceback");
        put::str(buf, &e.traceback);
    }

    /// Decode a map written by [`Decision::encode`] (used by journal replay).
    pub fn decode(r: &mut Reader<'_>) -> DecodeResult<Decision> {
        let empty: Arc<str> = Arc::from("");
        let mut d = Decision::new(empty.clone(), empty, 0, Status::Committed);
        for _ in 0..r.map_len()? {
            match r.str()? {
                "task" => d.task = Arc::from(r.str()?),
                "status" => d.status = Status::parse(r.str()?)?,
                "process" => d.process = Arc::from(r.str()?),
                "attempt" => d.attempt = r.uint()?,
                "version" => d.version = r.uint()?,
                "reason" => d.reason = r.str()?.to_owned(),
                "rule" => d.rule = opt_str(r)?.map(str::to_owned),
                "level" => d.level = opt_str(r)?.map(parse_level).transpose()?,
                "retry_after_ms" => d.retry_after_ms = r.uint()?,
                "error" => d.error = decode_error(r)?,
                "blocked" => d.blocked = r.bool()?,
                _ => return Err("unknown decision field"),
            }
        }
        Ok(d)
    }
}

/// The details of a final decision beyond its status, version and attempt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detail {
    pub reason: String,
    pub rule: Option<String>,
    pub level: Option<Level>,
    pub error: Option<Box<ErrorInfo>>,
}

pub(crate) fn opt_str<'a>(r: &mut Reader<'a>) -> DecodeResult<Option<&'a str>> {
    if r.try_nil()? {
        return Ok(None);
    }
    r.str().map(Some)
}

pub(crate) fn decode_error(r: &mut Reader<'_>) -> DecodeResult<Option<Box<ErrorInfo>>> {
    if r.try_nil()? {
        return Ok(None);
    }
    let mut e = ErrorInfo {
        kind: String::new(),
        message: String::new(),
        traceback: String::new(),
    };
    for _ in 0..r.map_len()? {
        let slot = match r.str()? {
            "type" => &mut e.kind,
            "message" => &mut e.message,
            "traceback" => &mut e.traceback,
            _ => return Err("unknown error field"),
        };
        *slot = r.str()?.to_owned();
    }
    Ok(Some(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_round_trips() {
        let mut d = Decision::new(Arc::from("t1"), Arc::from("p"), 2, Status::Rejected);
        d.rule = Some("max_x".into());
        d.level = Some(Level::B);
        d.reason = "x too big".into();
        d.error = Some(Box::new(ErrorInfo {
            kind: "ValueError".into(),
            message: "m".into(),
            traceback: "tb".into(),
        }));
        let mut buf = Vec::new();
        d.encode(&mut buf);
        assert_eq!(Decision::decode(&mut Reader::new(&buf)), Ok(d));
    }

    /// The field-by-field encoding the pre-encoded keys must reproduce byte for byte.
    fn encode_plainly(d: &Decision) -> Vec<u8> {
        let mut b = Vec::new();
        put::map_len(&mut b, 11);
        for (k, v) in [("task", &*d.task), ("status", d.status.as_str()), ("process", &*d.process)] {
            put::str(&mut b, k);
            put::str(&mut b, v);
        }
        for (k, v) in [("attempt", d.attempt), ("version", d.version)] {
            put::str(&mut b, k);
            put::uint(&mut b, v);
        }
        put::str(&mut b, "reason");
        put::str(&mut b, &d.reason);
        put::str(&mut b, "rule");
        put::opt_str(&mut b, d.rule.as_deref());
        put::str(&mut b, "level");
        put::opt_str(&mut b, d.level.map(Level::as_str));
        put::str(&mut b, "retry_after_ms");
        put::uint(&mut b, d.retry_after_ms);
        put::str(&mut b, "error");
        d.encode_error(&mut b);
        put::str(&mut b, "blocked");
        put::bool(&mut b, d.blocked);
        b
    }

    #[test]
    fn encoding_matches_the_plain_encoding() {
        let statuses = [
            Status::Committed,
            Status::Rejected,
            Status::Conflict,
            Status::Duplicate,
            Status::Blocked,
            Status::Failed,
        ];
        for (i, status) in statuses.into_iter().enumerate() {
            let mut d = Decision::new(Arc::from("task-1"), Arc::from("proc"), 300, status);
            (d.version, d.blocked, d.retry_after_ms) = (70_000, i % 2 == 0, i as u64 * 8);
            let mut buf = Vec::new();
            d.encode(&mut buf);
            assert_eq!(buf, encode_plainly(&d));
            (d.reason, d.level) = ("why".into(), Some(Level::C));
            buf.clear();
            d.encode(&mut buf);
            assert_eq!(buf, encode_plainly(&d));
        }
    }
}

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

    /// What the de-duplication table keeps of a final decision.
    pub fn to_final(&self) -> Final {
        let plain = self.reason.is_empty() && self.rule.is_none() && self.level.is_none();
        let detail = (!plain || self.error.is_some()).then(|| {
            Box::new(Detail {
                reason: self.reason.clone(),
                rule: self.rule.clone(),
                level: self.level,
                error: self.error.clone(),
            })
        });
        Final {
            process: self.process.clone(),
            attempt: self.attempt,
            version: self.version,
            blocked: self.blocked,
            detail,
        }
    }

    /// Append this decision as a msgpack map with every field of PROTOCOL.md.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        put::map_len(buf, 11);
        put::str(buf, "task");
        put::str(buf, &self.task);
        put::str(buf, "status");
        put::str(buf, self.status.as_str());
        put::str(buf, "process");
        put::str(buf, &self.process);
        put::str(buf, "attempt");
        put::uint(buf, self.attempt);
        put::str(buf, "version");
        put::uint(buf, self.version);
        put::str(buf, "reason");
        put::str(buf, &self.reason);
        put::str(buf, "rule");
        put::opt_str(buf, self.rule.as_deref());
        put::str(buf, "level");
        put::opt_str(buf, self.level.map(Level::as_str));
        put::str(buf, "retry_after_ms");
        put::uint(buf, self.retry_after_ms);
        put::str(buf, "error");
        self.encode_error(buf);
        put::str(buf, "blocked");
        put::bool(buf, self.blocked);
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

/// A final decision as remembered for de-duplication (small: most commits have no detail).
#[derive(Clone, Debug, PartialEq)]
pub struct Final {
    pub process: Arc<str>,
    pub attempt: u64,
    pub version: u64,
    pub blocked: bool,
    pub detail: Option<Box<Detail>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Detail {
    pub reason: String,
    pub rule: Option<String>,
    pub level: Option<Level>,
    pub error: Option<Box<ErrorInfo>>,
}

impl Final {
    /// The answer to a repeated task: the original decision's fields, status "duplicate".
    pub fn duplicate(&self, task: Arc<str>) -> Decision {
        let mut d = Decision::new(task, self.process.clone(), self.attempt, Status::Duplicate);
        (d.version, d.blocked) = (self.version, self.blocked);
        if let Some(x) = &self.detail {
            (d.reason, d.rule, d.level, d.error) =
                (x.reason.clone(), x.rule.clone(), x.level, x.error.clone());
        }
        d
    }
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
}

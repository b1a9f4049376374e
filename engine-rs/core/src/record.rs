//! Journal payloads (docs/JOURNAL.md): one record per batch, holding every final decision of
//! the batch with its update, and control entries (blocks, unblocks, outbox release marks);
//! and their replay into the store, the auditor and the outbox. Records of the first format
//! (one per decision, 10 items) are still read.
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit_api::{Audit, Finding, Level};
use crate::decision::{decode_error, opt_str, parse_level, Decision, Status};
use crate::error::{EngineError, Result};
use crate::msgpack::{put, DecodeResult, Reader};
use crate::outbox::{encode_event, followups, Outbox, Unreleased};
use crate::store::Store;
use crate::update::{decode, Scratch, Update};

/// The record of one batch, built while the batch is decided.
#[derive(Default)]
pub struct RecordWriter {
    entries: Vec<u8>,
    count: usize,
    control: Vec<u8>,
    controls: usize,
    released: Option<u64>,
    released_at: Option<Instant>,
}

/// A release mark alone waits at most this long for a batch record to ride along with.
pub const RELEASE_MARK_DELAY: Duration = Duration::from_secs(1);

impl RecordWriter {
    /// A final decision: `[version, update]` for a commit without notes, else
    /// `[status, version, reason, rule, level, error, blocked, notes, update]`.
    pub fn entry(&mut self, d: &Decision, notes: &[Finding], update: &[u8]) {
        let b = &mut self.entries;
        self.count += 1;
        if d.status == Status::Committed && notes.is_empty() {
            put::array_len(b, 2);
            put::uint(b, d.version);
            b.extend_from_slice(update);
            return;
        }
        put::array_len(b, 9);
        put::str(b, d.status.as_str());
        put::uint(b, d.version);
        put::str(b, &d.reason);
        put::opt_str(b, d.rule.as_deref());
        put::opt_str(b, d.level.map(Level::as_str));
        d.encode_error(b);
        put::bool(b, d.blocked);
        put::array_len(b, notes.len());
        for n in notes {
            put::array_len(b, 3);
            put::str(b, &n.rule);
            put::str(b, n.level.as_str());
            put::str(b, &n.message);
        }
        b.extend_from_slice(update);
    }

    /// `["block", process, reason, at_ms]`.
    pub fn block(&mut self, process: &str, reason: &str, at_ms: u64) {
        let b = &mut self.control;
        self.controls += 1;
        put::array_len(b, 4);
        put::str(b, "block");
        put::str(b, process);
        put::str(b, reason);
        put::uint(b, at_ms);
    }

    /// `["unblock", process]`.
    pub fn unblock(&mut self, process: &str) {
        self.controls += 1;
        put::array_len(&mut self.control, 2);
        put::str(&mut self.control, "unblock");
        put::str(&mut self.control, process);
    }

    /// `["released", version]` (only the highest pending mark is written).
    pub fn released(&mut self, version: u64) {
        self.released = Some(self.released.map_or(version, |v| v.max(version)));
        self.released_at.get_or_insert_with(Instant::now);
    }

    /// Whether `tick` should write now: an unblock at once, a lone release mark only after
    /// RELEASE_MARK_DELAY (under load it goes out with the next batch's record instead).
    pub fn due(&self) -> bool {
        self.controls > 0 || self.released_at.is_some_and(|t| t.elapsed() >= RELEASE_MARK_DELAY)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.controls == 0 && self.released.is_none()
    }

    /// Write the payload `[ts_us, [entry...], [control...]]` and start afresh.
    pub fn write(&mut self, b: &mut Vec<u8>, ts_us: u64) {
        put::array_len(b, 3);
        put::uint(b, ts_us);
        put::array_len(b, self.count);
        b.extend_from_slice(&self.entries);
        put::array_len(b, self.controls + usize::from(self.released.is_some()));
        b.extend_from_slice(&self.control);
        self.released_at = None;
        if let Some(v) = self.released.take() {
            put::array_len(b, 2);
            put::str(b, "released");
            put::uint(b, v);
        }
        self.entries.clear();
        self.control.clear();
        (self.count, self.controls) = (0, 0);
    }
}

/// Rebuilds the engine's memory from the journal, record by record.
pub struct Replay<'e> {
    pub store: &'e mut Store,
    pub audit: &'e mut dyn Audit,
    pub outbox: &'e mut Outbox,
    /// The sink's clock while replaying (a `born_ms` far ahead of it is clamped).
    pub now_ms: u64,
}

impl Replay<'_> {
    pub fn record(&mut self, index: u64, payload: &[u8]) -> Result<()> {
        let corrupt = |reason: &str| EngineError::JournalCorrupt {
            index,
            reason: reason.into(),
        };
        let mut r = Reader::new(payload);
        match r.array_len().map_err(corrupt)? {
            10 => self.legacy(payload).map_err(corrupt),
            3 => self.batch(&mut r).map_err(corrupt),
            _ => Err(corrupt("bad record layout")),
        }
    }

    /// A record of the first format: `[ts_us, status, version, reason, rule, level, error,
    /// blocked, notes, update]`. Its commits count as released (that format had no marks).
    fn legacy(&mut self, payload: &[u8]) -> DecodeResult<()> {
        let mut r = Reader::new(payload);
        r.array_len()?;
        r.uint()?;
        let status = Status::parse(r.str()?)?;
        self.detailed(&mut r, status, None)
    }

    fn batch(&mut self, r: &mut Reader<'_>) -> DecodeResult<()> {
        let ts_ms = r.uint()? / 1000;
        for _ in 0..r.array_len()? {
            match r.array_len()? {
                2 => {
                    let version = r.uint()?;
                    self.apply(Status::Committed, version, r.raw()?, |_| {}, true)?;
                }
                9 => {
                    let status = Status::parse(r.str()?)?;
                    self.detailed(r, status, Some(()))?;
                }
                _ => return Err("bad entry layout"),
            }
        }
        for _ in 0..r.array_len()? {
            self.control(r, ts_ms)?;
        }
        if r.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }

    /// The fields after `status` of a full entry (or a legacy record).
    fn detailed(&mut self, r: &mut Reader<'_>, status: Status, outbox: Option<()>) -> DecodeResult<()> {
        let (version, reason) = (r.uint()?, r.str()?.to_owned());
        let rule = opt_str(r)?.map(str::to_owned);
        let level = opt_str(r)?.map(parse_level).transpose()?;
        let (error, blocked) = (decode_error(r)?, r.bool()?);
        r.skip()?;
        let fill = move |d: &mut Decision| {
            (d.reason, d.rule, d.level, d.error, d.blocked) = (reason, rule, level, error, blocked);
        };
        self.apply(status, version, r.raw()?, fill, outbox.is_some())
    }

    /// Re-apply one final decision and its update.
    fn apply(
        &mut self,
        status: Status,
        version: u64,
        raw: &[u8],
        fill: impl FnOnce(&mut Decision),
        outbox: bool,
    ) -> DecodeResult<()> {
        if !status.is_final() {
            return Err("non-final decision journalled");
        }
        let (mut u, mut s) = (Update::default(), Scratch::default());
        decode(raw, &mut u, &mut s).map_err(|_| "unreadable update")?;
        let (process, pid) = self.store.dedup.intern(u.process);
        let mut d = Decision::new(Arc::from(u.task), process, u.attempt, status);
        d.version = version;
        fill(&mut d);
        if status == Status::Committed {
            if version != self.store.version + 1 {
                return Err("version gap");
            }
            self.store.apply(&s);
            if outbox {
                self.remember(version, &u, &s);
            }
        }
        let dedup = &mut self.store.dedup;
        dedup.observe(u.born_ms, self.now_ms);
        let key = dedup.key(u.task);
        dedup.insert(key, &d, pid);
        Ok(())
    }

    fn remember(&mut self, version: u64, u: &Update<'_>, s: &Scratch<'_>) {
        if version <= self.outbox.released {
            return;
        }
        let mut item = Unreleased {
            version,
            event: Vec::new(),
            followups: Vec::new(),
        };
        encode_event(&mut item.event, version, u, s);
        followups(u, &mut item.followups);
        self.outbox.push(item);
    }

    fn control(&mut self, r: &mut Reader<'_>, ts_ms: u64) -> DecodeResult<()> {
        let n = r.array_len()?;
        match (r.str()?, n) {
            ("block", 4) => {
                let (process, reason) = (r.str()?, r.str()?);
                let at_ms = r.uint().unwrap_or(ts_ms);
                self.audit.restore_block(process, reason, at_ms);
            }
            ("unblock", 2) => {
                self.audit.unblock(r.str()?);
            }
            ("released", 2) => {
                self.outbox.release(r.uint()?);
            }
            _ => return Err("unknown control entry"),
        }
        Ok(())
    }
}

//! The transactional outbox: the commit events (with their signals) and follow-up tasks of
//! committed updates. They are journalled with the commit (the update is in the record) and
//! handed out only after it; after a restart, those committed after the last `released`
//! mark are handed out again (docs/JOURNAL.md, "Outbox").
use std::collections::VecDeque;

use crate::msgpack::{put, Reader};
use crate::update::{Scratch, Update};

/// At most this many commits are kept for re-release after a restart (the newest).
pub const MAX_UNRELEASED: usize = 1 << 20;

/// `{version, task, process, writes: {key: value}, signals: [...]}` from raw bytes.
pub fn encode_event(b: &mut Vec<u8>, version: u64, u: &Update<'_>, s: &Scratch<'_>) {
    b.extend_from_slice(b"\x85\xa7version");
    put::uint(b, version);
    b.extend_from_slice(b"\xa4task");
    put::str(b, u.task);
    b.extend_from_slice(b"\xa7process");
    put::str(b, u.process);
    b.extend_from_slice(b"\xa6writes");
    put::map_len(b, s.data.len() + s.heavy.len());
    for f in &s.data {
        put::str(b, f.name);
        b.extend_from_slice(f.value);
    }
    for h in &s.heavy {
        put::str(b, h.key);
        b.extend_from_slice(h.raw);
    }
    match u.signals {
        Some(raw) => {
            b.extend_from_slice(b"\xa7signals");
            b.extend_from_slice(raw);
        }
        None => b.extend_from_slice(b"\xa7signals\x90"),
    }
}

/// The id of the `index`-th follow-up task of task `parent`: deterministic, so a follow-up
/// released again after a restart is the same task to the broker.
pub fn followup_id(parent: &str, index: usize) -> String {
    format!("{parent}/{index}")
}

/// The follow-up tasks of update `u` as Task maps `{id, process, args}`, appended to `out`.
/// `u.tasks` was checked when the update was decoded.
pub fn followups(u: &Update<'_>, out: &mut Vec<Vec<u8>>) {
    let Some(raw) = u.tasks else { return };
    let mut r = Reader::new(raw);
    let n = r.array_len().unwrap_or(0);
    for index in 0..n {
        let Some((process, args)) = followup(&mut r) else {
            return;
        };
        let mut b = Vec::with_capacity(32 + args.len());
        put::map_len(&mut b, 3);
        put::str(&mut b, "id");
        put::str(&mut b, &followup_id(u.task, index));
        put::str(&mut b, "process");
        put::str(&mut b, process);
        put::str(&mut b, "args");
        b.extend_from_slice(args);
        out.push(b);
    }
}

/// One `{process, args}` map: the process name and the raw args map (`{}` when absent).
fn followup<'a>(r: &mut Reader<'a>) -> Option<(&'a str, &'a [u8])> {
    let (mut process, mut args) = ("", &[0x80u8][..]);
    for _ in 0..r.map_len().ok()? {
        match r.str().ok()? {
            "process" => process = r.str().ok()?,
            "args" => args = r.raw().ok()?,
            _ => r.skip().ok()?,
        }
    }
    Some((process, args))
}

/// One commit still to be released: its version, COMMIT event and follow-up tasks.
pub struct Unreleased {
    pub version: u64,
    pub event: Vec<u8>,
    pub followups: Vec<Vec<u8>>,
}

/// The commits found after the last `released` mark while replaying the journal.
#[derive(Default)]
pub struct Outbox {
    pub released: u64,
    pending: VecDeque<Unreleased>,
    /// Commits left out because more than MAX_UNRELEASED were pending.
    pub overflow: u64,
}

impl Outbox {
    /// Remember a replayed commit (unless it is already released).
    pub fn push(&mut self, item: Unreleased) {
        if item.version <= self.released {
            return;
        }
        if self.pending.len() >= MAX_UNRELEASED {
            self.pending.pop_front();
            self.overflow += 1;
        }
        self.pending.push_back(item);
    }

    /// Everything up to `version` is released. False if that was already known.
    pub fn release(&mut self, version: u64) -> bool {
        if version <= self.released {
            return false;
        }
        self.released = version;
        while self.pending.front().is_some_and(|i| i.version <= version) {
            self.pending.pop_front();
        }
        true
    }

    pub fn pending(&self) -> impl Iterator<Item = &Unreleased> {
        self.pending.iter()
    }
}

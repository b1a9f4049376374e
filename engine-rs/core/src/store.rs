//! Versioned state (key -> (version, msgpack value)) and the de-duplication table, rebuilt
//! from the journal on open.
use std::sync::Arc;

use crate::decision::{decode_error, opt_str, parse_level, Decision, Final, Status};
use crate::error::{EngineError, Result};
use crate::fxhash::FxMap;
use crate::msgpack::{put, Reader};
use crate::update::{decode, Scratch, Update};

pub struct Slot {
    pub version: u64,
    pub value: Vec<u8>,
}

#[derive(Default)]
pub struct Store {
    pub state: FxMap<Box<str>, Slot>,
    pub version: u64,
    pub dedup: FxMap<Arc<str>, Final>,
}

impl Store {
    /// The repeat of an already decided task, if it was decided.
    pub fn duplicate(&self, task: &str) -> Option<Decision> {
        self.dedup
            .get_key_value(task)
            .map(|(k, f)| f.duplicate(k.clone()))
    }

    /// A key's version: the global version at which it was last written; 0 when absent.
    pub fn key_version(&self, key: &str) -> u64 {
        self.state.get(key).map_or(0, |s| s.version)
    }

    pub fn put(&mut self, key: &str, version: u64, value: &[u8]) {
        if let Some(slot) = self.state.get_mut(key) {
            slot.version = version;
            slot.value.clear();
            slot.value.extend_from_slice(value);
        } else {
            self.state.insert(
                key.into(),
                Slot {
                    version,
                    value: value.to_vec(),
                },
            );
        }
    }

    /// Write every key of an update at a new global version.
    pub fn apply(&mut self, s: &Scratch<'_>) -> u64 {
        self.version += 1;
        let v = self.version;
        for f in &s.data {
            self.put(f.name, v, f.value);
        }
        for h in &s.heavy {
            self.put(h.key, v, h.raw);
        }
        v
    }

    /// `{"version": v, "state": {key: [version, value]}}`, keys sorted.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut keys: Vec<(&str, &Slot)> = self.state.iter().map(|(k, s)| (&**k, s)).collect();
        keys.sort_unstable_by_key(|(k, _)| *k);
        let size: usize = keys.iter().map(|(k, s)| k.len() + s.value.len() + 16).sum();
        let mut buf = Vec::with_capacity(size + 32);
        put::map_len(&mut buf, 2);
        put::str(&mut buf, "version");
        put::uint(&mut buf, self.version);
        put::str(&mut buf, "state");
        put::map_len(&mut buf, keys.len());
        for (k, slot) in keys {
            put::str(&mut buf, k);
            put::array_len(&mut buf, 2);
            put::uint(&mut buf, slot.version);
            buf.extend_from_slice(&slot.value);
        }
        buf
    }

    /// Re-apply one journal record (layout in docs/JOURNAL.md): its decision and update.
    pub fn replay(&mut self, index: u64, payload: &[u8]) -> Result<()> {
        let corrupt = |reason: &str| EngineError::JournalCorrupt {
            index,
            reason: reason.into(),
        };
        let (mut u, mut s) = (Update::default(), Scratch::default());
        let d = parse_record(payload, &mut u, &mut s).map_err(corrupt)?;
        if !d.status.is_final() {
            return Err(corrupt("non-final decision journalled"));
        }
        if d.status == Status::Committed {
            if d.version != self.version + 1 {
                return Err(corrupt("version gap"));
            }
            self.apply(&s);
        }
        self.dedup.insert(d.task.clone(), d.to_final());
        Ok(())
    }
}

/// A journal payload: `[ts_us, status, version, reason, rule, level, error, blocked, notes,
/// update]`; the decision's task, process and attempt come from the update.
fn parse_record<'a>(
    payload: &'a [u8],
    u: &mut Update<'a>,
    s: &mut Scratch<'a>,
) -> std::result::Result<Decision, &'static str> {
    let mut r = Reader::new(payload);
    if r.array_len()? != 10 {
        return Err("bad record layout");
    }
    r.uint()?;
    let status = Status::parse(r.str()?)?;
    let (version, reason) = (r.uint()?, r.str()?.to_owned());
    let rule = opt_str(&mut r)?.map(str::to_owned);
    let level = opt_str(&mut r)?.map(parse_level).transpose()?;
    let (error, blocked) = (decode_error(&mut r)?, r.bool()?);
    r.skip()?;
    decode(r.raw()?, u, s).map_err(|_| "unreadable update")?;
    let mut d = Decision::new(Arc::from(u.task), Arc::from(u.process), u.attempt, status);
    (d.version, d.reason, d.rule, d.level, d.error, d.blocked) =
        (version, reason, rule, level, error, blocked);
    Ok(d)
}

//! The de-duplication table: the final decisions journalled, by task id, so that a late
//! repeat of a task gets its original decision back (exactly-once).
//!
//! **The horizon.** The table forgets, or the sink's memory would grow with every task ever
//! run. Each update carries `born_ms`, a time the broker stamps on the task (at intake, and
//! again at its first dispatch when no attempt can have run before) that never grows across
//! its attempts. The table keeps a clock, the highest `born_ms` seen, and stamps each entry
//! with the clock when it is inserted; entries leave in insertion order once their stamp is
//! more than `window_ms` behind the clock, or when there are more than `max_entries`. The
//! horizon is the highest stamp forgotten so far. An earlier decision of a task was
//! stamped at or after the task's `born_ms`, so a task born after the horizon has all its
//! decisions still in the table: its check is exact. A task born at or before the horizon
//! cannot be checked, and is refused (see [`Dedup::expired`]) rather than risk committing
//! it twice. Only the broker's clock is involved, so the sink's clock does not matter,
//! except that a `born_ms` far ahead of it is clamped (a forged one cannot empty the table).
//!
//! A task id is not stored: the table is keyed by a 128-bit SipHash-1-3 of it under a key
//! drawn from the OS's randomness when the engine opens (the table is rebuilt from the
//! journal on every open, so the key never has to persist). Two distinct ids share a key
//! with probability about 2^-128 per pair (n^2 / 2^129 for n ids: ~3e-21 for a billion);
//! since the key is secret, nobody can choose ids that collide. That is the one accepted
//! departure from exact comparison: a colliding id would be answered as a duplicate.
//!
//! An entry is 40 bytes with no heap allocation: the key, the version, the attempt, the
//! process (interned) and an index into a side table holding the rare details (a reason,
//! rule, level or error; an attempt beyond u32). The table ([`crate::keytable`]) keeps at
//! most half its slots full and doubles when full (never past `max_entries`), so an entry
//! costs 80 to 160 bytes of table, plus 16 in the insertion-order queue.
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use crate::decision::{Decision, Detail, Status};
use crate::fxhash::FxMap;
use crate::keytable::{Fin, KeyTable};

/// SipHash-1-3 with a 128-bit output (the reference algorithm, `c = 1`, `d = 3`).
#[derive(Clone, Copy)]
pub struct Sip128 {
    k0: u64,
    k1: u64,
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

impl Sip128 {
    pub fn new(k0: u64, k1: u64) -> Self {
        Sip128 { k0, k1 }
    }

    /// A key nobody outside this process can know (std's OS-seeded `RandomState`).
    pub fn random() -> Self {
        let s = RandomState::new();
        Sip128::new(s.hash_one(0x5eed_u64), s.hash_one(0x5eed_u64 + 1))
    }

    /// SipHash-C-D of `msg`: 128 bits when `wide`, else the 64-bit variant (high half 0).
    #[inline]
    fn sip<const C: usize, const D: usize>(&self, msg: &[u8], wide: bool) -> [u64; 2] {
        let mut v = [
            self.k0 ^ 0x736f_6d65_7073_6575,
            self.k1 ^ 0x646f_7261_6e64_6f6d,
            self.k0 ^ 0x6c79_6765_6e65_7261,
            self.k1 ^ 0x7465_6462_7974_6573,
        ];
        if wide {
            v[1] ^= 0xee;
        }
        let compress = |v: &mut [u64; 4], m: u64| {
            v[3] ^= m;
            (0..C).for_each(|_| round(v));
            v[0] ^= m;
        };
        let mut words = msg.chunks_exact(8);
        for w in &mut words {
            compress(&mut v, u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        last[7] = msg.len() as u8;
        compress(&mut v, u64::from_le_bytes(last));
        v[2] ^= if wide { 0xee } else { 0xff };
        (0..D).for_each(|_| round(&mut v));
        let lo = v[0] ^ v[1] ^ v[2] ^ v[3];
        if !wide {
            return [lo, 0];
        }
        v[1] ^= 0xdd;
        (0..D).for_each(|_| round(&mut v));
        [lo, v[0] ^ v[1] ^ v[2] ^ v[3]]
    }

    #[inline]
    pub fn hash(&self, msg: &[u8]) -> [u64; 2] {
        self.sip::<1, 3>(msg, true)
    }
}

/// A task id's 128-bit key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TaskKey([u64; 2]);

/// `Fin::detail` when there is none.
const NO_DETAIL: u32 = u32::MAX;

/// The details of a final decision that a plain commit does not have.
struct Extra {
    attempt: u64,
    detail: Detail,
}

/// Process names, each stored once, numbered in order of first sight.
#[derive(Default)]
struct Interner {
    ids: FxMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> (Arc<str>, u32) {
        if let Some((k, id)) = self.ids.get_key_value(name) {
            return (k.clone(), *id);
        }
        let (name, id): (Arc<str>, u32) = (Arc::from(name), self.names.len() as u32);
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        (name, id)
    }
}

/// How long the table remembers: both bounds apply; 0 means no bound of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Horizon {
    pub window_ms: u64,
    pub max_entries: usize,
}

/// How far ahead of the sink's own clock a `born_ms` may be before it is clamped.
pub const MAX_SKEW_MS: u64 = 10 * 60 * 1000;

/// The table's figures, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupStats {
    pub entries: usize,
    /// The highest `born_ms` seen.
    pub clock_ms: u64,
    /// Tasks born at or before this cannot be checked (0: nothing forgotten yet).
    pub horizon_ms: u64,
    pub forgotten: u64,
    /// Updates whose `born_ms` was clamped to the sink's clock plus [`MAX_SKEW_MS`].
    pub clamped: u64,
}

/// The table. See the module documentation.
pub struct Dedup {
    sip: Sip128,
    map: KeyTable,
    processes: Interner,
    extras: Vec<Extra>,
    free_extras: Vec<u32>,
    policy: Horizon,
    /// Keys in insertion order, and their stamps run-length encoded (stamp, count).
    order: VecDeque<TaskKey>,
    stamps: VecDeque<(u64, u32)>,
    stats: DedupStats,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new(Sip128::random())
    }
}

impl Dedup {
    pub fn new(sip: Sip128) -> Self {
        Dedup {
            sip,
            map: KeyTable::default(),
            processes: Interner::default(),
            extras: Vec::new(),
            free_extras: Vec::new(),
            policy: Horizon::default(),
            order: VecDeque::new(),
            stamps: VecDeque::new(),
            stats: DedupStats::default(),
        }
    }

    pub fn set_horizon(&mut self, policy: Horizon) {
        self.policy = policy;
        self.forget();
    }

    pub fn stats(&self) -> DedupStats {
        DedupStats {
            entries: self.map.len(),
            ..self.stats
        }
    }

    /// Advance the clock to an update's `born_ms` (clamped to `now_ms` + [`MAX_SKEW_MS`]).
    #[inline]
    pub fn observe(&mut self, born_ms: Option<u64>, now_ms: u64) {
        if let Some(born) = born_ms {
            let limit = now_ms.saturating_add(MAX_SKEW_MS);
            let born = if born > limit {
                self.stats.clamped += 1;
                limit
            } else {
                born
            };
            self.stats.clock_ms = self.stats.clock_ms.max(born);
        }
    }

    /// A task born at or before the horizon: some decision of it may have been forgotten.
    /// (An update without `born_ms` is not checked against the horizon.)
    #[inline]
    pub fn expired(&self, born_ms: Option<u64>) -> Option<u64> {
        let horizon = self.stats.horizon_ms;
        born_ms.filter(|b| horizon > 0 && *b <= horizon).map(|_| horizon)
    }

    /// Start loading the table's memory for `key` (see [`KeyTable::prefetch`]).
    #[inline]
    pub fn prefetch(&self, key: TaskKey) {
        self.map.prefetch(key.0);
    }

    #[inline]
    pub fn key(&self, task: &str) -> TaskKey {
        TaskKey(self.sip.hash(task.as_bytes()))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The shared copy of a process name and its number.
    pub fn intern(&mut self, process: &str) -> (Arc<str>, u32) {
        self.processes.intern(process)
    }

    /// The repeat of an already decided task (`task` is its id, `key` the id's key): the
    /// original decision's fields, status "duplicate".
    pub fn duplicate(&self, key: TaskKey, task: &str) -> Option<Decision> {
        let mut d = Decision::new(Arc::from(task), Arc::from(""), 0, Status::Duplicate);
        self.duplicate_into(key, &mut d).then_some(d)
    }

    /// [`Dedup::duplicate`] into `d` (all but its task name); false (and `d` untouched)
    /// if the task was not decided.
    #[inline]
    pub fn duplicate_into(&self, key: TaskKey, d: &mut Decision) -> bool {
        let Some(f) = self.map.get(key.0) else {
            return false;
        };
        d.process = self.processes.names[f.process as usize].clone();
        d.reset(u64::from(f.attempt), Status::Duplicate);
        (d.version, d.blocked) = (f.version, f.blocked);
        if let Some(x) = self.extras.get(f.detail as usize) {
            d.attempt = x.attempt;
            let x = &x.detail;
            (d.reason, d.rule, d.level, d.error) =
                (x.reason.clone(), x.rule.clone(), x.level, x.error.clone());
        }
        true
    }

    /// Remember final decision `d` (of process number `process`) under `key`.
    #[inline]
    pub fn insert(&mut self, key: TaskKey, d: &Decision, process: u32) {
        let plain =
            d.reason.is_empty() && d.rule.is_none() && d.level.is_none() && d.error.is_none();
        let attempt = u32::try_from(d.attempt).ok().filter(|a| *a != u32::MAX);
        let detail = match attempt {
            Some(_) if plain => NO_DETAIL,
            _ => self.extra(d),
        };
        let fin = Fin {
            version: d.version,
            attempt: attempt.unwrap_or(0),
            process,
            detail,
            blocked: d.blocked,
        };
        if self.map.len() == self.map.capacity() {
            // Double (sized exactly: at most half the slots used), never beyond the entry
            // bound plus the one inserted before the oldest goes. Growing fourfold made a
            // million entries touch 335 MB and stall one batch for 200 ms on its last rehash.
            let mut more = self.map.len().max(1 << 14);
            if self.policy.max_entries > 0 {
                more = more.min((self.policy.max_entries + 1).saturating_sub(self.map.len()).max(1));
            }
            self.map.reserve(more);
        }
        if !self.map.insert(key.0, fin) {
            // Decided already: the first decision stands (callers check `duplicate` first).
            self.free(fin);
            return;
        }
        self.order.push_back(key);
        let clock = self.stats.clock_ms;
        match self.stamps.back_mut() {
            Some((stamp, n)) if *stamp == clock && *n < u32::MAX => *n += 1,
            _ => self.stamps.push_back((clock, 1)),
        }
        self.forget();
    }

    /// Drop the oldest entries past the policy's bounds, raising the horizon.
    fn forget(&mut self) {
        let Horizon { window_ms, max_entries } = self.policy;
        let oldest_kept = if window_ms > 0 {
            self.stats.clock_ms.saturating_sub(window_ms)
        } else {
            0
        };
        while let Some(&(stamp, n)) = self.stamps.front() {
            let over = max_entries > 0 && self.order.len() > max_entries;
            if stamp >= oldest_kept && !over {
                break;
            }
            let Some(key) = self.order.pop_front() else {
                break;
            };
            if n > 1 {
                self.stamps[0].1 -= 1;
            } else {
                self.stamps.pop_front();
            }
            if let Some(fin) = self.map.remove(key.0) {
                self.free(fin);
            }
            self.stats.horizon_ms = self.stats.horizon_ms.max(stamp);
            self.stats.forgotten += 1;
        }
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to(self.order.len() * 2);
        }
    }

    fn free(&mut self, fin: Fin) {
        if fin.detail != NO_DETAIL {
            let x = &mut self.extras[fin.detail as usize];
            x.detail = Detail::default();
            self.free_extras.push(fin.detail);
        }
    }

    fn extra(&mut self, d: &Decision) -> u32 {
        let x = Extra {
            attempt: d.attempt,
            detail: Detail {
                reason: d.reason.clone(),
                rule: d.rule.clone(),
                level: d.level,
                error: d.error.clone(),
            },
        };
        if let Some(i) = self.free_extras.pop() {
            self.extras[i as usize] = x;
            return i;
        }
        self.extras.push(x);
        (self.extras.len() - 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_key() -> Sip128 {
        Sip128::new(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908)
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The first vectors of the reference implementation (key 00..0f, empty message).
        let k = reference_key();
        assert_eq!(k.sip::<2, 4>(b"", false)[0], 0x726f_db47_dd0e_0e31);
        let wide = k.sip::<2, 4>(b"", true);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&wide[0].to_le_bytes());
        bytes[8..].copy_from_slice(&wide[1].to_le_bytes());
        let want = [
            0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
            0x02, 0x93,
        ];
        assert_eq!(bytes, want);
        // SipHash-1-3 (64-bit) of the empty message under a zero key, as other
        // implementations give it: the same code with c = 1, d = 3.
        let zero = Sip128::new(0, 0);
        assert_eq!(zero.sip::<1, 3>(b"", false)[0], 0xd1fb_a762_150c_532c);
    }

    #[test]
    fn every_length_hashes_distinctly() {
        let k = reference_key();
        let msg: Vec<u8> = (0..64).collect();
        let keys: std::collections::HashSet<[u64; 2]> =
            (0..=64).map(|n| k.hash(&msg[..n])).collect();
        assert_eq!(keys.len(), 65);
    }

    #[test]
    fn remembers_plain_and_detailed_decisions() {
        let mut t = Dedup::new(reference_key());
        let (p, pid) = t.intern("proc");
        let mut d = Decision::new(Arc::from("a"), p.clone(), 3, Status::Committed);
        d.version = 7;
        t.insert(t.key("a"), &d, pid);
        let mut r = Decision::new(Arc::from("b"), p, u64::MAX, Status::Rejected);
        (r.reason, r.rule, r.blocked) = ("no".into(), Some("rule".into()), true);
        t.insert(t.key("b"), &r, pid);
        let a = t.duplicate(t.key("a"), "a").expect("a");
        assert_eq!(
            (a.status, a.version, a.attempt, &*a.process),
            (Status::Duplicate, 7, 3, "proc")
        );
        let b = t.duplicate(t.key("b"), "b").expect("b");
        assert_eq!(
            (b.attempt, b.reason.as_str(), b.rule.as_deref(), b.blocked),
            (u64::MAX, "no", Some("rule"), true)
        );
        assert!(t.duplicate(t.key("c"), "c").is_none());
        assert_eq!(t.len(), 2);
    }

    fn commit(t: &mut Dedup, id: &str, born: u64) {
        assert!(t.expired(Some(born)).is_none(), "{id} born {born} expired");
        commit_unchecked(t, id, born);
    }

    #[test]
    fn the_window_forgets_in_order_and_raises_the_horizon() {
        let mut t = Dedup::new(reference_key());
        t.set_horizon(Horizon { window_ms: 100, max_entries: 0 });
        commit(&mut t, "a", 1_000);
        commit(&mut t, "b", 1_050);
        commit(&mut t, "c", 1_100);
        assert_eq!((t.len(), t.stats().horizon_ms), (3, 0)); // a is exactly 100 behind: kept
        commit(&mut t, "d", 1_101);
        assert!(t.duplicate(t.key("a"), "a").is_none());
        assert!(t.duplicate(t.key("b"), "b").is_some());
        let st = t.stats();
        assert_eq!((st.entries, st.horizon_ms, st.forgotten, st.clock_ms), (3, 1_000, 1, 1_101));
        // A repeat of "a" (born 1000) can no longer be checked; a task born later can.
        assert_eq!(t.expired(Some(1_000)), Some(1_000));
        assert_eq!(t.expired(Some(1_001)), None);
        assert_eq!(t.expired(None), None);
    }

    #[test]
    fn the_table_never_grows_past_the_entry_bound() {
        let mut t = Dedup::new(reference_key());
        t.set_horizon(Horizon { window_ms: 0, max_entries: 100 });
        for i in 0..1_000u64 {
            commit(&mut t, &format!("t{i}"), 10 + i);
        }
        assert_eq!((t.len(), t.map.capacity()), (100, 101));
        assert!(t.duplicate(t.key("t999"), "t999").is_some());
    }

    #[test]
    fn the_entry_bound_forgets_the_oldest() {
        let mut t = Dedup::new(reference_key());
        t.set_horizon(Horizon { window_ms: 0, max_entries: 2 });
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            commit(&mut t, id, 10 + i as u64);
        }
        assert_eq!(t.len(), 2);
        assert!(t.duplicate(t.key("c"), "c").is_some() && t.duplicate(t.key("b"), "b").is_none());
        assert_eq!(t.stats().horizon_ms, 11);
    }

    #[test]
    fn a_forgotten_task_born_after_the_horizon_is_never_one_that_was_forgotten() {
        // Tasks born out of order (a long queue, retries): whatever is forgotten, every
        // task born after the horizon still finds its decision.
        let mut t = Dedup::new(reference_key());
        t.set_horizon(Horizon { window_ms: 50, max_entries: 40 });
        let mut born = Vec::new();
        for i in 0..500u64 {
            let b = 1_000 + (i * 7919) % 300 + i; // jittered, slowly rising
            commit_unchecked(&mut t, &format!("t{i}"), b);
            born.push(b);
            let h = t.stats().horizon_ms;
            for (j, b) in born.iter().enumerate() {
                if *b > h {
                    let id = format!("t{j}");
                    assert!(t.duplicate(t.key(&id), &id).is_some(), "t{j} born {b}, horizon {h}");
                }
            }
        }
        assert!(t.stats().forgotten > 400);
    }

    fn commit_unchecked(t: &mut Dedup, id: &str, born: u64) {
        let (p, pid) = t.intern("proc");
        t.observe(Some(born), born);
        let d = Decision::new(Arc::from(id), p, 1, Status::Committed);
        t.insert(t.key(id), &d, pid);
    }

    #[test]
    fn details_of_forgotten_entries_are_reused_and_far_future_stamps_clamped() {
        let mut t = Dedup::new(reference_key());
        t.set_horizon(Horizon { window_ms: 0, max_entries: 1 });
        let (p, pid) = t.intern("proc");
        for i in 0..100 {
            let id = format!("r{i}");
            let mut d = Decision::new(Arc::from(id.as_str()), p.clone(), 1, Status::Rejected);
            d.reason = format!("no {i}");
            t.insert(t.key(&id), &d, pid);
        }
        assert_eq!(t.extras.len(), 2, "freed details are reused");
        assert_eq!(t.duplicate(t.key("r99"), "r99").unwrap().reason, "no 99");
        t.observe(Some(u64::MAX), 5);
        assert_eq!((t.stats().clock_ms, t.stats().clamped), (5 + MAX_SKEW_MS, 1));
    }
}

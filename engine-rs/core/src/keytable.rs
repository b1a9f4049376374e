//! The de-duplication table's map from a task key (128 bits of a secret-keyed hash, so
//! uniformly spread) to what is kept of its final decision: open addressing with linear
//! probing and backward-shift deletion, at most half full.
//!
//! Why not `HashMap`: with a million entries the table is far larger than the caches, so
//! every new task's lookup and insert miss them. Here the slot of a key is known before the
//! lookup, so the engine prefetches it while it decodes the update before (`prefetch`).

/// What is kept of one final decision (its slot stores the key next to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fin {
    pub version: u64,
    pub attempt: u32,
    pub process: u32,
    pub detail: u32,
    pub blocked: bool,
}

/// Words per slot: `[key0, key1, version, attempt | process << 32, detail | flags << 32]`.
const WORDS: usize = 5;
const OCCUPIED: u64 = 1 << 32;
const BLOCKED: u64 = 2 << 32;

#[derive(Default)]
pub(crate) struct KeyTable {
    /// `slots * WORDS` words, zeroed (all slots empty) by the allocator.
    words: Vec<u64>,
    /// How many slots (any number: a key's home is picked by multiply-shift, so the table
    /// can be sized to exactly what it needs).
    slots: usize,
    len: usize,
}

impl KeyTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// How many entries fit before the table must grow (half its slots).
    pub fn capacity(&self) -> usize {
        self.words.len() / WORDS / 2
    }

    #[inline]
    fn home(&self, key: [u64; 2]) -> usize {
        ((u128::from(key[0]) * self.slots as u128) >> 64) as usize
    }

    #[inline]
    fn after(&self, i: usize) -> usize {
        if i + 1 == self.slots {
            0
        } else {
            i + 1
        }
    }

    #[inline]
    fn slot(&self, i: usize) -> &[u64] {
        &self.words[i * WORDS..(i + 1) * WORDS]
    }

    /// Start loading the cache lines where `key` lives (or would be inserted).
    #[inline]
    pub fn prefetch(&self, key: [u64; 2]) {
        #[cfg(target_arch = "x86_64")]
        if !self.words.is_empty() {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let at = self.home(key) * WORDS;
            let p = self.words[at..].as_ptr().cast::<i8>();
            // SAFETY: a prefetch is a hint that never faults and changes no memory; both
            // addresses are inside or just past this table's allocation (a slot spans at
            // most two cache lines).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(WORDS * 8 - 1));
            }
        }
    }

    /// The slot holding `key`, or the empty slot that ends its probe sequence.
    #[inline]
    fn find(&self, key: [u64; 2]) -> (usize, bool) {
        let mut i = self.home(key);
        loop {
            let s = self.slot(i);
            if s[4] & OCCUPIED == 0 {
                return (i, false);
            }
            if s[0] == key[0] && s[1] == key[1] {
                return (i, true);
            }
            i = self.after(i);
        }
    }

    #[inline]
    pub fn get(&self, key: [u64; 2]) -> Option<Fin> {
        if self.len == 0 {
            return None;
        }
        match self.find(key) {
            (i, true) => Some(unpack(self.slot(i))),
            _ => None,
        }
    }

    /// Insert `key` unless present; false if it was (the table is left as it was).
    #[inline]
    pub fn insert(&mut self, key: [u64; 2], fin: Fin) -> bool {
        if self.len + 1 > self.capacity() {
            self.reserve(1);
        }
        let (i, found) = self.find(key);
        if found {
            return false;
        }
        let flags = OCCUPIED | if fin.blocked { BLOCKED } else { 0 };
        self.words[i * WORDS..(i + 1) * WORDS].copy_from_slice(&[
            key[0],
            key[1],
            fin.version,
            u64::from(fin.attempt) | u64::from(fin.process) << 32,
            u64::from(fin.detail) | flags,
        ]);
        self.len += 1;
        true
    }

    /// Remove `key`; what was kept of it, if it was there.
    pub fn remove(&mut self, key: [u64; 2]) -> Option<Fin> {
        if self.len == 0 {
            return None;
        }
        let (mut hole, true) = self.find(key) else {
            return None;
        };
        let fin = unpack(self.slot(hole));
        // Backward-shift deletion: move later members of the probe run into the hole
        // (each only towards its home), so no lookup ever stops early.
        let mut j = hole;
        loop {
            j = self.after(j);
            let s = self.slot(j);
            if s[4] & OCCUPIED == 0 {
                break;
            }
            let home = self.home([s[0], s[1]]);
            // Movable if its home is not cyclically within (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.words.copy_within(j * WORDS..(j + 1) * WORDS, hole * WORDS);
                hole = j;
            }
        }
        self.words[hole * WORDS..(hole + 1) * WORDS].fill(0);
        self.len -= 1;
        Some(fin)
    }

    /// Make room for `additional` more entries.
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want <= self.capacity() {
            return;
        }
        let slots = want.saturating_mul(2).max(16);
        let old = std::mem::replace(&mut self.words, zeroed(slots * WORDS));
        (self.slots, self.len) = (slots, 0);
        for s in old.chunks_exact(WORDS) {
            if s[4] & OCCUPIED != 0 {
                let (i, _) = self.find([s[0], s[1]]);
                self.words[i * WORDS..(i + 1) * WORDS].copy_from_slice(s);
                self.len += 1;
            }
        }
    }
}

#[inline]
fn unpack(s: &[u64]) -> Fin {
    Fin {
        version: s[2],
        attempt: s[3] as u32,
        process: (s[3] >> 32) as u32,
        detail: s[4] as u32,
        blocked: s[4] & BLOCKED != 0,
    }
}

/// `words` zeroed words, from the allocator's zeroed memory: fresh pages are not written
/// here. (Advising huge pages for a large table made the benchmark slower on the 2-core
/// VM, 0.85 -> 0.6-0.66 M commits/s: the faults then zero and compact 2 MiB at a time.)
fn zeroed(words: usize) -> Vec<u64> {
    vec![0u64; words]
}
#[cfg(test)]
mod tests {
    use super::*;

    fn fin(v: u64) -> Fin {
        Fin {
            version: v,
            attempt: v as u32 ^ 7,
            process: 3,
            detail: u32::MAX,
            blocked: v % 3 == 0,
        }
    }

    /// Against a HashMap, with keys crowded onto few homes (long runs that wrap around the
    /// end), inserts, repeats and removals interleaved.
    #[test]
    fn behaves_like_a_map() {
        let mut t = KeyTable::default();
        let mut m = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Homes concentrate on the last few slots and slot 0..3: runs wrap.
            let key = [(x % 8).wrapping_sub(4), x % 600];
            if x % 5 < 3 {
                let new = !m.contains_key(&key);
                assert_eq!(t.insert(key, fin(step)), new);
                m.entry(key).or_insert(fin(step));
            } else {
                assert_eq!(t.remove(key), m.remove(&key));
            }
            assert_eq!(t.len(), m.len());
            if step % 997 == 0 {
                for (k, f) in &m {
                    assert_eq!(t.get(*k), Some(*f));
                }
            }
        }
        for (k, f) in &m {
            assert_eq!(t.get(*k), Some(*f));
            t.prefetch(*k);
        }
        assert_eq!(t.get([1, 2, ]).is_some(), m.contains_key(&[1, 2]));
    }
}

//! Versioned state (key -> (version, msgpack value)) and the de-duplication table, rebuilt
//! from the journal on open.
use crate::dedup::Dedup;
use crate::fxhash::FxMap;
use crate::msgpack::put;
use crate::update::Scratch;

pub struct Slot {
    pub version: u64,
    pub value: Vec<u8>,
}

#[derive(Default)]
pub struct Store {
    pub state: FxMap<Box<str>, Slot>,
    pub version: u64,
    pub dedup: Dedup,
}

impl Store {
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
}

//! Read-only access to the bytes of a heavy array in a shared-memory segment (layout:
//! docs/HEAVY.md). The descriptor is untrusted: the name, header, generation and bounds are
//! all checked against the file itself before anything is mapped.
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

/// The segment header: magic, generation (u64 LE), capacity (u64 LE), padded to 4 KiB.
pub const HEADER: u64 = 4096;
pub const MAGIC: &[u8; 8] = b"PLHEAVY1";
const NAME_MAX: usize = 255;

/// The bytes of one array, mapped read-only from its segment.
pub struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// A segment name is one plain file name in the namespace directory.
fn check_name(seg: &str) -> Result<(), String> {
    let plain = !seg.is_empty()
        && seg.len() <= NAME_MAX
        && !seg.starts_with('.')
        && !seg.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(format!("bad segment name {:?}", truncated(seg)))
    }
}

fn truncated(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(i, _)| &s[..i])
}

/// Open `dir/seg` (no symlinks), check it is a regular file whose header names generation
/// `gen`, and that `[off, off + len)` lies in its data area; map those bytes read-only.
/// `off` is the byte offset in the file (at least the header's size), as the allocator
/// (pipeline/heavy/allocator.py) writes it.
pub fn map_segment(dir: &Path, seg: &str, off: u64, len: u64, gen: u64) -> Result<Mapped, String> {
    check_name(seg)?;
    let fail = |what: &str, e: std::io::Error| format!("segment {seg}: {what}: {e}");
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(seg))
        .map_err(|e| fail("open", e))?;
    let meta = file.metadata().map_err(|e| fail("stat", e))?;
    if !meta.file_type().is_file() {
        return Err(format!("segment {seg} is not a regular file"));
    }
    let mut header = [0u8; 24];
    file.read_exact(&mut header).map_err(|e| fail("read header", e))?;
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(w)
    };
    if &header[..8] != MAGIC {
        return Err(format!("segment {seg} has no PLHEAVY1 header"));
    }
    if word(8) != gen {
        return Err(format!(
            "stale generation: descriptor has gen {gen}, segment {seg} is at gen {}",
            word(8)
        ));
    }
    let data_end = HEADER.saturating_add(word(16)).min(meta.len());
    let end = off.checked_add(len).ok_or("off + len overflows")?;
    if off < HEADER || end > data_end {
        return Err(format!(
            "bytes [{off}, {end}) are outside the data area [{HEADER}, {data_end}) of segment {seg}"
        ));
    }
    if len == 0 {
        return Ok(Mapped { map: None });
    }
    let size = usize::try_from(len).map_err(|_| "array too large to map".to_string())?;
    // SAFETY: the mapping is read-only and private to this call; its bounds were checked
    // against the file's size above. Another process of the same uid could still truncate
    // or rewrite the file while it is mapped (SIGBUS, or bytes changing under the scan);
    // docs/HEAVY.md states this limit of same-uid trust.
    let map = unsafe { MmapOptions::new().offset(off).len(size).map(&file) };
    map.map(|m| Mapped { map: Some(m) })
        .map_err(|e| fail("mmap", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path, name: &str, gen: u64, cap: u64, data: &[u8]) {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&gen.to_le_bytes());
        b.extend_from_slice(&cap.to_le_bytes());
        b.resize(HEADER as usize, 0);
        b.extend_from_slice(data);
        b.resize((HEADER + cap) as usize, 0);
        std::fs::write(dir.join(name), b).unwrap();
    }

    #[test]
    fn maps_exactly_the_described_bytes() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), "s", 3, 4096, b"abcdefgh");
        let m = map_segment(dir.path(), "s", HEADER + 2, 4, 3).unwrap();
        assert_eq!(m.bytes(), b"cdef");
        assert_eq!(map_segment(dir.path(), "s", HEADER, 0, 3).unwrap().bytes(), b"");
    }

    #[test]
    fn forged_descriptors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), "s", 3, 4096, b"abcdefgh");
        std::fs::write(dir.path().join("junk"), vec![0u8; 8192]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("s"), dir.path().join("link")).unwrap();
        let p = dir.path();
        let cases = [
            (map_segment(p, "../s", HEADER, 8, 3), "bad segment name"),
            (map_segment(p, "", HEADER, 8, 3), "bad segment name"),
            (map_segment(p, "missing", HEADER, 8, 3), "open"),
            (map_segment(p, "link", HEADER, 8, 3), "open"),
            (map_segment(p, "junk", HEADER, 8, 3), "no PLHEAVY1 header"),
            (map_segment(p, "s", HEADER, 8, 2), "stale generation"),
            (map_segment(p, "s", 0, 8, 3), "outside the data area"),
            (map_segment(p, "s", HEADER + 4090, 8, 3), "outside the data area"),
            (map_segment(p, "s", u64::MAX - 2, 8, 3), "overflows"),
        ];
        for (got, want) in cases {
            let err = got.err().expect("refused");
            assert!(err.contains(want), "{err} does not say {want}");
        }
    }
}

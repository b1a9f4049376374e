//! The append-only, checksummed, hash-chained journal (byte format: docs/JOURNAL.md).
//!
//! A journal is a directory of segment files `<first record index, 20 digits>.seg`, each
//! starting with the 8-byte magic `PLJRNL01`, then records:
//! `[u32 LE len][u32 LE !len][u32 LE crc32(payload)][32-byte prev hash][payload]`,
//! where `prev` is the hash of the previous record (zeros for the first one) and a record's
//! hash is `blake3(prev || payload)`.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};

pub const MAGIC: &[u8; 8] = b"PLJRNL01";
pub const HEADER: usize = 44;
pub const MAX_RECORD: usize = 256 << 20;
pub const SEGMENT_MAX: u64 = 64 << 20;

/// When appended batches are forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Interval(Duration),
    Never,
}

/// Why a scan stopped early.
#[derive(Debug, PartialEq, Eq)]
enum Problem {
    /// The last record is incomplete (a crash mid-write): safe to cut off.
    Torn,
    /// A complete record is damaged, or an incomplete one sits mid-journal.
    Corrupt(String),
}

struct Scan {
    records: u64,
    head: [u8; 32],
    /// The last segment and how many of its bytes are sound.
    last: Option<(PathBuf, u64)>,
    problem: Option<(u64, Problem)>,
}

fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| EngineError::io("read journal dir", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    out.sort();
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The next record's hash from the previous one and the payload.
pub fn chain(prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(payload);
    *h.finalize().as_bytes()
}

/// Check one record at the start of `b`; returns its payload.
fn check_record<'a>(b: &'a [u8], head: &[u8; 32]) -> std::result::Result<&'a [u8], Problem> {
    if b.len() < HEADER {
        return Err(Problem::Torn);
    }
    let len = u32_at(b, 0);
    if u32_at(b, 4) != !len || len as usize > MAX_RECORD {
        return Err(Problem::Corrupt("bad length field".into()));
    }
    let payload = b.get(HEADER..HEADER + len as usize).ok_or(Problem::Torn)?;
    if crc32fast::hash(payload) != u32_at(b, 8) {
        return Err(Problem::Corrupt("checksum mismatch".into()));
    }
    if b[12..HEADER] != head[..] {
        return Err(Problem::Corrupt("hash chain broken".into()));
    }
    Ok(payload)
}

/// Walk every record of every segment, calling `visit(index, payload)` for each sound one.
fn scan(dir: &Path, visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<Scan> {
    let segs = segments(dir)?;
    let mut s = Scan {
        records: 0,
        head: [0; 32],
        last: None,
        problem: None,
    };
    for (i, path) in segs.iter().enumerate() {
        let bytes = fs::read(path).map_err(|e| EngineError::io("read segment", e))?;
        let (sound, problem) = scan_segment(&bytes, &mut s, visit)?;
        s.last = Some((path.clone(), sound as u64));
        if let Some(p) = problem {
            let sealed = i + 1 < segs.len();
            let p = match p {
                Problem::Torn if sealed => {
                    Problem::Corrupt("truncated record in a sealed segment".into())
                }
                p => p,
            };
            s.problem = Some((s.records, p));
            break;
        }
    }
    Ok(s)
}

/// Returns the sound length of the segment and the problem that ended it, if any.
fn scan_segment(
    bytes: &[u8],
    s: &mut Scan,
    visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<(usize, Option<Problem>)> {
    if bytes.len() < MAGIC.len() {
        return Ok((0, Some(Problem::Torn)));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Ok((0, Some(Problem::Corrupt("bad segment magic".into()))));
    }
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let payload = match check_record(&bytes[pos..], &s.head) {
            Ok(p) => p,
            Err(problem) => return Ok((pos, Some(problem))),
        };
        visit(s.records, payload)?;
        s.head = chain(&s.head, payload);
        s.records += 1;
        pos += HEADER + payload.len();
    }
    Ok((pos, None))
}

/// `verify_journal`: (records_ok, first_bad_index, reason).
pub fn verify(dir: &Path) -> Result<(u64, Option<u64>, Option<String>)> {
    let s = scan(dir, &mut |_, _| Ok(()))?;
    Ok(match s.problem {
        None => (s.records, None, None),
        Some((i, Problem::Torn)) => (
            s.records,
            Some(i),
            Some("torn tail (incomplete record)".into()),
        ),
        Some((i, Problem::Corrupt(why))) => (s.records, Some(i), Some(why)),
    })
}

/// An open journal, positioned at its end.
pub struct Journal {
    dir: PathBuf,
    file: File,
    seg_len: u64,
    head: [u8; 32],
    records: u64,
    buf: Vec<u8>,
    policy: Fsync,
    last_sync: Instant,
    dirty: bool,
}

impl Journal {
    /// Open or create the journal in `dir`, verify it, cut a torn tail, and replay every
    /// record through `visit(index, payload)`.
    pub fn open(
        dir: &Path,
        policy: Fsync,
        visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<Journal> {
        fs::create_dir_all(dir).map_err(|e| EngineError::io("create journal dir", e))?;
        let s = scan(dir, visit)?;
        if let Some((index, Problem::Corrupt(reason))) = s.problem {
            return Err(EngineError::JournalCorrupt { index, reason });
        }
        let (file, seg_len) = match &s.last {
            Some((path, sound)) => reopen_segment(path, *sound)?,
            None => new_segment(dir, 0)?,
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            file,
            seg_len,
            head: s.head,
            records: s.records,
            buf: Vec::with_capacity(1 << 16),
            policy,
            last_sync: Instant::now(),
            dirty: false,
        })
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Append one record to the pending batch; `write` appends the payload.
    pub fn append(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.resize(start + HEADER, 0);
        write(&mut self.buf);
        let payload = &self.buf[start + HEADER..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        let next = chain(&self.head, payload);
        let header = &mut self.buf[start..start + HEADER];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&(!len).to_le_bytes());
        header[8..12].copy_from_slice(&crc.to_le_bytes());
        header[12..HEADER].copy_from_slice(&self.head);
        self.head = next;
        self.records += 1;
    }

    /// Group commit: one write() for everything appended since the last call, then fsync
    /// as the policy says.
    pub fn commit(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return self.tick();
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| EngineError::io("write journal", e))?;
        self.seg_len += self.buf.len() as u64;
        self.buf.clear();
        self.dirty = true;
        match self.policy {
            Fsync::Always => self.sync()?,
            _ => self.tick()?,
        }
        if self.seg_len >= SEGMENT_MAX {
            self.roll()?;
        }
        Ok(())
    }

    /// fsync if the interval policy is due.
    pub fn tick(&mut self) -> Result<()> {
        match self.policy {
            Fsync::Interval(every) if self.dirty && self.last_sync.elapsed() >= every => {
                self.sync()
            }
            _ => Ok(()),
        }
    }

    /// Force everything written so far to disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| EngineError::io("fsync journal", e))?;
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Seal the current segment and start the next one.
    fn roll(&mut self) -> Result<()> {
        self.sync()?;
        let (file, len) = new_segment(&self.dir, self.records)?;
        self.file = file;
        self.seg_len = len;
        Ok(())
    }
}

fn reopen_segment(path: &Path, sound: u64) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| EngineError::io("open segment", e))?;
    let len = file
        .metadata()
        .map_err(|e| EngineError::io("stat segment", e))?
        .len();
    if len != sound {
        file.set_len(sound)
            .map_err(|e| EngineError::io("truncate torn tail", e))?;
        file.sync_all()
            .map_err(|e| EngineError::io("fsync segment", e))?;
    }
    drop(file);
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| EngineError::io("open segment", e))?;
    if sound < MAGIC.len() as u64 {
        file.write_all(MAGIC)
            .map_err(|e| EngineError::io("write segment magic", e))?;
        return Ok((file, MAGIC.len() as u64));
    }
    Ok((file, sound))
}

fn new_segment(dir: &Path, first: u64) -> Result<(File, u64)> {
    let path = dir.join(format!("{first:020}.seg"));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| EngineError::io("create segment", e))?;
    file.write_all(MAGIC)
        .map_err(|e| EngineError::io("write segment magic", e))?;
    file.sync_all()
        .map_err(|e| EngineError::io("fsync segment", e))?;
    sync_dir(dir)?;
    Ok((file, MAGIC.len() as u64))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::io("fsync journal dir", e))
}

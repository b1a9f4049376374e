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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
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

/// What the journal thread is asked to do and what it last did.
#[derive(Default)]
struct SyncState {
    /// A segment to fsync; taken by the thread.
    want: Option<Arc<File>>,
    /// An fsync is running on the thread.
    busy: bool,
    /// The last background fsync failed: reported by the journal's next call.
    failed: Option<std::io::Error>,
    stop: bool,
}

/// The journal thread of the `interval` policy: it runs the fsync that falls due, so the
/// batch that made it due does not wait for the disk. At most one fsync is in flight.
struct Syncer {
    shared: Arc<(Mutex<SyncState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<SyncState>) -> MutexGuard<'_, SyncState> {
    // The thread never panics while holding the lock; recover the state if it did.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Syncer {
    fn start() -> Result<Syncer> {
        let shared = Arc::new((Mutex::new(SyncState::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("journal-fsync".into())
            .spawn(move || Syncer::run(&theirs))
            .map_err(|e| EngineError::io("start journal thread", e))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    fn run(shared: &(Mutex<SyncState>, Condvar)) {
        let (m, cv) = shared;
        let mut st = lock(m);
        loop {
            if let Some(file) = st.want.take() {
                st.busy = true;
                drop(st);
                let res = file.sync_data();
                st = lock(m);
                st.busy = false;
                if let Err(e) = res {
                    st.failed.get_or_insert(e);
                }
                cv.notify_all();
            } else if st.stop {
                return;
            } else {
                st = cv.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }

    /// Hand `file` to the thread unless an fsync is already in flight (it will be asked
    /// again at the next tick). Returns whether it was handed over.
    fn request(&self, file: &Arc<File>) -> Result<bool> {
        let (m, cv) = &*self.shared;
        let mut st = lock(m);
        Self::check(&mut st)?;
        if st.busy || st.want.is_some() {
            return Ok(false);
        }
        st.want = Some(Arc::clone(file));
        cv.notify_all();
        Ok(true)
    }

    /// Wait until no fsync is pending or running; its error, if it failed.
    fn wait(&self) -> Result<()> {
        let (m, cv) = &*self.shared;
        let mut st = lock(m);
        while st.busy || st.want.is_some() {
            st = cv.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Self::check(&mut st)
    }

    fn check(st: &mut SyncState) -> Result<()> {
        match st.failed.take() {
            Some(e) => Err(EngineError::io("fsync journal (journal thread)", e)),
            None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        lock(&self.shared.0).stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An open journal, positioned at its end.
pub struct Journal {
    dir: PathBuf,
    /// Shared with the journal thread, which fsyncs it (`sync_data` and writes take `&File`).
    file: Arc<File>,
    syncer: Option<Syncer>,
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
        let syncer = match policy {
            Fsync::Interval(_) => Some(Syncer::start()?),
            _ => None,
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            syncer,
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
        (&*self.file)
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

    /// If the interval policy is due, hand the fsync to the journal thread (everything
    /// written so far is covered by it); report a failed background fsync.
    pub fn tick(&mut self) -> Result<()> {
        let Some(syncer) = &self.syncer else {
            return Ok(());
        };
        match self.policy {
            Fsync::Interval(every) if self.dirty && self.last_sync.elapsed() >= every => {
                if syncer.request(&self.file)? {
                    self.last_sync = Instant::now();
                    self.dirty = false;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Force everything written so far to disk (after any background fsync in flight).
    pub fn sync(&mut self) -> Result<()> {
        if let Some(syncer) = &self.syncer {
            syncer.wait()?;
        }
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
        self.file = Arc::new(file);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With `interval`, due fsyncs run on the journal thread while batches keep coming; a
    /// sync waits for it, and every record is there on reopen.
    #[test]
    fn interval_fsync_runs_on_the_journal_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut noop = |_: u64, _: &[u8]| Ok(());
        let mut j = Journal::open(dir.path(), Fsync::Interval(Duration::ZERO), &mut noop).unwrap();
        assert!(j.syncer.is_some());
        for i in 0..500u32 {
            j.append(|b| b.extend_from_slice(&i.to_le_bytes()));
            j.commit().unwrap();
            j.tick().unwrap();
        }
        j.sync().unwrap();
        assert!(!j.dirty);
        let st = lock(&j.syncer.as_ref().unwrap().shared.0);
        assert!(!st.busy && st.want.is_none() && st.failed.is_none());
        drop(st);
        drop(j);
        let mut seen = Vec::new();
        let mut visit = |i: u64, p: &[u8]| {
            seen.push((i, u32::from_le_bytes(p.try_into().unwrap())));
            Ok(())
        };
        let j = Journal::open(dir.path(), Fsync::Always, &mut visit).unwrap();
        assert!(j.syncer.is_none());
        assert_eq!(seen, (0..500).map(|i| (u64::from(i), i)).collect::<Vec<_>>());
    }

    /// A failed background fsync is reported by the journal's next call.
    #[test]
    fn background_fsync_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut noop = |_: u64, _: &[u8]| Ok(());
        let mut j = Journal::open(dir.path(), Fsync::Interval(Duration::ZERO), &mut noop).unwrap();
        lock(&j.syncer.as_ref().unwrap().shared.0).failed =
            Some(std::io::Error::other("disk gone"));
        assert!(j.sync().is_err());
        assert!(j.sync().is_ok());
    }
}

//! The decision pipeline: dedup -> admit -> error -> contract -> audit -> CAS -> commit,
//! with one group commit to the journal per batch.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit_api::{ArrayField, Audit, AuditInput, Failure, Finding, Verdict};
use crate::decision::{Decision, Status};
use crate::dedup::{DedupStats, Horizon, TaskKey};
use crate::error::{EngineError, Result};
use crate::fxhash::FxMap;
use crate::heavy::{map_segment, Mapped};
use crate::index::{IndexBuilder, Outputs};
use crate::journal::{Fsync, Journal};
use crate::msgpack::{put, Reader};
use crate::outbox::{encode_event, followups, Outbox};
use crate::record::{RecordWriter, Replay};
use crate::store::Store;
use crate::update::{FrameUpdates, Loc, Malformed, Scratch, Update};

/// Engine options.
#[derive(Clone, Debug)]
pub struct Config {
    pub fsync: Fsync,
    /// Strict mode: an update's `base` must equal the global version.
    pub strict: bool,
    /// The heavy namespace directory (`/dev/shm/pipeline-<ns>`): segment descriptors are
    /// mapped from here when a process has rules that read array bytes.
    pub heavy_dir: Option<PathBuf>,
    /// How long the de-duplication table remembers (see [`crate::dedup`]).
    pub horizon: Horizon,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fsync: Fsync::Interval(std::time::Duration::from_millis(10)),
            strict: false,
            heavy_dir: None,
            horizon: Horizon::default(),
        }
    }
}

struct Contract {
    name: Arc<str>,
    /// The process's number in the de-duplication table.
    pid: u32,
    /// Every declared key: [`INPUT`], [`OUTPUT`] or both (one lookup answers both).
    keys: FxMap<Box<str>, u8>,
    /// The declared outputs (the event index's keys).
    outputs: Outputs,
    /// The number of the last batch in which the process committed.
    mark: u64,
}

const INPUT: u8 = 1;
const OUTPUT: u8 = 2;

impl Contract {
    #[inline]
    fn declares(&self, key: &str, kind: u8) -> bool {
        self.keys.get(key).is_some_and(|k| k & kind != 0)
    }
}

/// The outcome of one batch.
#[derive(Default, Debug)]
pub struct BatchOut {
    /// `{"decisions": [...]}`: one Decision map per decided update, in order.
    pub decisions_msg: Vec<u8>,
    /// Where each decision's map starts in `decisions_msg`.
    decision_at: Vec<usize>,
    /// `{"events": [...]}`, None when nothing committed.
    pub events_msg: Option<Vec<u8>>,
    /// The DECISION's commit index frame, None where it does not apply (see [`crate::index`]).
    pub commit_index: Option<Vec<u8>>,
    /// The COMMIT's event index frame, None where it does not apply (see [`crate::index`]).
    pub event_index: Option<Vec<u8>>,
    pub commits: usize,
    pub stop: Option<String>,
    pub newly_blocked: Vec<(String, String)>,
    pub malformed: Vec<String>,
    /// (key, descriptor bytes) of every heavy write committed, in commit order.
    pub heavy_committed: Vec<(String, Vec<u8>)>,
    /// The descriptors of updates not committed (the sink frees their segments).
    pub heavy_dropped: Vec<Vec<u8>>,
    /// The follow-up tasks of the commits, as msgpack Task maps `{id, process, args}`.
    pub followups: Vec<Vec<u8>>,
}

impl BatchOut {
    /// How many decisions the batch holds.
    pub fn len(&self) -> usize {
        self.decision_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decision_at.is_empty()
    }

    /// The `i`-th decision, read back from `decisions_msg`.
    pub fn decision(&self, i: usize) -> Option<Decision> {
        let at = *self.decision_at.get(i)?;
        let d = Decision::decode(&mut Reader::new(self.decisions_msg.get(at..)?));
        d.ok()
    }

    /// Every decision, in order (read back from `decisions_msg`).
    pub fn decisions(&self) -> Vec<Decision> {
        (0..self.len()).filter_map(|i| self.decision(i)).collect()
    }

    fn block(&mut self, process: &str, reason: String) {
        if !self.newly_blocked.iter().any(|(p, _)| p == process) {
            self.newly_blocked.push((process.to_owned(), reason));
        }
    }
}

/// What the sink's own validation said of each heavy descriptor it saw (the exact msgpack
/// bytes of the descriptor): None when valid, else the reason.
pub type Vetted = FxMap<Vec<u8>, Option<String>>;

/// One decoded update (the fixed part and the borrowed lists).
#[derive(Default)]
struct Ahead<'a> {
    u: Update<'a>,
    s: Scratch<'a>,
}

/// Per-batch inputs shared by every decision of the batch.
struct Ctx<'v> {
    now_ms: u64,
    now_us: u64,
    vetted: &'v Vetted,
}

pub struct Engine {
    store: Store,
    journal: Journal,
    /// The contracts, and each process's index among them.
    contracts: Vec<Contract>,
    contract_ids: FxMap<Box<str>, usize>,
    audit: Box<dyn Audit>,
    strict: bool,
    heavy_dir: Option<PathBuf>,
    stopped: Option<String>,
    unusable: Option<String>,
    /// The decisions and events messages of the batch being decided, where their items
    /// start, and the sizes of the last ones (to size the next).
    decisions: Vec<u8>,
    events: Vec<u8>,
    lists: (usize, usize),
    sizes: (usize, usize),
    record: RecordWriter,
    outbox: Outbox,
    /// The decision `decide_one` reuses (see there).
    verdict: Option<Decision>,
    /// The index frames of the batch being decided, and the batch's number.
    index: IndexBuilder,
    batch_no: u64,
}

fn now() -> (u64, u64) {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    (us / 1000, us)
}

/// The back-off a conflicting attempt waits before its redispatch: 2, 4, 8, 16, 32, 50 ms.
pub fn backoff_ms(attempt: u64) -> u64 {
    (1u64 << attempt.clamp(1, 6)).min(50)
}

impl Engine {
    /// Open (or create) the journal in `dir` and replay it.
    pub fn open(dir: &Path, config: Config, audit: Box<dyn Audit>) -> Result<Engine> {
        let (mut store, mut audit, mut outbox) = (Store::default(), audit, Outbox::default());
        store.dedup.set_horizon(config.horizon);
        let mut replay = Replay {
            store: &mut store,
            audit: audit.as_mut(),
            outbox: &mut outbox,
            now_ms: now().0,
        };
        let journal = Journal::open(dir, config.fsync, &mut |i, p| replay.record(i, p))?;
        Ok(Engine {
            store,
            journal,
            contracts: Vec::new(),
            contract_ids: FxMap::default(),
            audit,
            strict: config.strict,
            heavy_dir: config.heavy_dir,
            stopped: None,
            unusable: None,
            decisions: Vec::new(),
            events: Vec::new(),
            lists: (0, 0),
            sizes: (0, 0),
            record: RecordWriter::default(),
            outbox,
            verdict: None,
            index: IndexBuilder::default(),
            batch_no: 0,
        })
    }

    pub fn register(&mut self, process: &str, inputs: &[String], outputs: &[String]) -> Result<()> {
        if process.is_empty() || inputs.iter().chain(outputs).any(String::is_empty) {
            return Err(EngineError::Engine(
                "process and key names must not be empty".into(),
            ));
        }
        let mut keys: FxMap<Box<str>, u8> = FxMap::default();
        for (list, kind) in [(inputs, INPUT), (outputs, OUTPUT)] {
            for k in list {
                *keys.entry(k.as_str().into()).or_default() |= kind;
            }
        }
        let (name, pid) = self.store.dedup.intern(process);
        let outputs = Outputs::new(outputs);
        let c = Contract {
            name,
            pid,
            keys,
            outputs,
            mark: 0,
        };
        match self.contract_ids.get(process) {
            Some(&i) => self.contracts[i] = c,
            None => {
                self.contract_ids.insert(process.into(), self.contracts.len());
                self.contracts.push(c);
            }
        }
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.store.version
    }

    pub fn dedup_stats(&self) -> DedupStats {
        self.store.dedup.stats()
    }

    pub fn get(&self, key: &str) -> Option<(u64, &[u8])> {
        self.store
            .state
            .get(key)
            .map(|s| (s.version, s.value.as_slice()))
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.store.snapshot()
    }

    pub fn blocked(&self) -> Vec<String> {
        self.audit.blocked()
    }

    /// Lift a block; journalled (with the next write) so that a restart does not bring it
    /// back.
    pub fn unblock(&mut self, process: &str) -> bool {
        let was = self.audit.unblock(process);
        if was {
            self.record.unblock(process);
        }
        was
    }

    /// The commits found in the journal after its last `released` mark when the engine was
    /// opened, and not marked since: `(upto, events, followups)` where `events` are their
    /// COMMIT events (with signals), `followups` their follow-up Task maps, and `upto` the
    /// version to pass to `mark_released` once they are published.
    pub fn unreleased(&self) -> (u64, Vec<&[u8]>, Vec<&[u8]>) {
        let items: Vec<_> = self.outbox.pending().collect();
        let upto = items.last().map_or(self.outbox.released, |i| i.version);
        let events = items.iter().map(|i| i.event.as_slice()).collect();
        let tasks = items.iter().flat_map(|i| i.followups.iter().map(Vec::as_slice));
        (upto, events, tasks.collect())
    }

    /// The events and follow-ups of every commit up to `version` are published: journal the
    /// mark (with the next write), so a restart hands out only later ones.
    pub fn mark_released(&mut self, version: u64) -> Result<()> {
        self.usable()?;
        if version > self.store.version {
            return Err(EngineError::Engine(format!(
                "cannot mark version {version} released: the state is at {}",
                self.store.version
            )));
        }
        if self.outbox.release(version) {
            self.record.released(version);
        }
        Ok(())
    }

    pub fn journal_records(&self) -> u64 {
        self.journal.records()
    }

    pub fn flush(&mut self) -> Result<()> {
        self.usable()?;
        self.write_record(now().1);
        self.guard(|j| j.commit().and_then(|()| j.sync()))
    }

    /// Write pending control entries (an unblock at once, a lone release mark after a
    /// second); fsync if the policy is due.
    pub fn tick(&mut self) -> Result<()> {
        self.usable()?;
        if self.record.due() {
            self.write_record(now().1);
            return self.guard(Journal::commit);
        }
        self.guard(Journal::tick)
    }

    /// Append the batch record built so far (if there is anything in it) to the journal.
    fn write_record(&mut self, ts_us: u64) {
        if !self.record.is_empty() {
            let record = &mut self.record;
            self.journal.append(|b| record.write(b, ts_us));
        }
    }

    /// Flush and refuse every later call.
    pub fn close(&mut self) -> Result<()> {
        if self.unusable.is_none() {
            self.flush()?;
            self.unusable = Some("engine is closed".into());
        }
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        match &self.unusable {
            Some(why) => Err(EngineError::Engine(why.clone())),
            None => Ok(()),
        }
    }

    /// Run a journal operation; a failure leaves memory ahead of disk, so it poisons the
    /// engine (reopening replays the journal to a consistent state).
    fn guard(&mut self, op: impl FnOnce(&mut Journal) -> Result<()>) -> Result<()> {
        let res = op(&mut self.journal);
        if let Err(e) = &res {
            self.unusable = Some(format!("journal failed earlier ({e}); reopen the engine"));
        }
        res
    }

    /// `apply_batch_vetted` with no heavy descriptor vetted (any heavy write is rejected).
    pub fn apply_batch(&mut self, frames: &[Vec<u8>]) -> Result<BatchOut> {
        self.apply_batch_vetted(frames, &Vetted::default())
    }

    /// Decide every update of every frame, in order; one journal write for the batch.
    /// `vetted` holds the sink's verdict on each heavy descriptor (see [`Vetted`]).
    pub fn apply_batch_vetted<F: AsRef<[u8]>>(&mut self, frames: &[F], vetted: &Vetted) -> Result<BatchOut> {
        self.usable()?;
        let (now_ms, now_us) = now();
        let ctx = Ctx {
            now_ms,
            now_us,
            vetted,
        };
        let mut out = BatchOut::default();
        self.start_output(frames, &mut out);
        self.index.start();
        self.batch_no += 1;
        // Each update is decoded one step ahead of its decision, and its slot in the
        // de-duplication table prefetched, so that the table's cache miss overlaps the
        // decision before it. Decoding reads only the frame, so the order of effects is
        // unchanged.
        // Two slots used in turn (no moves): one holds the update being decided, the other
        // the next one.
        let mut slots = [Ahead::default(), Ahead::default()];
        for (fi, frame) in frames.iter().enumerate() {
            let mut updates = match FrameUpdates::open(frame.as_ref()) {
                Ok(f) => f,
                Err(m) => {
                    out.malformed.push(format!("frame {fi}: {m}"));
                    continue;
                }
            };
            let mut ui = 0;
            let mut next = self.read_ahead(&mut updates, &mut slots[0]);
            while let Some(res) = next {
                let [now, ahead] = &mut slots;
                let (now, ahead) = if ui % 2 == 0 { (now, ahead) } else { (ahead, now) };
                next = self.read_ahead(&mut updates, ahead);
                match res {
                    Ok(key) => self.decide_one(&now.u, &now.s, key, &ctx, &mut out),
                    Err(m) => out.malformed.push(format!("frame {fi} update {ui}: {m}")),
                }
                ui += 1;
            }
        }
        for (process, reason) in &out.newly_blocked {
            self.record.block(process, reason, now_ms);
        }
        self.write_record(now_us);
        self.guard(Journal::commit)?;
        self.finish(&mut out);
        Ok(out)
    }

    /// Size the outputs for at most as many decisions as the frames announce, and start the
    /// decisions and events messages in fresh buffers (handed over whole to the BatchOut).
    fn start_output(&mut self, frames: &[impl AsRef<[u8]>], out: &mut BatchOut) {
        let announced = frames.iter().map(|f| FrameUpdates::open(f.as_ref()).map_or(0, |f| f.left()));
        let max: usize = announced.sum();
        out.decision_at.reserve_exact(max);
        let (decisions, events) = self.sizes;
        // A little more than the last batch needed: batches of similar size never regrow.
        self.decisions = Vec::with_capacity((decisions + decisions / 4).max(64));
        self.events = Vec::with_capacity((events + events / 4).max(64));
        self.lists = (
            put::list_start(&mut self.decisions, "decisions", max),
            put::list_start(&mut self.events, "events", max),
        );
    }

    fn finish(&mut self, out: &mut BatchOut) {
        let (decisions_at, events_at) = self.lists;
        self.sizes = (self.decisions.len(), self.events.len());
        let body = self.decisions.len() - decisions_at;
        put::list_end(&mut self.decisions, "decisions", decisions_at, out.decision_at.len());
        // The head may have shrunk: the offsets were taken from where the body began.
        let moved = decisions_at - (self.decisions.len() - body);
        out.decision_at.iter_mut().for_each(|at| *at -= moved);
        out.decisions_msg = std::mem::take(&mut self.decisions);
        let blocked_or_stopped = !out.newly_blocked.is_empty() || out.stop.is_some();
        out.commit_index = self.index.commit_index(blocked_or_stopped);
        let contracts = &self.contracts;
        out.event_index = self.index.event_index(|p| &contracts[p].outputs);
        if out.commits > 0 {
            put::list_end(&mut self.events, "events", events_at, out.commits);
            out.events_msg = Some(std::mem::take(&mut self.events));
        }
    }

    /// Decode the next update of `updates` into `a`, and prefetch its de-duplication slot;
    /// its task key, or why it is malformed. None at the end of the frame.
    fn read_ahead<'a>(
        &self,
        updates: &mut FrameUpdates<'a>,
        a: &mut Ahead<'a>,
    ) -> Option<std::result::Result<TaskKey, Malformed>> {
        Some(updates.next_update(&mut a.u, &mut a.s)?.map(|()| {
            let key = self.store.dedup.key(a.u.task);
            self.store.dedup.prefetch(key);
            key
        }))
    }

    fn decide_one(&mut self, u: &Update<'_>, s: &Scratch<'_>, key: TaskKey, ctx: &Ctx<'_>, out: &mut BatchOut) {
        // One decision reused from update to update: resetting it costs no allocation and no
        // reference count. Its task name is the update's: it is encoded with it (`encode_as`)
        // and never leaves the engine, so no copy of the name is made.
        let mut d = self.verdict.take().unwrap_or_else(|| {
            Decision::new(Arc::from(""), Arc::from(""), 0, Status::Committed)
        });
        let contract = self.decide(u, s, key, ctx, out, &mut d);
        let committed = d.status == Status::Committed;
        if !committed {
            self.drop_heavy(s, out);
        }
        let (process, first_of_process) = match contract.filter(|_| committed) {
            Some(i) => {
                let c = &mut self.contracts[i];
                let first = c.mark != self.batch_no;
                c.mark = self.batch_no;
                (Some(i), first)
            }
            None => (None, false),
        };
        self.index.decided(&d, u.task, process, first_of_process);
        out.decision_at.push(self.decisions.len());
        d.encode_as(u.task, &mut self.decisions);
        self.verdict = Some(d);
    }

    /// Hand the descriptors of an update that did not commit back to the sink to free (never
    /// one that is a key's committed value: a redelivered duplicate carries those).
    fn drop_heavy(&self, s: &Scratch<'_>, out: &mut BatchOut) {
        for h in &s.heavy {
            if self.store.state.get(h.key).map(|slot| slot.value.as_slice()) != Some(h.raw) {
                out.heavy_dropped.push(h.raw.to_vec());
            }
        }
    }

    /// Decide update `u` into `d` (whatever `d` held before is overwritten); the number of
    /// the process's contract when it has one (None for a duplicate or an expired update).
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        u: &Update<'_>,
        s: &Scratch<'_>,
        key: TaskKey,
        ctx: &Ctx<'_>,
        out: &mut BatchOut,
        d: &mut Decision,
    ) -> Option<usize> {
        let dedup = &mut self.store.dedup;
        if dedup.duplicate_into(key, d) {
            return None;
        }
        dedup.observe(u.born_ms, ctx.now_ms);
        let now = (ctx.now_ms, ctx.now_us);
        let contract = self.contract_ids.get(u.process).copied();
        let pid = match contract.map(|i| &self.contracts[i]) {
            Some(c) => {
                if !Arc::ptr_eq(&d.process, &c.name) {
                    d.process = c.name.clone();
                }
                c.pid
            }
            None => {
                let (process, pid) = self.store.dedup.intern(u.process);
                d.process = process;
                pid
            }
        };
        d.reset(u.attempt, Status::Committed);
        if let Some(horizon) = self.store.dedup.expired(u.born_ms) {
            d.status = Status::Expired;
            d.rule = Some("dedup_horizon".into());
            d.reason = format!(
                "born at {} ms, at or before the de-duplication horizon ({horizon} ms): an \
                 earlier attempt may have committed, so this one is not",
                u.born_ms.unwrap_or(0)
            );
            return None;
        }
        let notes = self.judge(u, s, contract, ctx, d, out);
        if let Some(notes) = &notes {
            if self.conflict(u, s, d) {
                self.count(Failure::Conflict, d, now.0, out);
            } else {
                self.commit(u, s, d, out);
            }
            self.record(u, (key, pid), d, notes);
        } else {
            self.record(u, (key, pid), d, &[]);
        }
        contract
    }

    /// Everything before CAS. Some(notes) when the update may commit; otherwise `d` holds
    /// the decision.
    fn judge(
        &mut self,
        u: &Update<'_>,
        s: &Scratch<'_>,
        contract: Option<usize>,
        ctx: &Ctx<'_>,
        d: &mut Decision,
        out: &mut BatchOut,
    ) -> Option<Vec<Finding>> {
        let now = ctx.now_ms;
        if let Some(reason) = &self.stopped {
            d.status = Status::Blocked;
            d.reason = format!("pipeline stopped: {reason}");
            return None;
        }
        if let Err(reason) = self.audit.admit(u.process, now) {
            (d.status, d.reason, d.blocked) = (Status::Blocked, reason, true);
            return None;
        }
        if let Some(e) = &u.error {
            (d.status, d.reason) = (Status::Failed, format!("{}: {}", e.kind, e.message));
            d.error = Some(Box::new(e.clone()));
            self.count(Failure::Exception, d, now, out);
            return None;
        }
        if let Err(reason) = self.contract(u, s, contract) {
            (d.status, d.reason, d.rule) = (Status::Rejected, reason, Some("contract".into()));
            self.count(Failure::Contract, d, now, out);
            return None;
        }
        if let Err(reason) = vet(s, ctx.vetted) {
            (d.status, d.reason, d.rule) = (Status::Rejected, reason, Some("heavy".into()));
            self.count(Failure::Contract, d, now, out);
            return None;
        }
        self.audit_check(u, s, now, d, out)
    }

    fn audit_check(
        &mut self,
        u: &Update<'_>,
        s: &Scratch<'_>,
        now: u64,
        d: &mut Decision,
        out: &mut BatchOut,
    ) -> Option<Vec<Finding>> {
        let mapped = match self.map_arrays(u, s) {
            Ok(mapped) => mapped,
            Err(reason) => {
                (d.status, d.reason, d.rule) = (Status::Rejected, reason, Some("heavy".into()));
                self.count(Failure::Contract, d, now, out);
                return None;
            }
        };
        let arrays: Vec<ArrayField<'_>> = s
            .heavy
            .iter()
            .zip(&mapped)
            .map(|(h, m)| ArrayField {
                name: h.key,
                dtype: h.dtype,
                shape: &s.shapes[h.shape.clone()],
                data: match h.loc {
                    Loc::Inline(bytes) => Some(bytes),
                    Loc::Segment { .. } => m.as_ref().map(Mapped::bytes),
                },
            })
            .collect();
        let input = AuditInput {
            process: u.process,
            args: &s.args,
            writes: &s.data,
            arrays: &arrays,
        };
        let (finding, blocked) = match self.audit.check(&input, now) {
            Verdict::Pass { notes } => return Some(notes),
            Verdict::Reject { finding, blocked } => (finding, blocked),
            Verdict::Stop { finding } => {
                let reason = format!("rule {}: {}", finding.rule, finding.message);
                out.stop = Some(reason.clone());
                self.stopped = Some(reason);
                (finding, None)
            }
        };
        d.status = Status::Rejected;
        (d.rule, d.level, d.reason) = (Some(finding.rule), Some(finding.level), finding.message);
        if let Some(reason) = blocked {
            d.blocked = true;
            out.block(u.process, reason);
        }
        None
    }

    /// Map the segment bytes of each heavy write, when the process has rules that read them
    /// (one entry per heavy write; None where nothing is mapped).
    fn map_arrays(&self, u: &Update<'_>, s: &Scratch<'_>) -> std::result::Result<Vec<Option<Mapped>>, String> {
        let wanted = !s.heavy.is_empty() && self.audit.reads_array_data(u.process);
        let mut out = Vec::with_capacity(s.heavy.len());
        for h in &s.heavy {
            let Loc::Segment { seg, off, len, gen } = h.loc else {
                out.push(None);
                continue;
            };
            match (&self.heavy_dir, wanted) {
                (_, false) => out.push(None),
                (None, true) => return Err(format!("{}: no heavy directory to map {seg} from", h.key)),
                (Some(dir), true) => {
                    out.push(Some(map_segment(dir, seg, off, len, gen).map_err(|e| format!("{}: {e}", h.key))?));
                }
            }
        }
        Ok(out)
    }

    /// Count a non-rule failure with the auditor; mark the decision if it blocks.
    fn count(&mut self, kind: Failure, d: &mut Decision, now: u64, out: &mut BatchOut) {
        if let Some(reason) = self.audit.failure(&d.process, kind, now) {
            d.blocked = true;
            out.block(&d.process, reason);
        }
    }

    fn contract(&self, u: &Update<'_>, s: &Scratch<'_>, contract: Option<usize>) -> std::result::Result<(), String> {
        let Some(c) = contract.map(|i| &self.contracts[i]) else {
            return Err(format!("unknown process {}", u.process));
        };
        for f in &s.data {
            if !c.declares(f.name, OUTPUT) || f.name.starts_with("heavy.") {
                return Err(format!(
                    "write to undeclared or heavy key {} as a small value",
                    f.name
                ));
            }
        }
        for h in &s.heavy {
            if !c.declares(h.key, OUTPUT) || !h.key.starts_with("heavy.") {
                return Err(format!(
                    "heavy write to undeclared or non-heavy key {}",
                    h.key
                ));
            }
        }
        if let Some((k, _)) = s
            .reads
            .iter()
            .find(|(k, _)| !c.declares(k, INPUT | OUTPUT))
        {
            return Err(format!("read of undeclared key {k}"));
        }
        blind_write(s).map_or(Ok(()), |k| {
            Err(format!("write to {k} without its read version"))
        })
    }

    /// Compare-and-swap; sets a conflict decision and returns true on a stale read.
    fn conflict(&self, u: &Update<'_>, s: &Scratch<'_>, d: &mut Decision) -> bool {
        let now = self.store.version;
        let reason = match (u.expect, u.base) {
            (Some(expect), _) if expect != now => {
                format!("expected global version {expect}, current {now}")
            }
            (_, Some(base)) if self.strict && base != now => {
                format!("global version moved (base {base}, now {now})")
            }
            _ => match s
                .reads
                .iter()
                .find(|(k, v)| self.store.key_version(k) != *v)
            {
                Some((k, v)) => format!(
                    "stale read of {k} (read {v}, now {})",
                    self.store.key_version(k)
                ),
                None => return false,
            },
        };
        (d.status, d.version, d.reason) = (Status::Conflict, now, reason);
        d.rule = Some("cas".into());
        d.retry_after_ms = backoff_ms(u.attempt);
        true
    }

    fn commit(&mut self, u: &Update<'_>, s: &Scratch<'_>, d: &mut Decision, out: &mut BatchOut) {
        d.version = self.store.apply(s);
        self.audit.success(&d.process);
        out.commits += 1;
        for h in &s.heavy {
            out.heavy_committed.push((h.key.to_owned(), h.raw.to_vec()));
        }
        encode_event(&mut self.events, d.version, u, s);
        followups(u, &mut out.followups);
    }

    /// Journal and remember a final decision (committed, rejected, failed).
    /// `id` is the task's key and the process's number in the de-duplication table.
    fn record(&mut self, u: &Update<'_>, id: (TaskKey, u32), d: &Decision, notes: &[Finding]) {
        if !d.status.is_final() {
            return;
        }
        self.record.entry(d, notes, u.raw);
        self.store.dedup.insert(id.0, d, id.1);
    }
}

/// Every heavy descriptor must have been vetted by the sink, and found valid.
fn vet(s: &Scratch<'_>, vetted: &Vetted) -> std::result::Result<(), String> {
    for h in &s.heavy {
        match vetted.get(h.raw) {
            None => {
                return Err(format!(
                    "heavy descriptor for {} was not vetted by the sink",
                    h.key
                ))
            }
            Some(Some(reason)) => return Err(format!("{}: {reason}", h.key)),
            Some(None) => {}
        }
    }
    Ok(())
}

/// A written key that has no read version (a blind write), if any.
fn blind_write<'a>(s: &Scratch<'a>) -> Option<&'a str> {
    let written = s
        .data
        .iter()
        .map(|f| f.name)
        .chain(s.heavy.iter().map(|h| h.key));
    if s.reads.len() <= 16 {
        return written
            .into_iter()
            .find(|k| !s.reads.iter().any(|(r, _)| r == k));
    }
    let reads: HashSet<&str> = s.reads.iter().map(|(k, _)| *k).collect();
    written.into_iter().find(|k| !reads.contains(k))
}

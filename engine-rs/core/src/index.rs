//! The two index frames of a batch, gathered while it is decided (docs/PROTOCOL.md):
//!
//! * the DECISION's *commit index* `[ids, attempts, first_version]`, when every decision of
//!   the batch is a plain commit (status `committed`, empty reason, nil rule and level, no
//!   error, not blocked), no process became blocked, no S-level rule stopped the pipeline,
//!   and the versions run `first_version`, `first_version + 1`, ... in order: the broker and
//!   the producers then act on the commits without decoding the header;
//! * the COMMIT's *event index* `[first_version, count, keys]`, when something committed at
//!   consecutive versions and every committing process has a known contract: `keys` is the
//!   sorted union of their declared outputs (the contract refused any other write, so they
//!   name every key written).
//!
//! Both are msgpack exactly as `pipeline.protocol.pack_commit_index` and `pack_event_index`
//! write them (msgpack-python's canonical encoding: smallest int, fixstr/str8/16/32).
use crate::decision::{Decision, Status};
use crate::msgpack::put;

/// A process's declared outputs, sorted and without repeats, and the msgpack array of them
/// (the event index's `keys` when it is the only process that committed).
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    keys: Vec<Box<str>>,
    packed: Vec<u8>,
}

impl Outputs {
    pub fn new<S: AsRef<str>>(outputs: &[S]) -> Outputs {
        let mut keys: Vec<Box<str>> = outputs.iter().map(|k| k.as_ref().into()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut packed = Vec::with_capacity(keys.iter().map(|k| k.len() + 2).sum::<usize>() + 5);
        put::array_len(&mut packed, keys.len());
        for k in &keys {
            put::str(&mut packed, k);
        }
        Outputs { keys, packed }
    }
}

/// The index frames of one batch, built decision by decision. Reset at the start of each
/// batch; its buffers keep their capacity from batch to batch.
#[derive(Default, Debug)]
pub struct IndexBuilder {
    /// The encoded task ids and attempts of the decisions so far, while all are plain
    /// commits (cleared for good at the first that is not).
    ids: Vec<u8>,
    attempts: Vec<u8>,
    decisions: usize,
    /// Every decision so far is a plain commit.
    plain: bool,
    /// The first committed version, how many committed, and whether their versions ran
    /// consecutively.
    first: u64,
    commits: u64,
    consecutive: bool,
    /// The processes that committed (each once, by the caller's number), or None once one
    /// of them has no known outputs.
    processes: Option<Vec<usize>>,
}

impl IndexBuilder {
    pub fn start(&mut self) {
        self.ids.clear();
        self.attempts.clear();
        (self.decisions, self.plain) = (0, true);
        (self.first, self.commits, self.consecutive) = (0, 0, true);
        let processes = self.processes.get_or_insert_with(Vec::new);
        processes.clear();
    }

    /// Note decision `d` of the batch, for task `task`. For a commit, `process` is the
    /// number of the committing process (None when its outputs are not known), and
    /// `first_of_process` says whether it is the first commit of that process in the batch.
    pub fn decided(
        &mut self,
        d: &Decision,
        task: &str,
        process: Option<usize>,
        first_of_process: bool,
    ) {
        self.decisions += 1;
        if d.status != Status::Committed {
            self.not_plain();
            return;
        }
        if self.commits == 0 {
            self.first = d.version;
        } else if d.version != self.first + self.commits {
            self.consecutive = false;
        }
        self.commits += 1;
        match (process, &mut self.processes) {
            (Some(p), Some(list)) if first_of_process => list.push(p),
            (Some(_), _) => {}
            (None, processes) => *processes = None,
        }
        let plain = d.reason.is_empty()
            && d.rule.is_none()
            && d.level.is_none()
            && d.error.is_none()
            && !d.blocked;
        if !plain {
            self.not_plain();
        } else if self.plain {
            put::str(&mut self.ids, task);
            put::uint(&mut self.attempts, d.attempt);
        }
    }

    fn not_plain(&mut self) {
        if self.plain {
            self.plain = false;
            self.ids.clear();
            self.attempts.clear();
        }
    }

    /// The commit index, given whether any process became blocked or the pipeline stopped
    /// in the batch; None where it does not apply.
    pub fn commit_index(&self, blocked_or_stopped: bool) -> Option<Vec<u8>> {
        if !self.plain || self.commits == 0 || !self.consecutive || blocked_or_stopped {
            return None;
        }
        let mut out = Vec::with_capacity(self.ids.len() + self.attempts.len() + 20);
        put::array_len(&mut out, 3);
        put::array_len(&mut out, self.decisions);
        out.extend_from_slice(&self.ids);
        put::array_len(&mut out, self.decisions);
        out.extend_from_slice(&self.attempts);
        put::uint(&mut out, self.first);
        Some(out)
    }

    /// The event index, `outputs(p)` giving the declared outputs of process number `p`;
    /// None where it does not apply.
    pub fn event_index<'o>(&self, outputs: impl Fn(usize) -> &'o Outputs) -> Option<Vec<u8>> {
        let processes = self.processes.as_ref()?;
        if self.commits == 0 || !self.consecutive {
            return None;
        }
        let mut out = Vec::with_capacity(64);
        put::array_len(&mut out, 3);
        put::uint(&mut out, self.first);
        put::uint(&mut out, self.commits);
        if let [only] = processes[..] {
            out.extend_from_slice(&outputs(only).packed);
            return Some(out);
        }
        let mut keys: Vec<&str> = processes
            .iter()
            .flat_map(|&p| outputs(p).keys.iter().map(|k| &**k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        put::array_len(&mut out, keys.len());
        for k in keys {
            put::str(&mut out, k);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rmpv::Value;

    use super::*;
    use crate::audit_api::Level;

    fn commit(task: &str, attempt: u64, version: u64) -> Decision {
        let mut d = Decision::new(Arc::from(task), Arc::from("p"), attempt, Status::Committed);
        d.version = version;
        d
    }

    /// `v` in msgpack's canonical encoding (rmpv takes the smallest form, as
    /// msgpack-python does): the indexes must match it byte for byte.
    fn packed(v: Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        b
    }

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::from(*s)).collect())
    }

    fn outputs<'a>(all: &'a [Outputs]) -> impl Fn(usize) -> &'a Outputs {
        move |p| &all[p]
    }

    #[test]
    fn outputs_are_sorted_without_repeats() {
        let o = Outputs::new(&["b", "a", "b", "heavy.x"]);
        assert_eq!(o.packed, packed(strs(&["a", "b", "heavy.x"])));
        assert_eq!(Outputs::new::<&str>(&[]).packed, packed(strs(&[])));
    }

    #[test]
    fn plain_commits_give_both_indexes() {
        let all = [Outputs::new(&["k", "a"]), Outputs::new(&["z", "a"])];
        let mut b = IndexBuilder::default();
        b.start();
        b.decided(&commit("t1", 1, 7), "t1", Some(0), true);
        b.decided(&commit("t2", 3, 8), "t2", Some(1), true);
        b.decided(&commit("t3", 200, 9), "t3", Some(0), false);
        let want = Value::Array(vec![
            strs(&["t1", "t2", "t3"]),
            Value::Array(vec![1.into(), 3.into(), 200.into()]),
            7.into(),
        ]);
        assert_eq!(b.commit_index(false), Some(packed(want)));
        let want = Value::Array(vec![7.into(), 3.into(), strs(&["a", "k", "z"])]);
        assert_eq!(b.event_index(outputs(&all)), Some(packed(want)));
        assert_eq!(
            b.commit_index(true),
            None,
            "a block or a stop: no commit index"
        );
    }

    #[test]
    fn one_process_takes_its_packed_outputs() {
        let all = [Outputs::new(&["y", "x"])];
        let mut b = IndexBuilder::default();
        b.start();
        b.decided(&commit("t", 1, 70_000), "t", Some(0), true);
        let want = Value::Array(vec![70_000.into(), 1.into(), strs(&["x", "y"])]);
        assert_eq!(b.event_index(outputs(&all)), Some(packed(want)));
    }

    #[test]
    fn a_decision_that_is_not_a_plain_commit_drops_the_commit_index_only() {
        let all = [Outputs::new(&["k"])];
        let tweaks: [fn(&mut Decision); 6] = [
            |d| d.status = Status::Rejected,
            |d| d.reason = "why".into(),
            |d| d.rule = Some("r".into()),
            |d| d.level = Some(Level::I),
            |d| d.blocked = true,
            |d| {
                d.error = Some(Box::new(crate::update::ErrorInfo {
                    kind: "E".into(),
                    message: "m".into(),
                    traceback: String::new(),
                }))
            },
        ];
        for (i, tweak) in tweaks.iter().enumerate() {
            let mut b = IndexBuilder::default();
            b.start();
            b.decided(&commit("t1", 1, 5), "t1", Some(0), true);
            let mut d = commit("t2", 1, 6);
            tweak(&mut d);
            let committed = d.status == Status::Committed;
            b.decided(&d, "t2", Some(0), false);
            b.decided(
                &commit("t3", 1, 6 + u64::from(committed)),
                "t3",
                Some(0),
                false,
            );
            assert_eq!(b.commit_index(false), None, "tweak {i}");
            let count = 2 + u64::from(committed);
            let want = Value::Array(vec![5.into(), count.into(), strs(&["k"])]);
            assert_eq!(
                b.event_index(outputs(&all)),
                Some(packed(want)),
                "tweak {i}"
            );
        }
    }

    #[test]
    fn no_commit_no_index_and_a_gap_or_an_unknown_process_no_event_index() {
        let all = [Outputs::new(&["k"])];
        let mut b = IndexBuilder::default();
        b.start();
        let mut d = commit("t", 1, 0);
        d.status = Status::Conflict;
        b.decided(&d, "t", None, false);
        assert_eq!(
            (b.commit_index(false), b.event_index(outputs(&all))),
            (None, None)
        );
        b.start();
        b.decided(&commit("t1", 1, 5), "t1", Some(0), true);
        b.decided(&commit("t2", 1, 7), "t2", Some(0), false);
        assert_eq!(
            (b.commit_index(false), b.event_index(outputs(&all))),
            (None, None)
        );
        b.start();
        b.decided(&commit("t1", 1, 5), "t1", Some(0), true);
        b.decided(&commit("t2", 1, 6), "t2", None, false);
        assert!(b.commit_index(false).is_some());
        assert_eq!(b.event_index(outputs(&all)), None);
        b.start();
        b.decided(&commit("t1", 1, 5), "t1", Some(0), true);
        assert!(b.commit_index(false).is_some() && b.event_index(outputs(&all)).is_some());
    }

    #[test]
    fn long_names_and_many_items_take_the_wider_encodings() {
        let long = "k".repeat(40);
        let all = [Outputs::new(&[long.as_str(), &"j".repeat(300)])];
        let mut b = IndexBuilder::default();
        b.start();
        let ids: Vec<String> = (0..20).map(|i| format!("{}{i}", "t".repeat(35))).collect();
        for (i, id) in ids.iter().enumerate() {
            b.decided(
                &commit(id, 1 + i as u64 * 1000, 65_530 + i as u64),
                id,
                Some(0),
                i == 0,
            );
        }
        let want_ids = Value::Array(ids.iter().map(|s| Value::from(s.as_str())).collect());
        let want_attempts = Value::Array((0..20).map(|i| Value::from(1 + i * 1000)).collect());
        let want = Value::Array(vec![want_ids, want_attempts, 65_530.into()]);
        assert_eq!(b.commit_index(false), Some(packed(want)));
        let keys = strs(&[&"j".repeat(300), &long]);
        let want = Value::Array(vec![65_530.into(), 20.into(), keys]);
        assert_eq!(b.event_index(outputs(&all)), Some(packed(want)));
    }
}

//! Engine tests: decoding, dedup, contract, both CAS modes, journal replay and damage.
use std::path::Path;

use pipeline_core::msgpack::{put, Reader};
use pipeline_core::{make_audit, verify, Config, Engine, EngineError, Fsync, Status};

/// A test update: task, process, attempt, reads, writes (small ints), base.
struct U<'a> {
    task: &'a str,
    process: &'a str,
    reads: Vec<(&'a str, u64)>,
    data: Vec<(&'a str, u64)>,
    base: Option<u64>,
    error: bool,
}

fn upd<'a>(task: &'a str, reads: &[(&'a str, u64)], data: &[(&'a str, u64)]) -> U<'a> {
    U {
        task,
        process: "p",
        reads: reads.to_vec(),
        data: data.to_vec(),
        base: None,
        error: false,
    }
}

fn encode(u: &U<'_>, b: &mut Vec<u8>) {
    put::map_len(b, 7);
    put::str(b, "task");
    put::str(b, u.task);
    put::str(b, "process");
    put::str(b, u.process);
    put::str(b, "attempt");
    put::uint(b, 1);
    put::str(b, "reads");
    put::map_len(b, u.reads.len());
    for (k, v) in &u.reads {
        put::str(b, k);
        put::uint(b, *v);
    }
    put::str(b, "data");
    put::map_len(b, u.data.len());
    for (k, v) in &u.data {
        put::str(b, k);
        put::uint(b, *v);
    }
    put::str(b, "base");
    match u.base {
        Some(v) => put::uint(b, v),
        None => put::nil(b),
    }
    put::str(b, "error");
    if u.error {
        put::map_len(b, 2);
        put::str(b, "type");
        put::str(b, "ValueError");
        put::str(b, "message");
        put::str(b, "boom");
    } else {
        put::nil(b);
    }
}

fn frame(us: &[U<'_>]) -> Vec<u8> {
    let mut b = Vec::new();
    put::map_len(&mut b, 1);
    put::str(&mut b, "updates");
    put::array_len(&mut b, us.len());
    for u in us {
        encode(u, &mut b);
    }
    b
}

fn open(dir: &Path, strict: bool) -> Engine {
    let config = Config {
        fsync: Fsync::Never,
        strict,
        ..Config::default()
    };
    let mut e = Engine::open(dir, config, make_audit(None).unwrap()).unwrap();
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    e.register("p", &keys(&["in"]), &keys(&["a", "b"])).unwrap();
    e
}

fn statuses(e: &mut Engine, us: &[U<'_>]) -> Vec<Status> {
    let out = e.apply_batch(&[frame(us)]).unwrap();
    assert!(out.malformed.is_empty(), "{:?}", out.malformed);
    out.decisions().iter().map(|d| d.status).collect()
}

#[test]
fn commit_bumps_versions_and_emits_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    let out = e
        .apply_batch(&[frame(&[upd("t1", &[("a", 0)], &[("a", 5)])])])
        .unwrap();
    assert_eq!(out.decisions()[0].status, Status::Committed);
    assert_eq!(out.decisions()[0].version, 1);
    assert_eq!(e.get("a"), Some((1, &[5u8][..])));
    let ev = out.events_msg.unwrap();
    let mut r = Reader::new(&ev);
    assert_eq!(r.map_len(), Ok(1));
    assert_eq!(r.str(), Ok("events"));
    assert_eq!(r.array_len(), Ok(1));
    assert_eq!(out.commits, 1);
}

#[test]
fn malformed_updates_get_reasons_not_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    let mut bad_update = Vec::new();
    put::map_len(&mut bad_update, 1);
    put::str(&mut bad_update, "updates");
    put::array_len(&mut bad_update, 2);
    put::map_len(&mut bad_update, 1);
    put::str(&mut bad_update, "task");
    put::uint(&mut bad_update, 3);
    encode(&upd("ok", &[("a", 0)], &[("a", 1)]), &mut bad_update);
    let frames = vec![
        vec![0xc1],
        vec![0x93, 1, 2],
        vec![0x81, 0xa1, b'x', 1],
        bad_update,
        vec![],
    ];
    let out = e.apply_batch(&frames).unwrap();
    assert_eq!(out.malformed.len(), 5, "{:?}", out.malformed);
    assert_eq!(out.malformed[3], "frame 3 update 0: task: expected str");
    assert_eq!(out.decisions().len(), 1);
    assert_eq!(out.decisions()[0].status, Status::Committed);
}

/// The decisions are read back from the DECISION message, also when fewer are decided than
/// the frames announced (the message's list head then shrinks and the items move down).
#[test]
fn decisions_read_back_from_the_message_match_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    let ids: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let us: Vec<U<'_>> = ids.iter().map(|id| upd(id, &[("a", 0)], &[("a", 1)])).collect();
    let mut short = Vec::new();
    put::map_len(&mut short, 1);
    put::str(&mut short, "updates");
    put::array_len(&mut short, 20); // 3-byte head for 20 items ...
    encode(&us[0], &mut short);
    encode(&us[1], &mut short); // ... but 2 decisions (a 1-byte head)
    let out = e.apply_batch(&[short, frame(&us[2..4])]).unwrap();
    let ds = out.decisions();
    let statuses: Vec<Status> = ds.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Status::Committed, Status::Conflict, Status::Conflict, Status::Conflict]);
    let tasks: Vec<&str> = ds.iter().map(|d| &*d.task).collect();
    assert_eq!(tasks, ["t0", "t1", "t2", "t3"]);
    let mut r = Reader::new(&out.decisions_msg);
    assert_eq!((r.map_len(), r.str(), r.array_len()), (Ok(1), Ok("decisions"), Ok(4)));
    for d in &ds {
        let mut again = Vec::new();
        d.encode(&mut again);
        assert_eq!(r.raw(), Ok(&again[..]));
    }
    assert!(r.is_empty() && out.decision(4).is_none() && out.len() == 4);
}

#[test]
fn truncated_frames_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    let f = frame(&[upd("t1", &[("a", 0)], &[("a", 5)])]);
    for cut in 0..f.len() {
        let out = e.apply_batch(&[f[..cut].to_vec()]).unwrap();
        assert_eq!(out.decisions().len(), 0);
        assert_eq!(out.malformed.len(), 1);
    }
}

#[test]
fn duplicates_repeat_the_original_decision() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    let first = e
        .apply_batch(&[frame(&[upd("t1", &[("a", 0)], &[("a", 5)])])])
        .unwrap();
    let again = e
        .apply_batch(&[frame(&[upd("t1", &[("a", 1)], &[("a", 6)])])])
        .unwrap();
    let (d0, d1) = (&first.decisions()[0], &again.decisions()[0]);
    assert_eq!(d1.status, Status::Duplicate);
    assert_eq!((d1.version, &d1.task), (d0.version, &d0.task));
    assert_eq!(e.get("a"), Some((1, &[5u8][..])));
    let mut failed = upd("t2", &[], &[]);
    failed.error = true;
    assert_eq!(
        statuses(&mut e, &[failed, upd("t2", &[("a", 1)], &[("a", 7)])]),
        [Status::Failed, Status::Duplicate]
    );
}

#[test]
fn contract_violations_are_rejected_and_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    let mut unknown = upd("t0", &[], &[]);
    unknown.process = "nope";
    let cases = [
        unknown,
        upd("t1", &[("z", 0)], &[("z", 1)]),
        upd("t2", &[("secret", 0), ("a", 0)], &[("a", 1)]),
        upd("t3", &[], &[("a", 1)]),
    ];
    let out = e.apply_batch(&[frame(&cases)]).unwrap();
    for d in &out.decisions() {
        assert_eq!(
            (d.status, d.rule.as_deref()),
            (Status::Rejected, Some("contract")),
            "{d:?}"
        );
    }
    assert_eq!(out.decisions()[0].reason, "unknown process nope");
    assert_eq!((e.version(), e.get("a")), (0, None));
    assert_eq!(
        statuses(&mut e, &[upd("t4", &[("in", 0), ("a", 0)], &[("a", 1)])]),
        [Status::Committed]
    );
}

#[test]
fn key_level_cas_checks_only_the_keys_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), false);
    assert_eq!(
        statuses(&mut e, &[upd("t1", &[("a", 0)], &[("a", 1)])]),
        [Status::Committed]
    );
    let mut stale_base = upd("t2", &[("b", 0)], &[("b", 1)]);
    stale_base.base = Some(0);
    let out = e
        .apply_batch(&[frame(&[upd("t3", &[("a", 0)], &[("a", 2)]), stale_base])])
        .unwrap();
    let d = &out.decisions()[0];
    assert_eq!(
        (d.status, d.version, d.rule.as_deref()),
        (Status::Conflict, 1, Some("cas"))
    );
    assert!(d.retry_after_ms > 0 && d.retry_after_ms <= 50);
    assert_eq!(out.decisions()[1].status, Status::Committed);
    // Conflicts are not final: the retry with fresh versions commits.
    assert_eq!(
        statuses(&mut e, &[upd("t3", &[("a", 1)], &[("a", 2)])]),
        [Status::Committed]
    );
}

#[test]
fn strict_cas_checks_the_global_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path(), true);
    assert_eq!(
        statuses(&mut e, &[upd("t1", &[("a", 0)], &[("a", 1)])]),
        [Status::Committed]
    );
    let mut stale = upd("t2", &[("b", 0)], &[("b", 1)]);
    stale.base = Some(0);
    let mut fresh = upd("t3", &[("b", 0)], &[("b", 1)]);
    fresh.base = Some(1);
    assert_eq!(
        statuses(&mut e, &[stale, fresh]),
        [Status::Conflict, Status::Committed]
    );
    // base nil falls back to the key-level check.
    assert_eq!(
        statuses(&mut e, &[upd("t4", &[("a", 1)], &[("a", 9)])]),
        [Status::Committed]
    );
}

#[test]
fn journal_replay_restores_state_versions_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let snap = {
        let mut e = open(dir.path(), false);
        let mut failed = upd("t3", &[], &[]);
        failed.error = true;
        statuses(
            &mut e,
            &[
                upd("t1", &[("a", 0)], &[("a", 1)]),
                upd("t2", &[("b", 0)], &[("b", 2)]),
                failed,
            ],
        );
        e.close().unwrap();
        e.snapshot()
    };
    let mut e = open(dir.path(), false);
    assert_eq!(e.snapshot(), snap);
    assert_eq!(e.version(), 2);
    // One record per batch.
    assert_eq!(e.journal_records(), 1);
    assert_eq!(
        statuses(
            &mut e,
            &[upd("t1", &[("a", 1)], &[("a", 5)]), upd("t3", &[], &[])]
        ),
        [Status::Duplicate, Status::Duplicate]
    );
    assert_eq!(verify(dir.path()), Ok((1, None, None)));
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("{:020}.seg", 0))
}

fn three_records(dir: &Path) {
    let mut e = open(dir, false);
    for t in ["t1", "t2", "t3"] {
        statuses(&mut e, &[upd(t, &[], &[])]);
    }
    e.close().unwrap();
}

#[test]
fn torn_tail_is_truncated_and_appending_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    three_records(dir.path());
    let seg = segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    assert_eq!(verify(dir.path()).unwrap().1, Some(2));
    let mut e = open(dir.path(), false);
    assert_eq!((e.version(), e.journal_records()), (2, 2));
    assert_eq!(
        statuses(&mut e, &[upd("t3", &[], &[])]),
        [Status::Committed]
    );
    e.close().unwrap();
    assert_eq!(verify(dir.path()), Ok((3, None, None)));
}

#[test]
fn flipped_byte_mid_journal_is_corruption_naming_the_record() {
    let dir = tempfile::tempdir().unwrap();
    three_records(dir.path());
    let seg = segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let second = 8 + 44 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    for (at, reason) in [
        (second + 60, "checksum mismatch"),
        (second + 20, "hash chain broken"),
        (second + 1, "bad length field"),
    ] {
        bytes[at] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let (ok, bad, why) = verify(dir.path()).unwrap();
        assert_eq!((ok, bad, why.as_deref()), (1, Some(1), Some(reason)));
        let err = Engine::open(
            dir.path(),
            Config {
                fsync: Fsync::Never,
                strict: false,
                ..Config::default()
            },
            make_audit(None).unwrap(),
        )
        .err();
        assert_eq!(
            err,
            Some(EngineError::JournalCorrupt {
                index: 1,
                reason: reason.into()
            })
        );
        bytes[at] ^= 0x40;
    }
}

#[test]
fn fsync_policies_all_commit() {
    for fsync in [
        Fsync::Always,
        Fsync::Interval(std::time::Duration::from_millis(1)),
        Fsync::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::open(
            dir.path(),
            Config {
                fsync,
                strict: false,
                ..Config::default()
            },
            make_audit(None).unwrap(),
        )
        .unwrap();
        e.register("p", &[], &["a".into()]).unwrap();
        assert_eq!(
            statuses(&mut e, &[upd("t", &[("a", 0)], &[("a", 1)])]),
            [Status::Committed]
        );
        e.tick().unwrap();
        e.close().unwrap();
        assert!(e.apply_batch(&[]).is_err());
    }
}

/// An auditor driven by the task's name: "rej*" rejects (and blocks), "stop*" stops.
#[derive(Default)]
struct Scripted {
    blocked: Vec<String>,
    successes: usize,
}

impl pipeline_core::audit_api::Audit for Scripted {
    fn admit(&mut self, process: &str, _now_ms: u64) -> Result<(), String> {
        match self.blocked.iter().any(|p| p == process) {
            true => Err(format!("{process} is blocked")),
            false => Ok(()),
        }
    }
    fn check(
        &mut self,
        input: &pipeline_core::audit_api::AuditInput<'_>,
        _now_ms: u64,
    ) -> pipeline_core::audit_api::Verdict {
        use pipeline_core::audit_api::{Finding, Level, Verdict};
        let finding = |level| Finding {
            rule: "r".into(),
            level,
            message: "too big".into(),
        };
        match input.writes.first().map(|f| f.value) {
            Some([9]) => {
                self.blocked.push(input.process.into());
                Verdict::Reject {
                    finding: finding(Level::A),
                    blocked: Some("threshold".into()),
                }
            }
            Some([7]) => Verdict::Stop {
                finding: finding(Level::S),
            },
            _ => Verdict::Pass {
                notes: vec![finding(Level::C)],
            },
        }
    }
    fn failure(&mut self, _: &str, _: pipeline_core::audit_api::Failure, _: u64) -> Option<String> {
        None
    }
    fn success(&mut self, _process: &str) {
        self.successes += 1;
    }
    fn unblock(&mut self, process: &str) -> bool {
        let before = self.blocked.len();
        self.blocked.retain(|p| p != process);
        before != self.blocked.len()
    }
    fn blocked(&self) -> Vec<String> {
        self.blocked.clone()
    }
}

#[test]
fn audit_reject_block_unblock_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        fsync: Fsync::Never,
        strict: false,
        ..Config::default()
    };
    let mut e = Engine::open(dir.path(), config, Box::new(Scripted::default())).unwrap();
    e.register("p", &[], &["a".into()]).unwrap();
    let out = e
        .apply_batch(&[frame(&[
            upd("t1", &[("a", 0)], &[("a", 9)]),
            upd("t2", &[("a", 0)], &[("a", 1)]),
        ])])
        .unwrap();
    let (rej, blk) = (&out.decisions()[0], &out.decisions()[1]);
    assert_eq!(
        (
            rej.status,
            rej.rule.as_deref(),
            rej.level.map(|l| l.as_str()),
            rej.blocked
        ),
        (Status::Rejected, Some("r"), Some("A"), true)
    );
    assert_eq!((blk.status, blk.blocked), (Status::Blocked, true));
    assert_eq!(
        out.newly_blocked,
        vec![("p".to_string(), "threshold".to_string())]
    );
    assert_eq!(e.blocked(), ["p"]);
    assert!(e.unblock("p"));
    let out = e
        .apply_batch(&[frame(&[
            upd("t2", &[("a", 0)], &[("a", 1)]),
            upd("t3", &[("a", 1)], &[("a", 7)]),
            upd("t4", &[("a", 1)], &[("a", 2)]),
        ])])
        .unwrap();
    let got: Vec<Status> = out.decisions().iter().map(|d| d.status).collect();
    assert_eq!(got, [Status::Committed, Status::Rejected, Status::Blocked]);
    assert_eq!(out.stop.as_deref(), Some("rule r: too big"));
    assert_eq!(e.version(), 1);
}

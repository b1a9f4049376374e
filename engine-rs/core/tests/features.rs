//! Engine features: `expect`, heavy vetting, array data, outbox, block replay.
mod common;

use common::*;
use pipeline_core::Status;
use rmpv::Value;

fn statuses(e: &mut pipeline_core::Engine, updates: Vec<Value>) -> Vec<Status> {
    let out = e.apply_batch(&[frame(updates)]).unwrap();
    assert!(out.malformed.is_empty(), "{:?}", out.malformed);
    out.decisions().iter().map(|d| d.status).collect()
}

#[test]
fn expect_is_checked_in_both_cas_modes() {
    for strict in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut e = open_with(dir.path(), config(strict), None);
        let first = update("t1", &[("a", 0)], &[("a", 1)], vec![("expect", Value::from(0))]);
        assert_eq!(statuses(&mut e, vec![first]), [Status::Committed]);
        let stale = update("t2", &[("b", 0)], &[("b", 1)], vec![("expect", Value::from(0))]);
        let out = e.apply_batch(&[frame(vec![stale])]).unwrap();
        let d = &out.decisions()[0];
        assert_eq!((d.status, d.rule.as_deref(), d.version), (Status::Conflict, Some("cas"), 1));
        assert_eq!(d.reason, "expected global version 0, current 1");
        let fresh = update("t3", &[("b", 0)], &[("b", 1)], vec![("expect", Value::from(1))]);
        let nil = update("t4", &[("a", 1)], &[("a", 2)], vec![("expect", Value::Nil)]);
        assert_eq!(statuses(&mut e, vec![fresh, nil]), [Status::Committed, Status::Committed]);
    }
}

#[test]
fn expect_must_be_an_int_or_nil() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open_with(dir.path(), config(false), None);
    let bad = update("t1", &[("a", 0)], &[("a", 1)], vec![("expect", s("x"))]);
    let out = e.apply_batch(&[frame(vec![bad])]).unwrap();
    assert_eq!(out.malformed, ["frame 0 update 0: expect: expected int"]);
}

fn seg_desc(seg: &str, off: u64, n: u64) -> Value {
    map(vec![
        ("seg", s(seg)),
        ("off", Value::from(off)),
        ("len", Value::from(n * 8)),
        ("dtype", s("<f8")),
        ("shape", Value::Array(vec![Value::from(n)])),
        ("strides", Value::Array(vec![Value::from(8)])),
        ("gen", Value::from(1)),
    ])
}

fn inline_desc(values: &[f64]) -> Value {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    map(vec![
        ("inline", Value::Binary(bytes)),
        ("dtype", s("<f8")),
        ("shape", Value::Array(vec![Value::from(values.len() as u64)])),
    ])
}

fn heavy_update(task: &str, read: u64, key: &str, desc: &Value) -> Value {
    let mut u = update(task, &[(key, read)], &[], vec![]);
    if let Value::Map(m) = &mut u {
        m.push((s("heavy"), map(vec![(key, desc.clone())])));
    }
    u
}

fn vetted(entries: &[(&Value, Option<&str>)]) -> pipeline_core::Vetted {
    entries
        .iter()
        .map(|(d, r)| (pack(d), r.map(str::to_owned)))
        .collect()
}

#[test]
fn heavy_writes_need_the_sinks_vetting() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open_with(dir.path(), config(false), None);
    let (good, bad, unknown) = (seg_desc("s1", 4096, 4), inline_desc(&[1.0]), seg_desc("s3", 4096, 1));
    let v = vetted(&[(&good, None), (&bad, Some("len 8 does not match"))]);
    let batch = vec![
        heavy_update("t1", 0, "heavy.x", &good),
        heavy_update("t2", 0, "heavy.y", &bad),
        heavy_update("t3", 0, "heavy.y", &unknown),
        heavy_update("t4", 0, "heavy.x", &seg_desc("s4", 4096, 2)),
    ];
    let out = e.apply_batch_vetted(&[frame(batch)], &v).unwrap();
    let decided = out.decisions();
    let got: Vec<_> = decided
        .iter()
        .map(|d| (d.status, d.rule.as_deref(), d.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Status::Committed, None, ""),
            (Status::Rejected, Some("heavy"), "heavy.y: len 8 does not match"),
            (
                Status::Rejected,
                Some("heavy"),
                "heavy descriptor for heavy.y was not vetted by the sink"
            ),
            (
                Status::Rejected,
                Some("heavy"),
                "heavy descriptor for heavy.x was not vetted by the sink"
            ),
        ]
    );
    assert_eq!(out.heavy_committed, [("heavy.x".to_string(), pack(&good))]);
    let four = pack(&seg_desc("s4", 4096, 2));
    assert_eq!(out.heavy_dropped, [pack(&bad), pack(&unknown), four]);
    assert_eq!(e.get("heavy.x").map(|(v, b)| (v, b.to_vec())), Some((1, pack(&good))));
}

#[test]
fn heavy_of_conflicts_and_duplicates_is_dropped_but_never_a_committed_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open_with(dir.path(), config(false), None);
    let (a, b) = (inline_desc(&[1.0, 2.0]), seg_desc("s2", 8192, 3));
    let v = vetted(&[(&a, None), (&b, None)]);
    let batch = vec![
        heavy_update("t1", 0, "heavy.x", &a),
        heavy_update("t2", 0, "heavy.x", &b),
        heavy_update("t1", 0, "heavy.x", &a),
    ];
    let out = e.apply_batch_vetted(&[frame(batch)], &v).unwrap();
    let st: Vec<_> = out.decisions().iter().map(|d| d.status).collect();
    assert_eq!(st, [Status::Committed, Status::Conflict, Status::Duplicate]);
    assert_eq!(out.heavy_committed.len(), 1);
    assert_eq!(out.heavy_dropped, [pack(&b)]);
}

#[test]
fn descriptors_of_both_forms_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open_with(dir.path(), config(false), None);
    let mut with_ns = seg_desc("s1", 4096, 1);
    if let Value::Map(m) = &mut with_ns {
        m.push((s("ns"), s("demo")));
    }
    let mut mixed = inline_desc(&[1.0]);
    if let Value::Map(m) = &mut mixed {
        m.push((s("seg"), s("s1")));
    }
    let mut object = inline_desc(&[1.0]);
    if let Value::Map(m) = &mut object {
        m[1].1 = s("|O");
    }
    let frames = [
        frame(vec![heavy_update("t1", 0, "heavy.x", &with_ns)]),
        frame(vec![heavy_update("t2", 0, "heavy.x", &mixed)]),
        frame(vec![heavy_update("t3", 0, "heavy.x", &object)]),
    ];
    let out = e.apply_batch_vetted(&frames, &vetted(&[(&with_ns, None)])).unwrap();
    assert_eq!(out.decisions().len(), 1);
    assert_eq!(out.commits, 1);
    assert_eq!(
        out.malformed,
        [
            "frame 1 update 0: heavy: incomplete descriptor or bad dtype",
            "frame 2 update 0: heavy: incomplete descriptor or bad dtype"
        ]
    );
}

const ARRAY_RECIPE: &str = r#"
[process.p]
max_threshold = 10

[[process.p.rules]]
name = "x-range"
field = "heavy.x"
finite = true
max = 10.0
"#;

fn write_segment(dir: &std::path::Path, name: &str, gen: u64, values: &[f64]) {
    let mut b = b"PLHEAVY1".to_vec();
    b.extend_from_slice(&gen.to_le_bytes());
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.resize(4096, 0);
    b.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    b.resize(8192, 0);
    std::fs::write(dir.join(name), b).unwrap();
}

#[test]
fn array_rules_read_segment_and_inline_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    write_segment(shm.path(), "ok", 1, &[1.0, 2.0, 3.0, 4.0]);
    write_segment(shm.path(), "big", 1, &[1.0, 2.0, 30.0, 4.0]);
    write_segment(shm.path(), "nan", 1, &[1.0, f64::NAN, 3.0, 4.0]);
    let cfg = pipeline_core::Config {
        heavy_dir: Some(shm.path().to_path_buf()),
        ..config(false)
    };
    let mut e = open_with(&dir.path().join("j"), cfg, Some(ARRAY_RECIPE));
    let descs = [
        seg_desc("ok", 4096, 4),
        seg_desc("big", 4096, 4),
        seg_desc("nan", 4096, 4),
        inline_desc(&[11.0]),
        map(vec![
            ("seg", s("ok")),
            ("off", Value::from(4096)),
            ("len", Value::from(32)),
            ("dtype", s("<f8")),
            ("shape", Value::Array(vec![Value::from(4)])),
            ("strides", Value::Array(vec![Value::from(8)])),
            ("gen", Value::from(7)),
        ]),
    ];
    let v = vetted(&descs.iter().map(|d| (d, None)).collect::<Vec<_>>());
    let ups = descs
        .iter()
        .enumerate()
        .map(|(i, d)| heavy_update(&format!("t{i}"), 0, "heavy.x", d))
        .collect();
    let out = e.apply_batch_vetted(&[frame(ups)], &v).unwrap();
    let got: Vec<_> = out
        .decisions()
        .into_iter()
        .map(|d| (d.status, d.rule.clone().unwrap_or_default()))
        .collect();
    let rule = |r: &str| (Status::Rejected, r.to_string());
    assert_eq!(
        got,
        [
            (Status::Committed, String::new()),
            rule("x-range"),
            rule("x-range"),
            rule("x-range"),
            rule("heavy"),
        ]
    );
    assert!(out.decisions()[4].reason.contains("stale generation"), "{}", out.decisions()[4].reason);
}

#[test]
fn without_a_heavy_dir_array_rules_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open_with(&dir.path().join("j"), config(false), Some(ARRAY_RECIPE));
    let d = seg_desc("ok", 4096, 4);
    let out = e
        .apply_batch_vetted(&[frame(vec![heavy_update("t1", 0, "heavy.x", &d)])], &vetted(&[(&d, None)]))
        .unwrap();
    assert_eq!(out.decisions()[0].rule.as_deref(), Some("heavy"));
    assert_eq!(out.decisions()[0].reason, "heavy.x: no heavy directory to map ok from");
}

fn outbox_update(task: &str, read: u64) -> Value {
    let signal = map(vec![("topic", s("t")), ("payload", Value::Binary(vec![1]))]);
    let tasks = vec![
        map(vec![("process", s("q")), ("args", map(vec![("n", Value::from(1))]))]),
        map(vec![("process", s("r"))]),
    ];
    update(
        task,
        &[("a", read)],
        &[("a", read + 1)],
        vec![("signals", Value::Array(vec![signal])), ("tasks", Value::Array(tasks))],
    )
}

fn task_ids(followups: &[impl AsRef<[u8]>]) -> Vec<String> {
    let id = |b: &[u8]| get(&unpack(b), "id").as_str().unwrap().to_string();
    followups.iter().map(|b| id(b.as_ref())).collect()
}

#[test]
fn followups_of_commits_only_with_deterministic_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open_with(dir.path(), config(false), None);
    let mut rejected = outbox_update("t3", 1);
    if let Value::Map(m) = &mut rejected {
        m.push((s("args"), map(vec![("zzz", Value::from(1))])));
        m[4].1 = ints(&[("a", 1), ("nope", 0)]);
    }
    let ups = vec![outbox_update("t1", 0), outbox_update("t2", 0), rejected];
    let out = e.apply_batch(&[frame(ups)]).unwrap();
    let st: Vec<_> = out.decisions().iter().map(|d| d.status).collect();
    assert_eq!(st, [Status::Committed, Status::Conflict, Status::Rejected]);
    assert_eq!(task_ids(&out.followups), ["t1/0", "t1/1"]);
    let first = unpack(&out.followups[0]);
    assert_eq!(get(&first, "process").as_str(), Some("q"));
    assert_eq!(get(&first, "args"), &map(vec![("n", Value::from(1))]));
    assert_eq!(get(&unpack(&out.followups[1]), "args"), &map(vec![]));
}

#[test]
fn unreleased_commits_are_handed_out_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut e = open_with(dir.path(), config(false), None);
        e.apply_batch(&[frame(vec![outbox_update("t1", 0)])]).unwrap();
        e.mark_released(1).unwrap();
        assert!(e.mark_released(5).is_err());
        e.apply_batch(&[frame(vec![outbox_update("t2", 1)])]).unwrap();
        e.apply_batch(&[frame(vec![update("t3", &[("b", 0)], &[("b", 1)], vec![])])])
            .unwrap();
        // SIGKILL here: t2 and t3 are journalled, never published.
        e.flush().unwrap();
    }
    let mut e = open_with(dir.path(), config(false), None);
    let (upto, events, tasks) = e.unreleased();
    assert_eq!(upto, 3);
    let versions: Vec<_> = events.iter().map(|b| get(&unpack(b), "version").as_u64()).collect();
    assert_eq!(versions, [Some(2), Some(3)]);
    assert_eq!(get(&unpack(events[0]), "signals").as_array().map(Vec::len), Some(1));
    assert_eq!(task_ids(&tasks), ["t2/0", "t2/1"]);
    e.mark_released(upto).unwrap();
    e.close().unwrap();
    let e = open_with(dir.path(), config(false), None);
    let (upto, events, tasks) = e.unreleased();
    assert_eq!((upto, events.len(), tasks.len()), (3, 0, 0));
}

#[test]
fn blocks_and_unblocks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("j");
    let big = |t: &str| update(t, &[("a", 0)], &[("a", 99)], vec![]);
    {
        let mut e = open_with(&j, config(false), Some(BLOCK_RECIPE));
        let out = e.apply_batch(&[frame(vec![big("t1"), big("t2")])]).unwrap();
        assert_eq!(out.newly_blocked.len(), 1);
        e.close().unwrap();
    }
    let mut e = open_with(&j, config(false), Some(BLOCK_RECIPE));
    assert_eq!(e.blocked(), ["p"]);
    assert_eq!(statuses(&mut e, vec![big("t3")]), [Status::Blocked]);
    assert!(e.unblock("p"));
    e.close().unwrap();
    let mut e = open_with(&j, config(false), Some(BLOCK_RECIPE));
    assert!(e.blocked().is_empty());
    let ok = update("t4", &[("a", 0)], &[("a", 1)], vec![]);
    assert_eq!(statuses(&mut e, vec![ok]), [Status::Committed]);
}

#[test]
fn journals_of_the_first_format_still_replay() {
    use pipeline_core::journal::{Fsync, Journal};
    use pipeline_core::msgpack::put;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut j = Journal::open(dir.path(), Fsync::Never, &mut |_, _| Ok(())).unwrap();
        for (i, t) in ["t1", "t2"].iter().enumerate() {
            let u = pack(&update(t, &[("a", i as u64)], &[("a", 7)], vec![]));
            j.append(|b| {
                put::array_len(b, 10);
                put::uint(b, 1);
                put::str(b, "committed");
                put::uint(b, i as u64 + 1);
                put::str(b, "");
                put::nil(b);
                put::nil(b);
                put::nil(b);
                put::bool(b, false);
                put::array_len(b, 0);
                b.extend_from_slice(&u);
            });
        }
        j.commit().unwrap();
    }
    let mut e = open_with(dir.path(), config(false), None);
    assert_eq!(e.version(), 2);
    assert_eq!(e.unreleased().1.len(), 0);
    let again = update("t2", &[("a", 1)], &[("a", 7)], vec![]);
    assert_eq!(statuses(&mut e, vec![again]), [Status::Duplicate]);
    let next = update("t3", &[("a", 2)], &[("a", 8)], vec![]);
    assert_eq!(statuses(&mut e, vec![next]), [Status::Committed]);
}

fn born(task: &str, ms: u64, read: u64) -> Value {
    update(task, &[("a", read)], &[("a", read + 1)], vec![("born_ms", Value::from(ms))])
}

#[test]
fn the_dedup_horizon_refuses_what_it_cannot_check_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let horizon = pipeline_core::Horizon { window_ms: 1_000, max_entries: 0 };
    let cfg = || pipeline_core::Config { horizon, ..config(false) };
    let now = 1_700_000_000_000u64;
    {
        let mut e = open_with(dir.path(), cfg(), None);
        assert_eq!(statuses(&mut e, vec![born("old", now, 0)]), [Status::Committed]);
        assert_eq!(statuses(&mut e, vec![born("mid", now + 600, 1)]), [Status::Committed]);
        // The clock moves past old's window: old is forgotten, the horizon is its stamp.
        assert_eq!(statuses(&mut e, vec![born("new", now + 1_500, 2)]), [Status::Committed]);
        let st = e.dedup_stats();
        assert_eq!((st.entries, st.horizon_ms, st.clock_ms), (2, now, now + 1_500));
        // A repeat of old cannot be checked any more: expired, not committed, not journaled.
        let out = e.apply_batch(&[frame(vec![born("old", now, 3)])]).unwrap();
        let d = &out.decisions()[0];
        assert_eq!((d.status, d.rule.as_deref(), out.commits), (Status::Expired, Some("dedup_horizon"), 0));
        // mid is still remembered, whatever attempt repeats it.
        assert_eq!(statuses(&mut e, vec![born("mid", now + 600, 3)]), [Status::Duplicate]);
        e.close().unwrap();
    }
    let e = open_with(dir.path(), cfg(), None);
    assert_eq!((e.version(), e.dedup_stats().entries, e.dedup_stats().horizon_ms), (3, 2, now));
    let mut e = e;
    assert_eq!(statuses(&mut e, vec![born("old", now, 3)]), [Status::Expired]);
    assert_eq!(statuses(&mut e, vec![born("new", now + 1_500, 0)]), [Status::Duplicate]);
    // Without a bound (the default), nothing is forgotten.
    let all = tempfile::tempdir().unwrap();
    let mut e = open_with(all.path(), config(false), None);
    assert_eq!(statuses(&mut e, vec![born("x", 0, 0), born("y", u64::MAX / 2, 1)]).len(), 2);
    assert_eq!((e.dedup_stats().entries, e.dedup_stats().horizon_ms), (2, 0));
}

//! The commit index and the event index of whole batches (docs/PROTOCOL.md): when each
//! applies, and what it holds.
mod common;

use common::*;
use pipeline_core::{BatchOut, Engine, Status};
use rmpv::Value;

/// An update of `process` writing `data` after reading each key at version `read`.
fn of(process: &str, task: &str, read: u64, data: &[(&str, u64)]) -> Value {
    let reads: Vec<(&str, u64)> = data.iter().map(|(k, _)| (*k, read)).collect();
    let mut u = update(task, &reads, data, vec![]);
    if let Value::Map(fields) = &mut u {
        fields[1].1 = s(process);
    }
    u
}

/// Process "p" (outputs a, b, heavy.x, heavy.y) and process "q" (outputs c, b).
fn engine(dir: &std::path::Path, recipe: Option<&str>) -> Engine {
    let mut e = open_with(dir, config(false), recipe);
    e.register("q", &[], &["c".into(), "b".into()]).unwrap();
    e
}

fn batch(e: &mut Engine, updates: Vec<Value>) -> BatchOut {
    let out = e.apply_batch(&[frame(updates)]).unwrap();
    assert!(out.malformed.is_empty(), "{:?}", out.malformed);
    out
}

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|x| s(x)).collect())
}

fn commit_index(out: &BatchOut) -> Option<Value> {
    out.commit_index.as_deref().map(unpack)
}

fn event_index(out: &BatchOut) -> Option<Value> {
    out.event_index.as_deref().map(unpack)
}

#[test]
fn plain_commits_of_two_processes_give_both_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), None);
    let out = batch(
        &mut e,
        vec![
            of("p", "t1", 0, &[("a", 1)]),
            of("q", "t2", 0, &[("c", 2)]),
            of("p", "t3", 1, &[("a", 3)]),
        ],
    );
    let ids = strs(&["t1", "t2", "t3"]);
    let ones = Value::Array(vec![1.into(); 3]);
    assert_eq!(
        commit_index(&out),
        Some(Value::Array(vec![ids, ones, 1.into()]))
    );
    let keys = strs(&["a", "b", "c", "heavy.x", "heavy.y"]);
    assert_eq!(
        event_index(&out),
        Some(Value::Array(vec![1.into(), 3.into(), keys]))
    );
    // The next batch starts where this one ended, and names only its own processes.
    let out = batch(&mut e, vec![of("q", "t4", 0, &[("b", 4)])]);
    assert_eq!(
        event_index(&out),
        Some(Value::Array(vec![4.into(), 1.into(), strs(&["b", "c"])]))
    );
    assert!(out.commit_index.is_some());
}

#[test]
fn any_other_decision_leaves_out_the_commit_index_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), None);
    batch(&mut e, vec![of("p", "t0", 0, &[("a", 1)])]);
    let cases = [
        ("conflict", of("p", "x1", 0, &[("a", 9)]), Status::Conflict),
        (
            "undeclared",
            of("p", "x2", 0, &[("zz", 9)]),
            Status::Rejected,
        ),
        (
            "unknown process",
            of("nobody", "x3", 0, &[("a", 9)]),
            Status::Rejected,
        ),
        (
            "duplicate",
            of("p", "t0", 0, &[("a", 1)]),
            Status::Duplicate,
        ),
    ];
    let mut b_read = 0;
    for (i, (case, other, status)) in cases.into_iter().enumerate() {
        let v = e.version();
        let ok = of("p", &format!("ok{i}"), b_read, &[("b", 1)]);
        b_read = v + 1;
        let out = batch(&mut e, vec![ok, other]);
        let got: Vec<Status> = out.decisions().iter().map(|d| d.status).collect();
        assert_eq!(got, [Status::Committed, status], "{case}");
        assert_eq!(commit_index(&out), None, "{case}");
        let keys = strs(&["a", "b", "heavy.x", "heavy.y"]);
        assert_eq!(
            event_index(&out),
            Some(Value::Array(vec![(v + 1).into(), 1.into(), keys])),
            "{case}"
        );
    }
    let out = batch(&mut e, vec![of("p", "x4", 0, &[("a", 9)])]);
    assert_eq!(
        (out.commits, out.commit_index, out.event_index),
        (0, None, None)
    );
}

#[test]
fn a_batch_that_blocks_a_process_has_no_commit_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path(), Some(BLOCK_RECIPE));
    let out = batch(
        &mut e,
        vec![
            of("q", "t1", 0, &[("c", 1)]),
            of("p", "t2", 0, &[("a", 99)]),
            of("p", "t3", 0, &[("a", 99)]),
        ],
    );
    assert_eq!(out.newly_blocked.len(), 1);
    assert_eq!(commit_index(&out), None);
    assert_eq!(
        event_index(&out),
        Some(Value::Array(vec![1.into(), 1.into(), strs(&["b", "c"])]))
    );
    let out = batch(&mut e, vec![of("p", "t4", 0, &[("a", 1)])]);
    assert_eq!(out.decisions()[0].status, Status::Blocked);
    assert_eq!((out.commit_index, out.event_index), (None, None));
}

//! Engine features: `expect`, heavy vetting, array data, outbox, block replay.
mod common;

use common::*;
use pipeline_core::Status;
use rmpv::Value;

fn statuses(e: &mut pipeline_core::Engine, updates: Vec<Value>) -> Vec<Status> {
    let out = e.apply_batch(&[frame(updates)]).unwrap();
    assert!(out.malformed.is_empty(), "{:?}", out.malformed);
    out.decisions.iter().map(|d| d.status).collect()
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
        let d = &out.decisions[0];
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

//! Levels, dual thresholds, reset_on_success, failure kinds, blocking, cool-down, half-open.

use super::testkit::{is_pass, mp, rejected, toml, Upd};
use super::*;
use crate::audit_api::{Audit, Failure, Level, Verdict};

const LEVELS: &str = r#"
[defaults]
min_threshold = 2
max_threshold = 3
count = ["exception", "contract"]
[process.p]
rules = [
  { name = "s", field = "output.s", level = "S", max = 0 },
  { name = "a", field = "output.a", level = "A", max = 0 },
  { name = "b", field = "output.b", level = "B", max = 0 },
  { name = "b2", field = "output.b2", level = "B", max = 0 },
  { name = "c", field = "output.c", level = "C", max = 0 },
  { name = "i", field = "output.i", level = "I", max = 0 },
]
"#;

fn upd(key: &str) -> Upd {
    Upd::new("p").out(key, mp(1))
}

#[test]
fn level_s_stops_the_pipeline_without_blocking() {
    let mut a = toml(LEVELS);
    let v = upd("s").check(&mut a, 0);
    let Verdict::Stop { finding } = v else {
        panic!("expected Stop, got {v:?}")
    };
    assert_eq!((finding.rule.as_str(), finding.level), ("s", Level::S));
    assert_eq!(finding.message, "output.s = 1 > max 0");
    assert!(a.blocked().is_empty());
    assert!(a.drain_events().iter().any(|e| e.kind == EventKind::Stop));
}

#[test]
fn level_a_rejects_blocks_at_once_and_alerts() {
    let mut a = toml(LEVELS);
    let v = upd("a").check(&mut a, 0);
    let (msg, blocked) = rejected(&v);
    assert_eq!(msg, "output.a = 1 > max 0");
    assert!(blocked.unwrap().contains("rule 'a' (level A) failed"));
    assert_eq!(a.blocked(), vec!["p".to_string()]);
    assert!(a
        .admit("p", 1)
        .unwrap_err()
        .contains("blocked until unblocked"));
    let kinds: Vec<EventKind> = a.drain_events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Alert, EventKind::Blocked]);
}

#[test]
fn level_b_rejects_warns_from_min_and_blocks_at_max() {
    let mut a = toml(LEVELS);
    let v = upd("b").check(&mut a, 0);
    assert_eq!(
        rejected(&v),
        ("output.b = 1 > max 0 (failure 1 of 3)", None)
    );
    assert_eq!(a.warning_count("p"), 0);
    assert_eq!(rejected(&upd("b").check(&mut a, 0)).1, None);
    assert_eq!(a.warning_count("p"), 1, "warns from min_threshold = 2");
    assert!(a.admit("p", 0).is_ok());
    let v = upd("b").check(&mut a, 0);
    assert!(rejected(&v)
        .1
        .unwrap()
        .contains("rule 'b' failed 3 times (max_threshold 3)"));
    assert!(a.admit("p", 0).is_err());
    assert_eq!(
        a.rule_count("p", "b"),
        Some(0),
        "counters restart after a block"
    );
}

#[test]
fn level_c_commits_with_a_note_and_never_blocks() {
    let mut a = toml(LEVELS);
    for _ in 0..10 {
        let v = upd("c").check(&mut a, 0);
        let Verdict::Pass { notes } = v else {
            panic!("expected Pass, got {v:?}")
        };
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].level, Level::C);
    }
    assert!(a.blocked().is_empty());
}

#[test]
fn level_i_never_rejects_or_blocks_even_when_rules_are_counted() {
    let recipe = LEVELS
        .replace(
            r#"count = ["exception", "contract"]"#,
            r#"max_threshold = 1"#,
        )
        .replace(
            "min_threshold = 2\nmax_threshold = 3\n",
            "min_threshold = 1\n",
        );
    let mut a = toml(&recipe);
    for _ in 0..100 {
        let v = upd("i").check(&mut a, 0);
        let Verdict::Pass { notes } = v else {
            panic!("expected Pass, got {v:?}")
        };
        assert_eq!((notes[0].rule.as_str(), notes[0].level), ("i", Level::I));
    }
    assert!(a.blocked().is_empty() && a.admit("p", 0).is_ok());
    assert_eq!(a.failure_count("p"), 0);
}

#[test]
fn passing_update_has_no_notes() {
    let mut a = toml(LEVELS);
    let v = Upd::new("p")
        .out("b", mp(0))
        .out("c", mp(-1))
        .check(&mut a, 0);
    assert_eq!(v, Verdict::Pass { notes: vec![] });
}

#[test]
fn most_severe_finding_wins_and_notes_are_not_lost_on_pass() {
    let mut a = toml(LEVELS);
    let v = Upd::new("p")
        .out("c", mp(1))
        .out("i", mp(1))
        .check(&mut a, 0);
    let Verdict::Pass { notes } = v else { panic!() };
    assert_eq!(notes.len(), 2);
    let v = Upd::new("p")
        .out("b", mp(1))
        .out("a", mp(1))
        .out("c", mp(1))
        .check(&mut a, 0);
    let Verdict::Reject { finding, .. } = v else {
        panic!()
    };
    assert_eq!(finding.level, Level::A);
    let v = Upd::new("p")
        .out("a", mp(1))
        .out("s", mp(1))
        .check(&mut a, 0);
    assert!(matches!(v, Verdict::Stop { .. }));
}

const COUNTED: &str = r#"
[defaults]
min_threshold = 1
max_threshold = 3
[process.p]
rules = [
  { name = "x", field = "output.x", max = 0 },
  { name = "y", field = "output.y", max = 0, max_threshold = 10 },
]
"#;

#[test]
fn one_rejected_update_counts_once_for_the_process() {
    let mut a = toml(COUNTED);
    let v = Upd::new("p")
        .out("x", mp(1))
        .out("y", mp(1))
        .check(&mut a, 0);
    assert_eq!(rejected(&v).1, None);
    assert_eq!(
        a.failure_count("p"),
        1,
        "two rules fired, one failure of the process"
    );
    assert_eq!(a.rule_count("p", "x"), Some(1));
    assert_eq!(a.rule_count("p", "y"), Some(1));
}

#[test]
fn rule_failures_count_for_the_process_only_when_configured() {
    let mut a = toml(COUNTED);
    for _ in 0..2 {
        Upd::new("p").out("y", mp(1)).check(&mut a, 0);
    }
    let v = Upd::new("p").out("y", mp(1)).check(&mut a, 0);
    assert!(rejected(&v)
        .1
        .unwrap()
        .contains("3 failures reached max_threshold 3 (last: rule"));
    let mut a = toml(&COUNTED.replace(
        "max_threshold = 3\n",
        "max_threshold = 3\ncount = [\"exception\"]\n",
    ));
    for _ in 0..9 {
        assert_eq!(
            rejected(&Upd::new("p").out("y", mp(1)).check(&mut a, 0)).1,
            None
        );
    }
    assert_eq!(a.failure_count("p"), 0);
    assert!(
        rejected(&Upd::new("p").out("y", mp(1)).check(&mut a, 0))
            .1
            .is_some(),
        "rule y blocks at its own 10"
    );
}

#[test]
fn reset_on_success_on_clears_the_rule_counter() {
    let mut a = toml(&COUNTED.replace("max_threshold = 3\n", "max_threshold = 3\ncount = []\n"));
    for _ in 0..4 {
        Upd::new("p").out("x", mp(1)).check(&mut a, 0);
        Upd::new("p").out("x", mp(1)).check(&mut a, 0);
        a.success("p");
        assert_eq!(a.rule_count("p", "x"), Some(0));
    }
    assert!(a.blocked().is_empty());
}

#[test]
fn reset_on_success_off_keeps_counting_across_successes() {
    let recipe = COUNTED
        .replace("max_threshold = 3\n", "max_threshold = 3\ncount = []\n")
        .replace(r#"max = 0 },"#, r#"max = 0, reset_on_success = false },"#);
    let mut a = toml(&recipe);
    Upd::new("p").out("x", mp(1)).check(&mut a, 0);
    a.success("p");
    Upd::new("p").out("x", mp(1)).check(&mut a, 0);
    a.success("p");
    assert_eq!(a.rule_count("p", "x"), Some(2));
    let v = Upd::new("p").out("x", mp(1)).check(&mut a, 0);
    assert!(rejected(&v).1.is_some());
}

#[test]
fn failure_kinds_are_counted_per_count_list() {
    let mut a = toml(LEVELS);
    assert_eq!(a.failure("p", Failure::Conflict, 0), None);
    assert_eq!(a.failure("p", Failure::Timeout, 0), None);
    assert_eq!(
        a.failure_count("p"),
        0,
        "conflict and timeout are not in count"
    );
    assert_eq!(a.failure("p", Failure::Exception, 0), None);
    assert_eq!(a.failure("p", Failure::Contract, 0), None);
    assert_eq!(a.warning_count("p"), 1, "warning at min_threshold 2");
    let reason = a.failure("p", Failure::Exception, 0).expect("blocks at 3");
    assert_eq!(
        reason,
        "3 failures reached max_threshold 3 (last: exception)"
    );
    assert!(a.admit("p", 0).is_err());
    assert_eq!(
        a.failure("p", Failure::Exception, 0),
        None,
        "not counted while blocked"
    );
}

#[test]
fn every_kind_counts_by_default_and_success_resets_the_process_counter() {
    let mut a = toml("[process.q]\n");
    for kind in [
        Failure::Rule,
        Failure::Contract,
        Failure::Exception,
        Failure::Timeout,
        Failure::Conflict,
    ] {
        a.failure("q", kind, 0);
        assert_eq!(a.failure_count("q"), 1, "{kind:?}");
        a.success("q");
        assert_eq!(a.failure_count("q"), 0);
    }
    let mut a = toml("[defaults]\nreset_on_success = false\n");
    a.failure("unknown-process", Failure::Timeout, 0);
    a.success("unknown-process");
    a.failure("unknown-process", Failure::Timeout, 0);
    assert!(
        a.failure("unknown-process", Failure::Timeout, 0).is_some(),
        "defaults apply to every process"
    );
}

const COOL: &str = r#"
[defaults]
cooldown_ms = 1000
max_threshold = 1
count = ["exception"]
[process.p]
rules = [{ name = "x", field = "output.x", max = 0 }]
"#;

#[test]
fn cooldown_then_half_open_admits_exactly_one_and_success_clears() {
    let mut a = toml(COOL);
    assert!(a.failure("p", Failure::Exception, 100).is_some());
    assert_eq!(
        a.block_state("p"),
        BlockState::Blocked {
            reason: "1 failures reached max_threshold 1 (last: exception)".into(),
            until_ms: Some(1100)
        }
    );
    assert!(a
        .admit("p", 1099)
        .unwrap_err()
        .contains("blocked until 1100 ms"));
    assert!(a.admit("p", 1100).is_ok());
    assert!(a.admit("p", 1101).unwrap_err().contains("half-open"));
    assert_eq!(a.blocked(), vec!["p".to_string()]);
    assert!(is_pass(&Upd::new("p").out("x", mp(0)).check(&mut a, 1102)));
    a.success("p");
    assert_eq!(a.block_state("p"), BlockState::Open);
    assert!(a.admit("p", 1103).is_ok() && a.admit("p", 1104).is_ok());
}

#[test]
fn half_open_trial_that_fails_blocks_again_for_another_cooldown() {
    let mut a = toml(COOL);
    a.failure("p", Failure::Exception, 0);
    a.admit("p", 1000).unwrap();
    let v = Upd::new("p").out("x", mp(5)).check(&mut a, 1500);
    assert!(rejected(&v).1.is_some());
    assert!(matches!(
        a.block_state("p"),
        BlockState::Blocked {
            until_ms: Some(2500),
            ..
        }
    ));
    a.admit("p", 2500).unwrap();
    assert!(a.failure("p", Failure::Exception, 2600).is_some());
    assert!(a.admit("p", 3599).is_err());
}

#[test]
fn half_open_trial_lost_to_an_uncounted_failure_frees_the_slot() {
    let mut a = toml(COOL);
    a.failure("p", Failure::Exception, 0);
    a.admit("p", 1000).unwrap();
    assert_eq!(a.failure("p", Failure::Conflict, 1001), None);
    assert!(a.admit("p", 1002).is_ok(), "the retry becomes the trial");
    assert!(a.admit("p", 1003).is_err());
}

#[test]
fn without_cooldown_a_block_lasts_until_unblock() {
    let mut a = toml(&COOL.replace("cooldown_ms = 1000", "cooldown_ms = 0"));
    a.failure("p", Failure::Exception, 0);
    assert!(a.admit("p", u64::MAX).is_err());
    assert!(a.unblock("p"));
    assert!(!a.unblock("p"));
    assert!(a.admit("p", 0).is_ok() && a.blocked().is_empty());
    let kinds: Vec<EventKind> = a.drain_events().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventKind::Blocked, EventKind::Unblocked]);
}

#[test]
fn no_audit_processes_pass_and_unknown_unblock_is_false() {
    let mut a = toml("");
    assert!(is_pass(
        &Upd::new("z").out("x", mp("anything")).check(&mut a, 0)
    ));
    assert!(!a.unblock("z"));
    assert!(a.admit("z", 0).is_ok());
}

//! Per-process runtime state: rule counters, the failure counter, the block (with optional
//! cool-down and a half-open trial), and the event log the engine may drain.

use std::collections::VecDeque;

/// Where a process stands with respect to blocking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Updates are admitted.
    Open,
    /// Updates are refused until `unblock`, or until `until_ms` when a cool-down is set.
    Blocked {
        reason: String,
        until_ms: Option<u64>,
    },
    /// The cool-down ended: one trial update is admitted. Its success clears the block, its
    /// failure blocks again for another cool-down.
    HalfOpen {
        reason: String,
        trial_in_flight: bool,
    },
}

/// What an `AuditEvent` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A counter reached `min_threshold` (or more) without reaching `max_threshold`.
    Warning,
    /// The process was blocked (its message is the reason).
    Blocked,
    /// A level-A rule fired: the process is blocked at once and an operator should look.
    Alert,
    /// A cool-down ended; one trial update was admitted.
    HalfOpen,
    /// The block was lifted (by an operator, or by a successful trial update).
    Unblocked,
    /// A level-S rule fired: the pipeline must stop.
    Stop,
}

/// One entry of the auditor's event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub process: String,
    pub kind: EventKind,
    pub message: String,
}

/// The counters and block of one process.
#[derive(Clone, Debug)]
pub(crate) struct ProcState {
    /// Consecutive failures of each B rule, by index in the recipe's rules.
    pub(crate) rule_counts: Vec<u32>,
    /// Counted failures of the process (kinds in `count`).
    pub(crate) failures: u32,
    /// Warnings recorded (counters at or past `min_threshold`).
    pub(crate) warnings: u64,
    pub(crate) block: BlockState,
}

impl ProcState {
    pub(crate) fn new(rules: usize) -> Self {
        ProcState {
            rule_counts: vec![0; rules],
            failures: 0,
            warnings: 0,
            block: BlockState::Open,
        }
    }

    /// Blocked or half-open with its trial out: failures are not counted then.
    pub(crate) fn is_hard_blocked(&self) -> bool {
        matches!(self.block, BlockState::Blocked { .. })
    }

    pub(crate) fn in_trial(&self) -> bool {
        matches!(
            self.block,
            BlockState::HalfOpen {
                trial_in_flight: true,
                ..
            }
        )
    }

    /// The reason of the current block, if any.
    pub(crate) fn block_reason(&self) -> Option<&str> {
        match &self.block {
            BlockState::Open => None,
            BlockState::Blocked { reason, .. } | BlockState::HalfOpen { reason, .. } => {
                Some(reason)
            }
        }
    }

    /// Block now; counters start again from zero once the block is lifted.
    pub(crate) fn block(&mut self, reason: String, cooldown_ms: u64, now_ms: u64) {
        let until_ms = (cooldown_ms > 0).then(|| now_ms.saturating_add(cooldown_ms));
        self.block = BlockState::Blocked { reason, until_ms };
        self.clear_counters();
    }

    pub(crate) fn clear_counters(&mut self) {
        self.rule_counts.iter_mut().for_each(|c| *c = 0);
        self.failures = 0;
    }

    /// Admit an update or say why not. Returns Ok(true) when this admits a half-open trial.
    pub(crate) fn admit(&mut self, process: &str, now_ms: u64) -> Result<bool, String> {
        match &mut self.block {
            BlockState::Open => Ok(false),
            BlockState::Blocked {
                reason,
                until_ms: Some(t),
            } if now_ms >= *t => {
                let reason = std::mem::take(reason);
                self.block = BlockState::HalfOpen {
                    reason,
                    trial_in_flight: true,
                };
                Ok(true)
            }
            BlockState::Blocked { reason, until_ms } => Err(match until_ms {
                Some(t) => format!("process '{process}' is blocked until {t} ms: {reason}"),
                None => format!("process '{process}' is blocked until unblocked: {reason}"),
            }),
            BlockState::HalfOpen {
                trial_in_flight: false,
                ..
            } => {
                self.set_trial(true);
                Ok(true)
            }
            BlockState::HalfOpen {
                reason,
                trial_in_flight: true,
            } => Err(format!(
                "process '{process}' is half-open, its one trial update is in flight: {reason}"
            )),
        }
    }

    pub(crate) fn set_trial(&mut self, in_flight: bool) {
        if let BlockState::HalfOpen {
            trial_in_flight, ..
        } = &mut self.block
        {
            *trial_in_flight = in_flight;
        }
    }
}

/// A bounded event log: the oldest entries go when it is full.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    events: VecDeque<AuditEvent>,
    pub(crate) dropped: u64,
}

impl EventLog {
    const CAP: usize = 4096;

    pub(crate) fn push(&mut self, process: &str, kind: EventKind, message: String) {
        if self.events.len() == Self::CAP {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(AuditEvent {
            process: process.to_string(),
            kind,
            message,
        });
    }

    pub(crate) fn drain(&mut self) -> Vec<AuditEvent> {
        self.events.drain(..).collect()
    }
}

//! The seam between the engine (state, CAS, journal) and the auditor (recipes, rules,
//! thresholds, blocking). The engine calls these in this order for every update:
//! `admit` -> (`failure(Exception)` if the worker raised) -> contract check
//! (`failure(Contract)` on a violation) -> `check` -> CAS (`failure(Conflict)`) ->
//! commit -> `success`.

/// Audit levels, each with exactly one effect (see docs/AUDIT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Stop the pipeline cleanly with the reason.
    S,
    /// Reject, block the process and alert.
    A,
    /// Reject; the process blocks at its threshold.
    B,
    /// Commit and warn.
    C,
    /// Commit and record only.
    I,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::S => "S",
            Level::A => "A",
            Level::B => "B",
            Level::C => "C",
            Level::I => "I",
        }
    }
}

/// What kind of failure is being counted against a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    Rule,
    Contract,
    Exception,
    Timeout,
    Conflict,
}

/// A small value: a name and its raw msgpack encoding.
pub struct Field<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// A heavy array: dtype string (numpy, e.g. "<f8"), shape, and its bytes when mapped.
pub struct ArrayField<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [u64],
    pub data: Option<&'a [u8]>,
}

/// Everything the rules of one update may look at.
pub struct AuditInput<'a> {
    pub process: &'a str,
    /// The task's arguments (input rules: field names `input.<name>` or bare `<name>`).
    pub args: &'a [Field<'a>],
    /// The small values written (output rules: `output.<key>` or bare `<key>`).
    pub writes: &'a [Field<'a>],
    /// The heavy arrays written (keys `heavy.<name>`).
    pub arrays: &'a [ArrayField<'a>],
}

/// One rule that fired.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub rule: String,
    pub level: Level,
    pub message: String,
}

/// The auditor's verdict on one update's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Commit; `notes` holds the C (warn) and I (record) findings.
    Pass { notes: Vec<Finding> },
    /// Reject. `blocked` is Some(reason) when the process is blocked as of this update.
    Reject { finding: Finding, blocked: Option<String> },
    /// An S rule fired: reject and stop the pipeline with this reason.
    Stop { finding: Finding },
}

/// The auditor as the engine sees it.
pub trait Audit: Send {
    /// Err(reason) while the process is blocked (a half-open cool-down admits one update).
    fn admit(&mut self, process: &str, now_ms: u64) -> Result<(), String>;
    /// Run the process's rules and apply thresholds to what fired.
    fn check(&mut self, input: &AuditInput<'_>, now_ms: u64) -> Verdict;
    /// Count a failure that is not a rule (if configured to count). Some(reason) when the
    /// process becomes blocked by it.
    fn failure(&mut self, process: &str, kind: Failure, now_ms: u64) -> Option<String>;
    /// The update committed (resets counters configured with reset_on_success; closes a
    /// half-open block).
    fn success(&mut self, process: &str);
    /// Lift a block; true if the process was blocked.
    fn unblock(&mut self, process: &str) -> bool;
    /// The processes blocked now.
    fn blocked(&self) -> Vec<String>;
    /// Whether the process has rules that read array bytes (finite, min, max, checksum):
    /// only then does the engine map heavy segments for it.
    fn reads_array_data(&self, _process: &str) -> bool {
        false
    }
    /// Re-establish a block found in the journal (replay after a restart); `at_ms` is when
    /// it was imposed, so a cool-down runs from then.
    fn restore_block(&mut self, _process: &str, _reason: &str, _at_ms: u64) {}
}

/// The auditor used when no recipe is configured: every update passes, nothing blocks.
#[derive(Default)]
pub struct NoAudit;

impl Audit for NoAudit {
    fn admit(&mut self, _process: &str, _now_ms: u64) -> Result<(), String> {
        Ok(())
    }
    fn check(&mut self, _input: &AuditInput<'_>, _now_ms: u64) -> Verdict {
        Verdict::Pass { notes: Vec::new() }
    }
    fn failure(&mut self, _process: &str, _kind: Failure, _now_ms: u64) -> Option<String> {
        None
    }
    fn success(&mut self, _process: &str) {}
    fn unblock(&mut self, _process: &str) -> bool {
        false
    }
    fn blocked(&self) -> Vec<String> {
        Vec::new()
    }
}

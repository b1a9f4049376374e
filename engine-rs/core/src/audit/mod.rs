//! The auditor: audit recipes (TOML, or Theus-style YAML), rules over an update's inputs,
//! outputs and heavy arrays, levels S/A/B/C/I, dual thresholds, failure counting and
//! blocking with an optional cool-down and half-open trial. See docs/AUDIT.md.
//!
//! The engine builds one with `Auditor::from_file` and uses it through `audit_api::Audit`.

mod array;
mod cond;
mod conf;
mod dtype;
mod error;
mod eval;
mod recipe;
mod scan;
mod schema;
mod state;
mod value;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests_array;
#[cfg(test)]
mod tests_levels;
#[cfg(test)]
mod tests_recipe;
#[cfg(test)]
mod tests_scan;

use std::path::Path;
use std::sync::Arc;

use crate::fxhash::FxMap;
use crate::audit_api::{Audit, AuditInput, Failure, Finding, Level, Verdict};

pub use dtype::{DKind, DType};
pub use error::AuditError;
pub use scan::{
    crc32, scan, scan_f32, scan_f64, scan_i32, scan_i64, scan_u8, IntStats, ScanStats, Stats,
    PAR_MIN_BYTES,
};
pub use state::{AuditEvent, BlockState, EventKind};

use recipe::{Recipe, Recipes};
use state::{EventLog, ProcState};

/// The recipe-driven auditor.
#[derive(Debug)]
pub struct Auditor {
    recipes: Recipes,
    states: FxMap<String, ProcState>,
    events: EventLog,
}

impl Auditor {
    /// Load a recipe file: `.toml`, or `.yaml`/`.yml`.
    pub fn from_file(path: &Path) -> Result<Auditor, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = path.display().to_string();
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("toml") => Self::from_conf(&conf::from_toml(&text, &file)?, &file),
            Some("yaml" | "yml") => Self::from_conf(&conf::from_yaml(&text, &file)?, &file),
            _ => Err(AuditError::Format {
                path: path.to_path_buf(),
            }),
        }
    }

    /// Load a TOML recipe from text.
    pub fn from_toml_str(text: &str) -> Result<Auditor, AuditError> {
        Self::from_conf(&conf::from_toml(text, "<toml>")?, "<toml>")
    }

    /// Load a YAML recipe (Theus' `audit:`/`process_recipes:` or this schema) from text.
    pub fn from_yaml_str(text: &str) -> Result<Auditor, AuditError> {
        Self::from_conf(&conf::from_yaml(text, "<yaml>")?, "<yaml>")
    }

    fn from_conf(conf: &conf::Conf, file: &str) -> Result<Auditor, AuditError> {
        let doc = schema::read_document(conf, file)?;
        Ok(Auditor {
            recipes: recipe::resolve(&doc, file)?,
            states: FxMap::default(),
            events: EventLog::default(),
        })
    }

    /// Where `process` stands now.
    pub fn block_state(&self, process: &str) -> BlockState {
        self.states
            .get(process)
            .map_or(BlockState::Open, |s| s.block.clone())
    }

    /// The process's counted failures since its last reset.
    pub fn failure_count(&self, process: &str) -> u32 {
        self.states.get(process).map_or(0, |s| s.failures)
    }

    /// A rule's consecutive failure count; None if the process has no such rule.
    pub fn rule_count(&self, process: &str, rule: &str) -> Option<u32> {
        let index = self
            .recipes
            .get(process)
            .rules
            .iter()
            .position(|r| r.name == rule)?;
        Some(self.states.get(process).map_or(0, |s| s.rule_counts[index]))
    }

    /// Warnings recorded for the process (counters at or past `min_threshold`).
    pub fn warning_count(&self, process: &str) -> u64 {
        self.states.get(process).map_or(0, |s| s.warnings)
    }

    /// Take the events recorded since the last call (warnings, blocks, alerts, unblocks,
    /// stops). The log keeps the newest 4096.
    pub fn drain_events(&mut self) -> Vec<AuditEvent> {
        self.events.drain()
    }

    /// The names of the processes that have a recipe of their own.
    pub fn processes(&self) -> Vec<String> {
        let mut names: Vec<String> = self.recipes.processes.keys().cloned().collect();
        names.sort();
        names
    }

    fn state(&mut self, process: &str, recipe: &Recipe) -> &mut ProcState {
        self.states
            .entry(process.to_string())
            .or_insert_with(|| ProcState::new(recipe.rules.len()))
    }

    /// Count one rejected update against the fired B rules and the process; the reason to
    /// block, if a threshold is reached.
    fn count_rejection(
        &mut self,
        process: &str,
        recipe: &Recipe,
        fired: &mut [(usize, Finding)],
    ) -> Option<String> {
        let state = self.state(process, recipe);
        let mut reason = None;
        let mut warnings = Vec::new();
        for (i, f) in fired.iter_mut().filter(|(_, f)| f.level == Level::B) {
            let rule = &recipe.rules[*i];
            state.rule_counts[*i] += 1;
            let n = state.rule_counts[*i];
            f.message = format!("{} (failure {n} of {})", f.message, rule.max_threshold);
            if n >= rule.max_threshold {
                reason.get_or_insert(format!(
                    "rule '{}' failed {n} times (max_threshold {}): {}",
                    rule.name, rule.max_threshold, f.message
                ));
            } else if n >= rule.min_threshold {
                warnings.push(format!(
                    "rule '{}' failed {n} of {} times: {}",
                    rule.name, rule.max_threshold, f.message
                ));
            }
        }
        if let Some((_, a)) = fired.iter().find(|(_, f)| f.level == Level::A) {
            reason = Some(format!("rule '{}' (level A) failed: {}", a.rule, a.message));
        }
        if recipe.settings.count.contains(Failure::Rule) {
            let detail = fired
                .first()
                .map_or(String::new(), |(_, f)| f.message.clone());
            if let Some(r) = self.count_failure(process, recipe, "rule", &detail) {
                reason.get_or_insert(r);
            }
        }
        let state = self.state(process, recipe);
        state.warnings += warnings.len() as u64;
        for w in warnings {
            self.events.push(process, state::EventKind::Warning, w);
        }
        reason
    }

    /// Add one to the process's failure counter; the reason to block at max_threshold.
    fn count_failure(
        &mut self,
        process: &str,
        recipe: &Recipe,
        kind: &str,
        detail: &str,
    ) -> Option<String> {
        let s = &recipe.settings;
        let state = self.state(process, recipe);
        state.failures += 1;
        let n = state.failures;
        if n >= s.max_threshold {
            return Some(format!(
                "{n} failures reached max_threshold {} (last: {kind}{}{detail})",
                s.max_threshold,
                if detail.is_empty() { "" } else { ": " }
            ));
        }
        if n >= s.min_threshold {
            state.warnings += 1;
            let msg = format!(
                "{n} of {} failures before block (last: {kind})",
                s.max_threshold
            );
            self.events.push(process, EventKind::Warning, msg);
        }
        None
    }

    /// Block the process; A rules raise an alert as well.
    fn block(&mut self, process: &str, recipe: &Recipe, reason: &str, alert: bool, now_ms: u64) {
        let cooldown = recipe.settings.cooldown_ms;
        self.state(process, recipe)
            .block(reason.to_string(), cooldown, now_ms);
        if alert {
            self.events
                .push(process, EventKind::Alert, reason.to_string());
        }
        self.events
            .push(process, EventKind::Blocked, reason.to_string());
    }
}

impl Audit for Auditor {
    fn admit(&mut self, process: &str, now_ms: u64) -> Result<(), String> {
        // No process has a failure or a block yet (the common case): nothing to look up.
        if self.states.is_empty() {
            return Ok(());
        }
        let Some(state) = self.states.get_mut(process) else {
            return Ok(());
        };
        if state.admit(process, now_ms)? {
            let reason = state.block_reason().unwrap_or_default().to_string();
            self.events.push(
                process,
                EventKind::HalfOpen,
                format!("trial update admitted after: {reason}"),
            );
        }
        Ok(())
    }

    fn check(&mut self, input: &AuditInput<'_>, now_ms: u64) -> Verdict {
        let process = input.process;
        let recipe = self.recipes.get(process);
        if recipe.rules.is_empty() {
            return Verdict::Pass { notes: Vec::new() };
        }
        let mut fired = eval::evaluate(recipe, input);
        if fired.is_empty() {
            // The common case: nothing fired, nothing to count (no clone of the recipe).
            return Verdict::Pass { notes: Vec::new() };
        }
        let recipe = Arc::clone(recipe);
        if let Some((_, stop)) = fired.iter().find(|(_, f)| f.level == Level::S) {
            let stop = stop.clone();
            self.events.push(
                process,
                EventKind::Stop,
                format!("rule '{}': {}", stop.rule, stop.message),
            );
            if self.state(process, &recipe).in_trial() {
                let reason = format!(
                    "half-open trial update stopped the pipeline: {}",
                    stop.message
                );
                self.block(process, &recipe, &reason, false, now_ms);
            }
            return Verdict::Stop { finding: stop };
        }
        let rejecting = fired
            .iter()
            .any(|(_, f)| matches!(f.level, Level::A | Level::B));
        if !rejecting {
            let notes = fired.into_iter().map(|(_, f)| f).collect();
            return Verdict::Pass { notes };
        }
        let state = self.state(process, &recipe);
        if !state.is_hard_blocked() {
            let in_trial = state.in_trial();
            let has_a = fired.iter().any(|(_, f)| f.level == Level::A);
            let mut reason = self.count_rejection(process, &recipe, &mut fired);
            if in_trial && reason.is_none() {
                let first = &fired
                    .iter()
                    .find(|(_, f)| f.level != Level::C && f.level != Level::I);
                let detail = first.map_or(String::new(), |(_, f)| f.message.clone());
                reason = Some(format!("half-open trial update rejected: {detail}"));
            }
            if let Some(r) = reason {
                self.block(process, &recipe, &r, has_a, now_ms);
            }
        }
        let finding = fired
            .iter()
            .find(|(_, f)| f.level == Level::A)
            .or_else(|| fired.iter().find(|(_, f)| f.level == Level::B))
            .map(|(_, f)| f.clone())
            .expect("a rejecting finding exists");
        let blocked = self
            .states
            .get(process)
            .and_then(|s| s.block_reason())
            .map(str::to_string);
        Verdict::Reject { finding, blocked }
    }

    fn failure(&mut self, process: &str, kind: Failure, now_ms: u64) -> Option<String> {
        let recipe = Arc::clone(self.recipes.get(process));
        let name = schema::ALL_KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("failure", |(_, n)| n);
        let state = self.state(process, &recipe);
        if state.is_hard_blocked() {
            return None;
        }
        let in_trial = state.in_trial();
        if !recipe.settings.count.contains(kind) {
            // Not this process's fault by configuration: free the trial slot for a retry.
            state.set_trial(false);
            return None;
        }
        let mut reason = self.count_failure(process, &recipe, name, "");
        if in_trial && reason.is_none() {
            reason = Some(format!("half-open trial update failed: {name}"));
        }
        let reason = reason?;
        self.block(process, &recipe, &reason, false, now_ms);
        Some(reason)
    }

    fn success(&mut self, process: &str) {
        if self.states.is_empty() {
            return;
        }
        let Some(state) = self.states.get_mut(process) else {
            return;
        };
        let recipe = self.recipes.get(process);
        for (count, rule) in state.rule_counts.iter_mut().zip(&recipe.rules) {
            if rule.reset_on_success {
                *count = 0;
            }
        }
        if recipe.settings.reset_on_success {
            state.failures = 0;
        }
        if let BlockState::HalfOpen { reason, .. } = &state.block {
            let msg = format!("trial update succeeded; block lifted (was: {reason})");
            state.block = BlockState::Open;
            self.events.push(process, EventKind::Unblocked, msg);
        }
    }

    fn unblock(&mut self, process: &str) -> bool {
        let Some(state) = self.states.get_mut(process) else {
            return false;
        };
        if state.block == BlockState::Open {
            return false;
        }
        state.block = BlockState::Open;
        state.clear_counters();
        self.events.push(
            process,
            EventKind::Unblocked,
            "unblocked by operator".into(),
        );
        true
    }

    fn restore_block(&mut self, process: &str, reason: &str, at_ms: u64) {
        let recipe = Arc::clone(self.recipes.get(process));
        self.block(process, &recipe, reason, false, at_ms);
    }

    fn reads_array_data(&self, process: &str) -> bool {
        let rules = &self.recipes.get(process).rules;
        rules
            .iter()
            .any(|r| matches!(&r.check, cond::Check::Array(a) if a.reads_data()))
    }

    fn blocked(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .states
            .iter()
            .filter(|(_, s)| s.block != BlockState::Open)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }
}

//! Reads a `Conf` tree into recipe specs: `[defaults]` (or Theus' `audit:`), and
//! `[process.<name>]` (or Theus' `process_recipes:`) with `rules`, `inputs`, `outputs`.
//! Unknown keys are errors, so a typo never silently disables a rule.

use crate::audit_api::{Failure, Level};

use super::cond::Check;
use super::conf::Conf;
use super::error::{at_process, at_rule, AuditError};

/// All failure kinds, in the order of the `count` bit set.
pub(crate) const ALL_KINDS: [(Failure, &str); 5] = [
    (Failure::Rule, "rule"),
    (Failure::Contract, "contract"),
    (Failure::Exception, "exception"),
    (Failure::Timeout, "timeout"),
    (Failure::Conflict, "conflict"),
];

/// A set of failure kinds, one bit per kind of `ALL_KINDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KindSet(pub(crate) u8);

impl KindSet {
    pub(crate) const ALL: KindSet = KindSet(0b1_1111);

    pub(crate) fn contains(self, kind: Failure) -> bool {
        let bit = ALL_KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        self.0 & (1 << bit) != 0
    }
}

/// Settings that a process or rule may leave unset (inherited from its parent or defaults).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PartialSettings {
    pub(crate) level: Option<Level>,
    pub(crate) min_threshold: Option<u32>,
    pub(crate) max_threshold: Option<u32>,
    pub(crate) reset_on_success: Option<bool>,
    pub(crate) count: Option<KindSet>,
    pub(crate) cooldown_ms: Option<u64>,
}

impl PartialSettings {
    /// `self` with unset values taken from `base`.
    pub(crate) fn over(&self, base: &PartialSettings) -> PartialSettings {
        PartialSettings {
            level: self.level.or(base.level),
            min_threshold: self.min_threshold.or(base.min_threshold),
            max_threshold: self.max_threshold.or(base.max_threshold),
            reset_on_success: self.reset_on_success.or(base.reset_on_success),
            count: self.count.or(base.count),
            cooldown_ms: self.cooldown_ms.or(base.cooldown_ms),
        }
    }
}

/// Where a rule looks: a task argument, a written small value, or a heavy array.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Target {
    Input(String),
    Output(String),
    Heavy(String),
}

/// One rule as written (thresholds not yet resolved).
#[derive(Clone, Debug)]
pub(crate) struct RuleSpec {
    pub(crate) name: String,
    pub(crate) field: String,
    pub(crate) target: Target,
    /// Only level, thresholds and reset_on_success are read from here.
    pub(crate) settings: PartialSettings,
    pub(crate) required: bool,
    pub(crate) message: Option<String>,
    pub(crate) check: Check,
}

/// One `[process.<name>]` table as written.
#[derive(Clone, Debug)]
pub(crate) struct ProcessSpec {
    pub(crate) name: String,
    pub(crate) inherits: Vec<String>,
    pub(crate) settings: PartialSettings,
    pub(crate) rules: Vec<RuleSpec>,
}

/// A whole recipe document as written.
#[derive(Clone, Debug)]
pub(crate) struct Document {
    pub(crate) defaults: PartialSettings,
    pub(crate) processes: Vec<ProcessSpec>,
}

/// A map being read: takes keys one by one and reports the ones nobody took.
pub(crate) struct Table<'a> {
    entries: &'a [(String, Conf)],
    used: Vec<bool>,
    duplicate: Option<String>,
    pub(crate) file: &'a str,
    pub(crate) at: String,
}

impl<'a> Table<'a> {
    pub(crate) fn new(conf: &'a Conf, file: &'a str, at: String) -> Result<Self, AuditError> {
        let Some(entries) = conf.as_map() else {
            return Err(schema(
                file,
                &at,
                format!("expected a table, found {}", conf.kind()),
            ));
        };
        Ok(Table {
            entries,
            used: vec![false; entries.len()],
            duplicate: None,
            file,
            at,
        })
    }

    /// The value of the first of `keys` present (aliases), marking it read.
    /// Giving two spellings of one key is reported by `finish`.
    pub(crate) fn take(&mut self, keys: &[&str]) -> Option<(&'a str, &'a Conf)> {
        let mut found = None;
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if keys.contains(&k.as_str()) && !self.used[i] {
                self.used[i] = true;
                if found.is_some() {
                    self.duplicate
                        .get_or_insert(format!("give only one of {}", keys.join(" or ")));
                }
                found = found.or(Some((k.as_str(), v)));
            }
        }
        found
    }

    pub(crate) fn err(&self, message: impl Into<String>) -> AuditError {
        schema(self.file, &self.at, message.into())
    }

    pub(crate) fn string(&mut self, keys: &[&str]) -> Result<Option<String>, AuditError> {
        match self.take(keys) {
            None => Ok(None),
            Some((_, Conf::Str(s))) => Ok(Some(s.clone())),
            Some((k, other)) => {
                Err(self.err(format!("'{k}' must be a string, found {}", other.kind())))
            }
        }
    }

    pub(crate) fn boolean(&mut self, keys: &[&str]) -> Result<Option<bool>, AuditError> {
        match self.take(keys) {
            None => Ok(None),
            Some((_, Conf::Bool(b))) => Ok(Some(*b)),
            Some((k, other)) => Err(self.err(format!(
                "'{k}' must be true or false, found {}",
                other.kind()
            ))),
        }
    }

    pub(crate) fn uint(&mut self, keys: &[&str], max: u64) -> Result<Option<u64>, AuditError> {
        match self.take(keys) {
            None => Ok(None),
            Some((_, Conf::Int(i))) if *i >= 0 && *i <= i128::from(max) => Ok(Some(*i as u64)),
            Some((k, other)) => Err(self.err(format!(
                "'{k}' must be an integer from 0 to {max}, found {}",
                other.render()
            ))),
        }
    }

    /// Error on the first key nobody read.
    pub(crate) fn finish(self) -> Result<(), AuditError> {
        if let Some(message) = &self.duplicate {
            return Err(self.err(message.clone()));
        }
        match self
            .entries
            .iter()
            .zip(&self.used)
            .find(|(_, used)| !**used)
        {
            None => Ok(()),
            Some(((k, _), _)) => Err(self.err(format!("unknown key '{k}'"))),
        }
    }
}

pub(crate) fn schema(file: &str, at: &str, message: String) -> AuditError {
    AuditError::Schema {
        file: file.to_string(),
        at: at.to_string(),
        message,
    }
}

/// Read a whole recipe document.
pub(crate) fn read_document(conf: &Conf, file: &str) -> Result<Document, AuditError> {
    let mut top = Table::new(conf, file, "top level".into())?;
    let defaults = match take_one(&mut top, &["defaults", "audit"])? {
        Some(d) => {
            let mut t = Table::new(d, file, "defaults".into())?;
            let settings = read_settings(&mut t, true)?;
            t.finish()?;
            settings
        }
        None => PartialSettings::default(),
    };
    let mut processes = Vec::new();
    if let Some(procs) = take_one(&mut top, &["process", "process_recipes"])? {
        let table = Table::new(procs, file, "process".into())?;
        for (name, body) in table.entries {
            processes.push(read_process(name, body, file)?);
        }
    }
    top.finish()?;
    Ok(Document {
        defaults,
        processes,
    })
}

/// At most one of two spellings of a section (`defaults` or `audit`).
fn take_one<'a>(top: &mut Table<'a>, keys: &[&str]) -> Result<Option<&'a Conf>, AuditError> {
    let first = top.take(keys);
    if let Some(message) = &top.duplicate {
        return Err(top.err(message.clone()));
    }
    Ok(first.map(|(_, v)| v))
}

fn read_settings(t: &mut Table<'_>, whole: bool) -> Result<PartialSettings, AuditError> {
    let mut s = PartialSettings {
        level: t
            .string(&["level"])?
            .map(|l| parse_level(&l, t))
            .transpose()?,
        min_threshold: t
            .uint(&["min_threshold", "threshold_min"], u32::MAX.into())?
            .map(|v| v as u32),
        max_threshold: t
            .uint(&["max_threshold", "threshold_max"], u32::MAX.into())?
            .map(|v| v as u32),
        reset_on_success: t.boolean(&["reset_on_success"])?,
        ..PartialSettings::default()
    };
    if whole {
        s.cooldown_ms = t.uint(&["cooldown_ms"], u64::MAX)?;
        s.count = t
            .take(&["count"])
            .map(|(_, c)| parse_count(c, t))
            .transpose()?;
    }
    Ok(s)
}

/// `S`/`A`/`B`/`C`/`I`, or Theus' names (Stop, Abort, Block, Count), any case.
pub(crate) fn parse_level(text: &str, t: &Table<'_>) -> Result<Level, AuditError> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "s" | "stop" | "safety" => Level::S,
        "a" | "abort" => Level::A,
        "b" | "block" => Level::B,
        "c" | "count" | "campaign" | "warn" | "warning" => Level::C,
        "i" | "info" | "ignore" | "record" => Level::I,
        _ => return Err(t.err(format!("unknown level '{text}' (expected S, A, B, C or I)"))),
    })
}

fn parse_count(conf: &Conf, t: &Table<'_>) -> Result<KindSet, AuditError> {
    let Conf::List(items) = conf else {
        return Err(t.err(format!(
            "'count' must be a list of failure kinds, found {}",
            conf.kind()
        )));
    };
    let mut set = 0u8;
    for item in items {
        let bit = match item {
            Conf::Str(s) => ALL_KINDS.iter().position(|(_, n)| n == s),
            _ => None,
        };
        let Some(bit) = bit else {
            return Err(t.err(format!(
                "'count' holds {}: expected rule, contract, exception, timeout or conflict",
                item.render()
            )));
        };
        set |= 1 << bit;
    }
    Ok(KindSet(set))
}

fn read_process(name: &str, body: &Conf, file: &str) -> Result<ProcessSpec, AuditError> {
    let mut t = Table::new(body, file, at_process(name))?;
    let inherits = match t.take(&["inherits"]) {
        None => Vec::new(),
        Some((_, Conf::Str(s))) => vec![s.clone()],
        Some((_, Conf::List(l))) if l.iter().all(|c| matches!(c, Conf::Str(_))) => l
            .iter()
            .filter_map(|c| match c {
                Conf::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some((_, other)) => {
            return Err(t.err(format!(
                "'inherits' must be a process name or a list of names, found {}",
                other.kind()
            )))
        }
    };
    let settings = read_settings(&mut t, true)?;
    t.string(&["description"])?;
    let mut rules = Vec::new();
    for (key, section) in [
        ("rules", None),
        ("inputs", Some("input")),
        ("outputs", Some("output")),
    ] {
        if let Some((_, list)) = t.take(&[key]) {
            read_rule_list(name, key, section, list, file, &mut rules)?;
        }
    }
    t.finish()?;
    Ok(ProcessSpec {
        name: name.to_string(),
        inherits,
        settings,
        rules,
    })
}

fn read_rule_list(
    process: &str,
    key: &str,
    section: Option<&str>,
    list: &Conf,
    file: &str,
    rules: &mut Vec<RuleSpec>,
) -> Result<(), AuditError> {
    let Conf::List(items) = list else {
        let at = at_process(process);
        return Err(schema(
            file,
            &at,
            format!("'{key}' must be a list of rules, found {}", list.kind()),
        ));
    };
    for (i, item) in items.iter().enumerate() {
        let (mut rule, named) = read_rule(process, &format!("{key}[{i}]"), section, item, file)?;
        if !named {
            let base = rule.name.clone();
            let mut n = 1;
            while rules.iter().any(|r| r.name == rule.name) {
                n += 1;
                rule.name = format!("{base}#{n}");
            }
        }
        if rules.iter().any(|r| r.name == rule.name) {
            let at = at_rule(process, &rule.name);
            return Err(schema(
                file,
                &at,
                "two rules of one process have this name".into(),
            ));
        }
        rules.push(rule);
    }
    Ok(())
}

fn read_rule(
    process: &str,
    slot: &str,
    section: Option<&str>,
    body: &Conf,
    file: &str,
) -> Result<(RuleSpec, bool), AuditError> {
    let mut t = Table::new(body, file, at_rule(process, slot))?;
    let name = t.string(&["name"])?;
    if let Some(n) = &name {
        t.at = at_rule(process, n);
    }
    let Some(field) = t.string(&["field"])? else {
        return Err(t.err("missing 'field'"));
    };
    let target = parse_target(&field, section).map_err(|m| t.err(m))?;
    let named = name.is_some();
    let name = name.unwrap_or_else(|| field.clone());
    t.at = at_rule(process, &name);
    let settings = read_settings(&mut t, false)?;
    let required = t.boolean(&["required"])?.unwrap_or(false);
    let message = t.string(&["message"])?;
    let check = Check::read(&mut t, &target)?;
    let at = t.at.clone();
    t.finish()?;
    if check.is_empty() && !required {
        return Err(schema(
            file,
            &at,
            "rule has no condition (give one, or required = true)".into(),
        ));
    }
    let field = match &target {
        Target::Input(n) => format!("input.{n}"),
        Target::Output(k) => format!("output.{k}"),
        Target::Heavy(n) => format!("heavy.{n}"),
    };
    Ok((
        RuleSpec {
            name,
            field,
            target,
            settings,
            required,
            message,
            check,
        },
        named,
    ))
}

/// `input.<arg>`, `output.<key>`, `heavy.<name>`; in Theus' `inputs`/`outputs` lists a bare
/// name means the list's kind.
fn parse_target(field: &str, section: Option<&str>) -> Result<Target, String> {
    let split = |prefix: &str| field.strip_prefix(prefix).filter(|rest| !rest.is_empty());
    if let Some(rest) = split("heavy.") {
        return Ok(Target::Heavy(rest.to_string()));
    }
    match section {
        Some("input") => Ok(Target::Input(split("input.").unwrap_or(field).to_string())),
        Some(_) => Ok(Target::Output(
            split("output.").unwrap_or(field).to_string(),
        )),
        None => {
            if let Some(rest) = split("input.") {
                Ok(Target::Input(rest.to_string()))
            } else if let Some(rest) = split("output.") {
                Ok(Target::Output(rest.to_string()))
            } else {
                Err(format!(
                    "field '{field}' must start with input., output. or heavy."
                ))
            }
        }
    }
}

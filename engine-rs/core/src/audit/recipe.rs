//! Resolves a recipe document into one compiled recipe per process: `inherits` (cycles are
//! an error), settings layered process > parents > `[defaults]` > built-in, and each rule's
//! unset level and thresholds taken from the process that uses it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit_api::Level;
use crate::fxhash::FxMap;

use super::cond::Check;
use super::error::{at_process, at_rule, AuditError};
use super::schema::{schema, Document, KindSet, PartialSettings, ProcessSpec, RuleSpec, Target};

/// A process's settings, all resolved.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub(crate) level: Level,
    pub(crate) min_threshold: u32,
    pub(crate) max_threshold: u32,
    pub(crate) reset_on_success: bool,
    pub(crate) count: KindSet,
    pub(crate) cooldown_ms: u64,
}

/// One rule, ready to evaluate.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) field: String,
    pub(crate) target: Target,
    pub(crate) level: Level,
    pub(crate) min_threshold: u32,
    pub(crate) max_threshold: u32,
    pub(crate) reset_on_success: bool,
    pub(crate) required: bool,
    pub(crate) message: Option<String>,
    pub(crate) check: Check,
}

/// The compiled recipe of one process.
#[derive(Clone, Debug)]
pub(crate) struct Recipe {
    pub(crate) settings: Settings,
    pub(crate) rules: Vec<Rule>,
}

/// All compiled recipes; processes without one get `default` (no rules).
#[derive(Clone, Debug)]
pub(crate) struct Recipes {
    pub(crate) default: Arc<Recipe>,
    pub(crate) processes: FxMap<String, Arc<Recipe>>,
}

impl Recipes {
    pub(crate) fn get(&self, process: &str) -> &Arc<Recipe> {
        self.processes.get(process).unwrap_or(&self.default)
    }
}

fn builtin() -> PartialSettings {
    PartialSettings {
        level: Some(Level::B),
        min_threshold: Some(1),
        max_threshold: Some(3),
        reset_on_success: Some(true),
        count: Some(KindSet::ALL),
        cooldown_ms: Some(0),
    }
}

/// Resolve a document read from `file`.
pub(crate) fn resolve(doc: &Document, file: &str) -> Result<Recipes, AuditError> {
    let base = doc.defaults.over(&builtin());
    let default = compile(&base, &[], file, "defaults")?;
    let specs: HashMap<&str, &ProcessSpec> =
        doc.processes.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut flat = Flattener {
        specs: &specs,
        file,
        done: HashMap::new(),
    };
    let mut processes = FxMap::default();
    for spec in &doc.processes {
        let (settings, rules) = flat.flatten(&spec.name, &mut Vec::new())?;
        let recipe = compile(&settings.over(&base), &rules, file, &spec.name)?;
        processes.insert(spec.name.clone(), Arc::new(recipe));
    }
    Ok(Recipes {
        default: Arc::new(default),
        processes,
    })
}

/// Effective (unresolved) settings and rules of each process, following `inherits`.
struct Flattener<'a> {
    specs: &'a HashMap<&'a str, &'a ProcessSpec>,
    file: &'a str,
    done: HashMap<String, (PartialSettings, Vec<RuleSpec>)>,
}

impl Flattener<'_> {
    fn flatten(
        &mut self,
        name: &str,
        path: &mut Vec<String>,
    ) -> Result<(PartialSettings, Vec<RuleSpec>), AuditError> {
        if let Some(found) = self.done.get(name) {
            return Ok(found.clone());
        }
        if let Some(start) = path.iter().position(|p| p == name) {
            let mut chain = path[start..].to_vec();
            chain.push(name.to_string());
            return Err(AuditError::InheritsCycle {
                file: self.file.to_string(),
                process: path[start].clone(),
                chain: chain.join(" -> "),
            });
        }
        let spec = self.specs[name];
        path.push(name.to_string());
        let mut settings = PartialSettings::default();
        let mut rules: Vec<RuleSpec> = Vec::new();
        for parent in &spec.inherits {
            if !self.specs.contains_key(parent.as_str()) {
                return Err(AuditError::UnknownParent {
                    file: self.file.to_string(),
                    process: name.to_string(),
                    parent: parent.clone(),
                });
            }
            let (ps, prules) = self.flatten(parent, path)?;
            settings = settings.over(&ps);
            for r in prules {
                if !rules.iter().any(|have| have.name == r.name) {
                    rules.push(r);
                }
            }
        }
        path.pop();
        settings = spec.settings.over(&settings);
        for r in &spec.rules {
            match rules.iter_mut().find(|have| have.name == r.name) {
                Some(slot) => *slot = r.clone(),
                None => rules.push(r.clone()),
            }
        }
        self.done
            .insert(name.to_string(), (settings.clone(), rules.clone()));
        Ok((settings, rules))
    }
}

fn compile(
    s: &PartialSettings,
    rules: &[RuleSpec],
    file: &str,
    process: &str,
) -> Result<Recipe, AuditError> {
    let at = if process == "defaults" {
        "defaults".to_string()
    } else {
        at_process(process)
    };
    let settings = Settings {
        level: s.level.unwrap_or(Level::B),
        min_threshold: s.min_threshold.unwrap_or(1),
        max_threshold: s.max_threshold.unwrap_or(3),
        reset_on_success: s.reset_on_success.unwrap_or(true),
        count: s.count.unwrap_or(KindSet::ALL),
        cooldown_ms: s.cooldown_ms.unwrap_or(0),
    };
    check_thresholds(settings.min_threshold, settings.max_threshold, file, &at)?;
    let rules = rules
        .iter()
        .map(|r| compile_rule(r, &settings, file, process))
        .collect::<Result<_, _>>()?;
    Ok(Recipe { settings, rules })
}

fn compile_rule(r: &RuleSpec, p: &Settings, file: &str, process: &str) -> Result<Rule, AuditError> {
    let rule = Rule {
        name: r.name.clone(),
        field: r.field.clone(),
        target: r.target.clone(),
        level: r.settings.level.unwrap_or(p.level),
        min_threshold: r.settings.min_threshold.unwrap_or(p.min_threshold),
        max_threshold: r.settings.max_threshold.unwrap_or(p.max_threshold),
        reset_on_success: r.settings.reset_on_success.unwrap_or(p.reset_on_success),
        required: r.required,
        message: r.message.clone(),
        check: r.check.clone(),
    };
    check_thresholds(
        rule.min_threshold,
        rule.max_threshold,
        file,
        &at_rule(process, &r.name),
    )?;
    Ok(rule)
}

fn check_thresholds(min: u32, max: u32, file: &str, at: &str) -> Result<(), AuditError> {
    if max == 0 {
        return Err(schema(file, at, "max_threshold must be at least 1".into()));
    }
    if min == 0 || min > max {
        return Err(schema(
            file,
            at,
            format!("min_threshold must be from 1 to max_threshold ({max}), found {min}"),
        ));
    }
    Ok(())
}

//! Runs a process's rules over one update and reports which fired. A field that is absent
//! makes its rule not applicable unless the rule says `required = true`; a value that cannot
//! be decoded fires the rule (fail closed).

use rmpv::ValueRef;

use crate::audit_api::{ArrayField, AuditInput, Field, Finding};

use super::cond::Check;
use super::recipe::{Recipe, Rule};
use super::schema::Target;
use super::value;

/// The rules that fired, as (index in `recipe.rules`, finding), in rule order.
pub(crate) fn evaluate(recipe: &Recipe, input: &AuditInput<'_>) -> Vec<(usize, Finding)> {
    recipe
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            eval_rule(rule, input)
                .err()
                .map(|detail| (i, finding(rule, detail)))
        })
        .collect()
}

fn finding(rule: &Rule, detail: String) -> Finding {
    let message = match &rule.message {
        Some(m) => format!("{m} ({detail})"),
        None => detail,
    };
    Finding {
        rule: rule.name.clone(),
        level: rule.level,
        message,
    }
}

fn eval_rule(rule: &Rule, input: &AuditInput<'_>) -> Result<(), String> {
    match (&rule.target, &rule.check) {
        (Target::Heavy(name), Check::Array(conds)) => match find_array(input.arrays, name) {
            Some(arr) => conds.eval(&rule.field, arr),
            None => missing(rule),
        },
        (Target::Input(name), Check::Value(conds)) => match lookup(input.args, name, "input.")? {
            Some(v) => conds.eval(&rule.field, &v),
            None => missing(rule),
        },
        (Target::Output(key), Check::Value(conds)) => match lookup(input.writes, key, "output.")? {
            Some(v) => conds.eval(&rule.field, &v),
            None => missing(rule),
        },
        _ => Err(format!(
            "{}: rule kind does not match its field",
            rule.field
        )),
    }
}

fn missing(rule: &Rule) -> Result<(), String> {
    if rule.required {
        Err(format!("{} is missing", rule.field))
    } else {
        Ok(())
    }
}

fn find_array<'a>(arrays: &'a [ArrayField<'a>], name: &str) -> Option<&'a ArrayField<'a>> {
    arrays
        .iter()
        .find(|a| a.name == name || a.name.strip_prefix("heavy.") == Some(name))
}

/// The value of `path` among `fields`: a field named `path` (or `<prefix><path>`), or, for a
/// dotted path `a.b.c`, the entry `b.c` inside the map held by field `a`.
fn lookup<'a>(
    fields: &'a [Field<'a>],
    path: &str,
    prefix: &str,
) -> Result<Option<ValueRef<'a>>, String> {
    let bare = |f: &Field<'a>| -> &'a str { f.name.strip_prefix(prefix).unwrap_or(f.name) };
    if let Some(f) = fields.iter().find(|f| bare(f) == path) {
        return decode(f, prefix).map(Some);
    }
    for f in fields {
        let Some(rest) = path.strip_prefix(bare(f)).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let value = decode(f, prefix)?;
        return Ok(descend(value, rest));
    }
    Ok(None)
}

fn decode<'a>(f: &Field<'a>, prefix: &str) -> Result<ValueRef<'a>, String> {
    value::decode(f.value).map_err(|e| {
        let bare = f.name.strip_prefix(prefix).unwrap_or(f.name);
        format!("{prefix}{bare} is {e}")
    })
}

fn descend<'a>(mut value: ValueRef<'a>, path: &str) -> Option<ValueRef<'a>> {
    for key in path.split('.') {
        let ValueRef::Map(entries) = value else {
            return None;
        };
        value = value::map_get(&entries, key)?.clone();
    }
    Some(value)
}

//! A format-neutral document tree: TOML and YAML recipes are both turned into `Conf`, and
//! one schema reader (recipe.rs) walks it. YAML `null` is kept (`Conf::Nil`), which a
//! serde-derived schema would confuse with a missing key.

use super::error::AuditError;

/// A recipe document node. Maps keep their order and their keys are strings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Conf {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Conf>),
    Map(Vec<(String, Conf)>),
}

impl Conf {
    /// A short name of the node's type, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Conf::Nil => "null",
            Conf::Bool(_) => "a boolean",
            Conf::Int(_) => "an integer",
            Conf::Float(_) => "a float",
            Conf::Str(_) => "a string",
            Conf::List(_) => "a list",
            Conf::Map(_) => "a table",
        }
    }

    pub(crate) fn as_map(&self) -> Option<&[(String, Conf)]> {
        match self {
            Conf::Map(m) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn is_number(&self) -> bool {
        matches!(self, Conf::Int(_) | Conf::Float(_))
    }

    /// A plain rendering for messages (`100`, `"abc"`, `[1, 2]`).
    pub(crate) fn render(&self) -> String {
        match self {
            Conf::Nil => "nil".into(),
            Conf::Bool(b) => b.to_string(),
            Conf::Int(i) => i.to_string(),
            Conf::Float(f) => f.to_string(),
            Conf::Str(s) => format!("{s:?}"),
            Conf::List(l) => {
                let items: Vec<String> = l.iter().map(Conf::render).collect();
                format!("[{}]", items.join(", "))
            }
            Conf::Map(m) => {
                let items: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", v.render()))
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
        }
    }
}

/// Parse TOML text into a `Conf` tree.
pub(crate) fn from_toml(text: &str, file: &str) -> Result<Conf, AuditError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| AuditError::Syntax {
            file: file.to_string(),
            format: "TOML",
            message: e.to_string().trim_end().to_string(),
        })?;
    Ok(toml_table(table))
}

fn toml_table(table: toml::Table) -> Conf {
    Conf::Map(table.into_iter().map(|(k, v)| (k, toml_value(v))).collect())
}

fn toml_value(value: toml::Value) -> Conf {
    match value {
        toml::Value::String(s) => Conf::Str(s),
        toml::Value::Integer(i) => Conf::Int(i.into()),
        toml::Value::Float(f) => Conf::Float(f),
        toml::Value::Boolean(b) => Conf::Bool(b),
        toml::Value::Datetime(d) => Conf::Str(d.to_string()),
        toml::Value::Array(a) => Conf::List(a.into_iter().map(toml_value).collect()),
        toml::Value::Table(t) => toml_table(t),
    }
}

/// Parse YAML text into a `Conf` tree. An empty document is an empty map.
pub(crate) fn from_yaml(text: &str, file: &str) -> Result<Conf, AuditError> {
    let syntax = |message: String| AuditError::Syntax {
        file: file.to_string(),
        format: "YAML",
        message,
    };
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| syntax(e.to_string()))?;
    match yaml_value(value).map_err(syntax)? {
        Conf::Nil => Ok(Conf::Map(Vec::new())),
        conf => Ok(conf),
    }
}

fn yaml_value(value: serde_yaml::Value) -> Result<Conf, String> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Conf::Nil,
        Y::Bool(b) => Conf::Bool(b),
        Y::Number(n) => yaml_number(&n),
        Y::String(s) => Conf::Str(s),
        Y::Sequence(seq) => Conf::List(seq.into_iter().map(yaml_value).collect::<Result<_, _>>()?),
        Y::Mapping(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                out.push((yaml_key(k)?, yaml_value(v)?));
            }
            Conf::Map(out)
        }
        Y::Tagged(tagged) => yaml_value(tagged.value)?,
    })
}

fn yaml_number(n: &serde_yaml::Number) -> Conf {
    if let Some(i) = n.as_i64() {
        Conf::Int(i.into())
    } else if let Some(u) = n.as_u64() {
        Conf::Int(u.into())
    } else {
        Conf::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn yaml_key(key: serde_yaml::Value) -> Result<String, String> {
    use serde_yaml::Value as Y;
    match key {
        Y::String(s) => Ok(s),
        Y::Number(n) => Ok(n.to_string()),
        Y::Bool(b) => Ok(b.to_string()),
        other => Err(format!("mapping keys must be strings, found {other:?}")),
    }
}

//! The auditor's one error type: every way a recipe can be unreadable or wrong, with the
//! file, the process and the rule it concerns in the message.

use std::path::PathBuf;

/// An audit recipe could not be loaded. Checking updates never fails with an error: a rule
/// that cannot be evaluated fires (fail closed) and says why in its finding.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The recipe file could not be read.
    #[error("{path}: cannot read audit recipe: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file name ends in neither `.toml` nor `.yaml`/`.yml`.
    #[error("{path}: unknown audit recipe format (expected a .toml, .yaml or .yml file)")]
    Format { path: PathBuf },
    /// The text is not valid TOML or YAML.
    #[error("{file}: {format} syntax error: {message}")]
    Syntax {
        file: String,
        format: &'static str,
        message: String,
    },
    /// The document parsed but does not follow the recipe schema.
    #[error("{file}: {at}: {message}")]
    Schema {
        file: String,
        at: String,
        message: String,
    },
    /// A process recipe inherits from a recipe that does not exist.
    #[error("{file}: process '{process}' inherits unknown process recipe '{parent}'")]
    UnknownParent {
        file: String,
        process: String,
        parent: String,
    },
    /// Following `inherits` leads back to where it started.
    #[error("{file}: process '{process}': inherits cycle: {chain}")]
    InheritsCycle {
        file: String,
        process: String,
        chain: String,
    },
}

/// Where in a recipe a schema error is: `defaults`, `process 'p'`, `process 'p', rule 'r'`.
pub(crate) fn at_process(process: &str) -> String {
    format!("process '{process}'")
}

pub(crate) fn at_rule(process: &str, rule: &str) -> String {
    format!("process '{process}', rule '{rule}'")
}

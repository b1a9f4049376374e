//! Helpers for the feature tests: updates built as msgpack values (rmpv).
#![allow(dead_code)]
use std::path::Path;

use pipeline_core::{make_audit, Config, Engine, Fsync};
use rmpv::Value;

pub fn s(v: &str) -> Value {
    Value::from(v)
}

pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

pub fn ints(entries: &[(&str, u64)]) -> Value {
    map(entries.iter().map(|(k, v)| (*k, Value::from(*v))).collect())
}

/// An update of process "p": reads, small writes, and extra fields.
pub fn update(task: &str, reads: &[(&str, u64)], data: &[(&str, u64)], extra: Vec<(&str, Value)>) -> Value {
    let mut fields = vec![
        ("task", s(task)),
        ("process", s("p")),
        ("attempt", Value::from(1)),
        ("worker", s("w")),
        ("reads", ints(reads)),
        ("data", ints(data)),
    ];
    fields.extend(extra);
    map(fields)
}

pub fn pack(v: &Value) -> Vec<u8> {
    let mut b = Vec::new();
    rmpv::encode::write_value(&mut b, v).unwrap();
    b
}

pub fn unpack(b: &[u8]) -> Value {
    rmpv::decode::read_value(&mut &b[..]).unwrap()
}

pub fn frame(updates: Vec<Value>) -> Vec<u8> {
    pack(&map(vec![("updates", Value::Array(updates))]))
}

pub fn config(strict: bool) -> Config {
    Config {
        fsync: Fsync::Never,
        strict,
        ..Config::default()
    }
}

/// An engine with process "p" (inputs "in"; outputs "a", "b", "heavy.x", "heavy.y").
pub fn open_with(dir: &Path, config: Config, recipe: Option<&str>) -> Engine {
    let audit = match recipe {
        None => make_audit(None).unwrap(),
        Some(text) => {
            let path = dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            make_audit(Some(&path)).unwrap()
        }
    };
    let mut e = Engine::open(dir, config, audit).unwrap();
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    e.register("p", &keys(&["in"]), &keys(&["a", "b", "heavy.x", "heavy.y"]))
        .unwrap();
    e
}

/// Field `name` of a msgpack map value.
pub fn get<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)))
        .map(|(_, v)| v)
        .unwrap_or(&Value::Nil)
}

/// Process "p" may write `a` up to 10, and is blocked after two failures.
pub const BLOCK_RECIPE: &str = r#"
[process.p]
max_threshold = 2
rules = [{ name = "a-small", field = "output.a", max = 10 }]
"#;

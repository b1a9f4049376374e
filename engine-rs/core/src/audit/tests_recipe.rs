//! Recipe parsing (TOML, Theus-style YAML), inherits, errors, and conditions on small values.

use rmpv::Value;

use super::testkit::{is_pass, mp, nil, rejected, toml, Upd};
use super::*;
use crate::audit_api::{Failure, Level, Verdict};

fn err_toml(text: &str) -> String {
    Auditor::from_toml_str(text)
        .expect_err("recipe must be refused")
        .to_string()
}

/// A one-rule recipe on `field` with the given condition keys.
fn one(field: &str, conds: &str) -> Auditor {
    toml(&format!(
        "[process.p]\nrules = [{{ name = \"r\", field = \"{field}\", {conds} }}]\n"
    ))
}

fn passes(a: &mut Auditor, key: &str, value: Vec<u8>) -> bool {
    let v = Upd::new("p").out(key, value).arg(key, mp(0)).check(a, 0);
    a.success("p");
    is_pass(&v)
}

#[test]
fn min_max_compare_numbers_across_encodings() {
    let mut a = one("output.x", "min = 0, max = 100");
    assert!(
        passes(&mut a, "x", mp(0))
            && passes(&mut a, "x", mp(100u64))
            && passes(&mut a, "x", mp(99.5))
    );
    assert!(
        !passes(&mut a, "x", mp(-1))
            && !passes(&mut a, "x", mp(100.0001))
            && !passes(&mut a, "x", mp(f64::NAN))
    );
    assert!(!passes(&mut a, "x", mp("50")), "a string is not a number");
    let mut big = one("output.x", "max = 9007199254740992");
    assert!(
        !passes(&mut big, "x", mp(9_007_199_254_740_993u64)),
        "no rounding through f64"
    );
    assert!(passes(&mut big, "x", mp(f32::MIN)));
}

#[test]
fn min_max_with_string_bounds_compare_strings() {
    let mut a = one("output.x", r#"min = "b", max = "d""#);
    assert!(
        passes(&mut a, "x", mp("c"))
            && !passes(&mut a, "x", mp("a"))
            && !passes(&mut a, "x", mp("e"))
    );
    assert!(!passes(&mut a, "x", mp(3)));
}

#[test]
fn string_eq_is_checked() {
    let mut a = one("output.status", r#"eq = "ok""#);
    assert!(passes(&mut a, "status", mp("ok")));
    assert!(!passes(&mut a, "status", mp("OK")));
    assert!(!passes(&mut a, "status", mp("ok ")));
    assert!(
        !passes(&mut a, "status", Vec::from(&b"\xc4\x02ok"[..])),
        "bin is not a string"
    );
    let v = Upd::new("p").out("status", mp("bad")).check(&mut a, 0);
    assert_eq!(
        rejected(&v).0,
        r#"output.status = "bad" != "ok" (failure 1 of 3)"#
    );
}

#[test]
fn eq_and_neq_on_numbers_bools_lists_maps() {
    let mut a = one("output.x", "eq = 1");
    assert!(
        passes(&mut a, "x", mp(1.0))
            && passes(&mut a, "x", mp(1u8))
            && !passes(&mut a, "x", mp(true))
    );
    let mut a = one("output.x", "eq = true");
    assert!(passes(&mut a, "x", mp(true)) && !passes(&mut a, "x", mp(1)));
    let mut a = one("output.x", "eq = [1, \"a\"]");
    assert!(passes(
        &mut a,
        "x",
        mp(Value::Array(vec![1.into(), "a".into()]))
    ));
    assert!(!passes(&mut a, "x", mp(Value::Array(vec![1.into()]))));
    let mut a = one("output.x", "eq = { k = 2 }");
    assert!(passes(
        &mut a,
        "x",
        mp(Value::Map(vec![("k".into(), 2.into())]))
    ));
    assert!(!passes(
        &mut a,
        "x",
        mp(Value::Map(vec![("k".into(), 3.into())]))
    ));
    let mut a = one("output.x", r#"neq = "stop""#);
    assert!(
        passes(&mut a, "x", mp("go"))
            && passes(&mut a, "x", mp(5))
            && !passes(&mut a, "x", mp("stop"))
    );
}

#[test]
fn nil_condition_in_toml_and_null_literals_in_yaml() {
    let mut a = one("output.x", "nil = false");
    assert!(!passes(&mut a, "x", nil()) && passes(&mut a, "x", mp(0)));
    let mut a = one("output.x", "nil = true");
    assert!(passes(&mut a, "x", nil()) && !passes(&mut a, "x", mp("")));
    let mut y = Auditor::from_yaml_str(
        "process:\n  p:\n    rules:\n      - {field: output.x, neq: null}\n",
    )
    .unwrap();
    assert!(!passes(&mut y, "x", nil()) && passes(&mut y, "x", mp(false)));
    let mut y =
        Auditor::from_yaml_str("process:\n  p:\n    rules:\n      - {field: output.x, eq: null}\n")
            .unwrap();
    assert!(passes(&mut y, "x", nil()) && !passes(&mut y, "x", mp(0)));
}

#[test]
fn lengths_of_strings_lists_maps_and_bin() {
    let mut a = one("output.x", "min_len = 2, max_len = 3");
    assert!(passes(&mut a, "x", mp("héé")), "characters, not bytes");
    assert!(!passes(&mut a, "x", mp("a")) && !passes(&mut a, "x", mp("abcd")));
    assert!(passes(
        &mut a,
        "x",
        mp(Value::Array(vec![1.into(), 2.into()]))
    ));
    assert!(!passes(&mut a, "x", mp(Value::Map(vec![]))));
    assert!(passes(&mut a, "x", mp(Value::Binary(vec![0; 3]))));
    assert!(!passes(&mut a, "x", mp(7)), "a number has no length");
}

#[test]
fn regex_matches_strings_only() {
    let mut a = one("input.email", r#"regex = '^[^@]+@[^@]+$'"#);
    let check = |a: &mut Auditor, v: Vec<u8>| is_pass(&Upd::new("p").arg("email", v).check(a, 0));
    assert!(check(&mut a, mp("a@b")));
    assert!(!check(&mut a, mp("a@b@c")) && !check(&mut a, mp(12)));
    assert!(!check(&mut a, mp(Value::Nil)));
    let e =
        err_toml("[process.p]\nrules = [{ name = \"bad\", field = \"input.e\", regex = \"(\" }]");
    assert!(
        e.starts_with("<toml>: process 'p', rule 'bad': invalid regex /(/"),
        "{e}"
    );
}

#[test]
fn missing_fields_skip_unless_required_and_bad_msgpack_fails_closed() {
    let mut a = one("output.x", "max = 1");
    assert!(is_pass(&Upd::new("p").out("other", mp(5)).check(&mut a, 0)));
    let mut a = one("output.x", "max = 1, required = true");
    let v = Upd::new("p").check(&mut a, 0);
    assert_eq!(rejected(&v).0, "output.x is missing (failure 1 of 3)");
    let mut a = one("output.x", "required = true");
    assert!(
        is_pass(&Upd::new("p").out("x", nil()).check(&mut a, 0)),
        "presence only"
    );
    let mut a = one("output.x", "max = 1");
    let v = Upd::new("p").out("x", vec![0xa5, b'a']).check(&mut a, 0);
    assert!(
        rejected(&v).0.starts_with("output.x is not valid msgpack"),
        "{v:?}"
    );
    let v = Upd::new("p").out("x", vec![0x01, 0x02]).check(&mut a, 0);
    assert!(rejected(&v).0.contains("trailing bytes"));
}

#[test]
fn prefixed_names_and_nested_paths() {
    let mut a = one("output.stats.mean", "max = 10");
    let map = |m: i64| mp(Value::Map(vec![("mean".into(), m.into())]));
    assert!(passes(&mut a, "stats", map(3)) && !passes(&mut a, "stats", map(11)));
    assert!(
        !passes(&mut a, "output.stats", map(11)),
        "engine may pass prefixed names"
    );
    assert!(
        passes(&mut a, "stats", mp(4)),
        "no such nested key: not applicable"
    );
}

#[test]
fn custom_message_is_kept() {
    let mut a = one(
        "output.x",
        r#"max = 1, message = "Danger! Overflow.", level = "C""#,
    );
    let Verdict::Pass { notes } = Upd::new("p").out("x", mp(2)).check(&mut a, 0) else {
        panic!()
    };
    assert_eq!(notes[0].message, "Danger! Overflow. (output.x = 2 > max 1)");
}

const INHERIT: &str = r#"
[defaults]
max_threshold = 2
[process.base]
level = "C"
rules = [
  { name = "mean-in-range", field = "output.mean", min = 0, max = 100 },
  { name = "n", field = "output.n", min = 1 },
]
[process.stats]
inherits = "base"
max_threshold = 5
level = "B"
rules = [{ name = "n", field = "output.n", min = 10 }]
"#;

#[test]
fn inherits_takes_rules_and_settings_and_overrides_by_name() {
    let mut a = toml(INHERIT);
    let v = Upd::new("stats").out("mean", mp(101)).check(&mut a, 0);
    assert_eq!(
        rejected(&v).0,
        "output.mean = 101 > max 100 (failure 1 of 5)",
        "level B and max 5 from stats"
    );
    let v = Upd::new("stats").out("n", mp(5)).check(&mut a, 0);
    assert!(
        rejected(&v).0.contains("< min 10"),
        "the child's rule 'n' replaced the parent's"
    );
    let Verdict::Pass { notes } = Upd::new("base").out("mean", mp(101)).check(&mut a, 0) else {
        panic!()
    };
    assert_eq!(notes[0].level, Level::C);
    assert_eq!(a.processes(), vec!["base".to_string(), "stats".to_string()]);
}

#[test]
fn inherits_chains_and_lists() {
    let mut a = toml(
        r#"
[process.a]
cooldown_ms = 7
rules = [{ field = "output.a", max = 0 }]
[process.b]
inherits = "a"
rules = [{ field = "output.b", max = 0 }]
[process.c]
inherits = ["b"]
"#,
    );
    assert!(!is_pass(&Upd::new("c").out("a", mp(1)).check(&mut a, 0)));
    assert!(!is_pass(&Upd::new("c").out("b", mp(1)).check(&mut a, 0)));
    a.failure("c", Failure::Timeout, 10);
    assert!(
        matches!(
            a.block_state("c"),
            BlockState::Blocked {
                until_ms: Some(17),
                ..
            }
        ),
        "{:?}",
        a.block_state("c")
    );
}

#[test]
fn inherits_cycles_and_unknown_parents_are_errors() {
    let e = err_toml("[process.a]\ninherits = \"b\"\n[process.b]\ninherits = \"c\"\n[process.c]\ninherits = \"a\"\n");
    assert_eq!(e, "<toml>: process 'a': inherits cycle: a -> b -> c -> a");
    let e = err_toml("[process.a]\ninherits = \"a\"\n");
    assert_eq!(e, "<toml>: process 'a': inherits cycle: a -> a");
    let e = err_toml("[process.a]\ninherits = \"nope\"\n");
    assert_eq!(
        e,
        "<toml>: process 'a' inherits unknown process recipe 'nope'"
    );
}

#[test]
fn bad_recipes_are_refused_with_clear_messages() {
    let cases = [
        ("[defaults]\nlevel = \"X\"", "<toml>: defaults: unknown level 'X' (expected S, A, B, C or I)"),
        ("[defaults]\nmax_threshold = 0", "<toml>: defaults: max_threshold must be at least 1"),
        ("[defaults]\nmin_threshold = 4", "<toml>: defaults: min_threshold must be from 1 to max_threshold (3), found 4"),
        ("[defaults]\ncount = [\"oops\"]", "<toml>: defaults: 'count' holds \"oops\": expected rule, contract, exception, timeout or conflict"),
        ("[defaults]\ncooldown_ms = -1", "<toml>: defaults: 'cooldown_ms' must be an integer from 0 to 18446744073709551615, found -1"),
        ("[defaultz]", "<toml>: top level: unknown key 'defaultz'"),
        ("[defaults]\nmax_treshold = 2", "<toml>: defaults: unknown key 'max_treshold'"),
        ("[process.p]\nrulez = []", "<toml>: process 'p': unknown key 'rulez'"),
        ("[process.p]\nrules = [{ name = \"r\", field = \"x\", max = 1 }]", "<toml>: process 'p', rule 'r': field 'x' must start with input., output. or heavy."),
        ("[process.p]\nrules = [{ name = \"r\", field = \"output.x\" }]", "<toml>: process 'p', rule 'r': rule has no condition (give one, or required = true)"),
        ("[process.p]\nrules = [{ name = \"r\", field = \"output.x\", mx = 1 }]", "<toml>: process 'p', rule 'r': unknown key 'mx'"),
        ("[process.p]\nrules = [{ name = \"r\", max = 1 }]", "<toml>: process 'p', rule 'r': missing 'field'"),
        ("[process.p]\nrules = [{ name = \"r\", field = \"output.x\", max = [1] }]", "<toml>: process 'p', rule 'r': 'max' must be a number or a string, found a list"),
        ("[process.p]\nrules = [{ name = \"r\", field = \"output.x\", dtype = \"<f8\" }]", "<toml>: process 'p', rule 'r': 'dtype' applies to heavy.<name> fields only"),
        ("[process.p]\nrules = [{ name = \"r\", field = \"output.x\", max = 1, min_threshold = 5 }]", "<toml>: process 'p', rule 'r': min_threshold must be from 1 to max_threshold (3), found 5"),
        ("[process.p]\nrules = [{ name = \"r\", field = \"output.x\", max = 1 }, { name = \"r\", field = \"output.y\", max = 1 }]", "<toml>: process 'p', rule 'r': two rules of one process have this name"),
        ("[process.p]\nrules = 3", "<toml>: process 'p': 'rules' must be a list of rules, found an integer"),
        ("defaults = 1", "<toml>: defaults: expected a table, found an integer"),
        ("[defaults]\n[audit]", "<toml>: top level: give only one of defaults or audit"),
        ("[defaults]\nmax_threshold = 2\nthreshold_max = 3", "<toml>: defaults: give only one of max_threshold or threshold_max"),
        ("x = ", "<toml>: TOML syntax error:"),
    ];
    for (text, want) in cases {
        let got = err_toml(text);
        assert!(
            got.starts_with(want),
            "recipe {text:?}\n got: {got}\nwant: {want}"
        );
    }
    let e = Auditor::from_yaml_str("process: [1, 2")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("<yaml>: YAML syntax error:"), "{e}");
}

const THEUS: &str = r#"
audit:
  level: Block
  threshold_min: 1
  threshold_max: 2
  reset_on_success: true
process_recipes:
  add_product:
    inputs:
      - field: price
        min: 0
        level: B
        max_threshold: 1
    outputs:
      - field: domain.total_value
        max: 1000000000
        level: S
        message: "Danger! Overflow."
      - field: domain.total_value
        min: 0
        level: Count
  restock:
    inherits: add_product
    outputs:
      - field: heavy.stock
        dtype: "<f8"
        finite: true
"#;

#[test]
fn theus_yaml_is_accepted() {
    let mut a = Auditor::from_yaml_str(THEUS).unwrap();
    let v = Upd::new("add_product")
        .arg("price", mp(-5))
        .check(&mut a, 0);
    assert!(rejected(&v).1.is_some(), "max_threshold 1: blocks at once");
    let v = Upd::new("add_product")
        .out("domain.total_value", mp(2_000_000_000i64))
        .check(&mut a, 0);
    let Verdict::Stop { finding } = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        finding.message,
        "Danger! Overflow. (output.domain.total_value = 2000000000 > max 1000000000)"
    );
    let v = Upd::new("restock")
        .out("domain.total_value", mp(-1))
        .check(&mut a, 0);
    let Verdict::Pass { notes } = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        (notes[0].rule.as_str(), notes[0].level),
        ("domain.total_value#2", Level::C)
    );
    let v = Upd::new("restock")
        .arr("stock", "<f8", &[1], Some(f64::NAN.to_le_bytes().to_vec()))
        .check(&mut a, 0);
    assert_eq!(rejected(&v).0, "heavy.stock contains NaN (failure 1 of 2)");
}

#[test]
fn toml_and_yaml_in_the_native_schema_agree() {
    let yaml = "defaults:\n  max_threshold: 4\nprocess:\n  p:\n    rules:\n      - {name: r, field: output.x, eq: ok}\n";
    let toml_text = "[defaults]\nmax_threshold = 4\n[process.p]\nrules = [{ name = \"r\", field = \"output.x\", eq = \"ok\" }]\n";
    for mut a in [Auditor::from_yaml_str(yaml).unwrap(), toml(toml_text)] {
        let v = Upd::new("p").out("x", mp("no")).check(&mut a, 0);
        assert_eq!(
            rejected(&v).0,
            r#"output.x = "no" != "ok" (failure 1 of 4)"#
        );
    }
}

#[test]
fn from_file_picks_the_format_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("audit.toml");
    std::fs::write(
        &t,
        "[process.p]\nrules = [{ field = \"output.x\", max = 0 }]\n",
    )
    .unwrap();
    assert_eq!(
        Auditor::from_file(&t).unwrap().processes(),
        vec!["p".to_string()]
    );
    let y = dir.path().join("audit.yml");
    std::fs::write(&y, THEUS).unwrap();
    assert_eq!(Auditor::from_file(&y).unwrap().processes().len(), 2);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[process.p]\ninherits = 1\n").unwrap();
    let e = Auditor::from_file(&bad).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: process 'p': 'inherits' must be",
            bad.display()
        )),
        "{e}"
    );
    let e = Auditor::from_file(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml: cannot read audit recipe"), "{e}");
    let e = Auditor::from_file(&dir.path().join("x.json")).unwrap_err();
    assert!(matches!(
        e,
        AuditError::Io { .. } | AuditError::Format { .. }
    ));
}

/// The TOML and YAML examples of docs/AUDIT.md load (skipped where the docs are not shipped).
#[test]
fn examples_in_the_docs_load() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/AUDIT.md");
    let Ok(doc) = std::fs::read_to_string(&path) else {
        return;
    };
    let mut loaded = 0;
    for (fence, load) in [
        (
            "```toml\n",
            Auditor::from_toml_str as fn(&str) -> Result<Auditor, AuditError>,
        ),
        ("```yaml\n", Auditor::from_yaml_str),
    ] {
        for block in doc.split(fence).skip(1) {
            let text = block.split("```").next().unwrap();
            load(text).unwrap_or_else(|e| panic!("docs example does not load: {e}\n{text}"));
            loaded += 1;
        }
    }
    assert!(loaded >= 2);
    let mut a = toml(
        doc.split("```toml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap(),
    );
    let v = Upd::new("stats").arg("user", mp("X")).check(&mut a, 0);
    assert_eq!(
        rejected(&v).0,
        "bad user name (input.user = \"X\" does not match /^[a-z][a-z0-9_]{2,31}$/)"
    );
    assert!(rejected(&v).1.is_some(), "level A blocks");
}

//! Conditions on heavy arrays: dtype, shape, ndim, element count, finite, range, checksum.

use super::testkit::{f64_bytes, is_pass, rejected, toml, Upd};
use super::*;
use crate::audit_api::Verdict;

fn rule(conds: &str) -> Auditor {
    toml(&format!(
        "[process.p]\nrules = [{{ name = \"r\", field = \"heavy.img\", {conds} }}]\n"
    ))
}

fn check(a: &mut Auditor, dtype: &str, shape: &[u64], data: Option<Vec<u8>>) -> Verdict {
    let v = Upd::new("p").arr("img", dtype, shape, data).check(a, 0);
    a.success("p");
    v
}

fn msg(v: &Verdict) -> String {
    rejected(v).0.split(" (failure").next().unwrap().to_string()
}

#[test]
fn dtype_ndim_and_shape() {
    let mut a = rule(r#"dtype = "<f8", shape = [2, -1], ndim = 2"#);
    assert!(
        is_pass(&check(&mut a, "float64", &[2, 7], None)),
        "metadata needs no data"
    );
    assert_eq!(
        msg(&check(&mut a, "<f4", &[2, 7], None)),
        "heavy.img has dtype '<f4', expected '<f8'"
    );
    assert_eq!(
        msg(&check(&mut a, "<f8", &[3, 7], None)),
        "heavy.img has shape [3, 7], expected [2, -1]"
    );
    assert_eq!(
        msg(&check(&mut a, "<f8", &[14], None)),
        "heavy.img has 1 dimensions, expected 2"
    );
    assert_eq!(
        msg(&check(&mut a, "weird", &[2, 7], None)),
        "heavy.img has dtype 'weird', expected '<f8'"
    );
}

#[test]
fn element_count_bounds() {
    let mut a = rule("min_len = 1, max_len = 6");
    assert!(is_pass(&check(&mut a, "|u1", &[2, 3], None)));
    assert_eq!(
        msg(&check(&mut a, "|u1", &[0, 3], None)),
        "heavy.img has 0 elements < min_len 1"
    );
    assert_eq!(
        msg(&check(&mut a, "|u1", &[7], None)),
        "heavy.img has 7 elements > max_len 6"
    );
}

#[test]
fn finite_rejects_nan_and_inf() {
    let mut a = rule("finite = true");
    assert!(is_pass(&check(
        &mut a,
        "<f8",
        &[3],
        Some(f64_bytes(&[1.0, -2.0, 3.0]))
    )));
    assert_eq!(
        msg(&check(
            &mut a,
            "<f8",
            &[3],
            Some(f64_bytes(&[1.0, f64::NAN, 3.0]))
        )),
        "heavy.img contains NaN"
    );
    let v = check(
        &mut a,
        "<f8",
        &[2],
        Some(f64_bytes(&[f64::NEG_INFINITY, 0.0])),
    );
    assert_eq!(msg(&v), "heavy.img contains inf (min -inf, max 0)");
    let f32s: Vec<u8> = [0.5f32, f32::INFINITY]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert!(msg(&check(&mut a, "<f4", &[2], Some(f32s))).contains("inf"));
    let ints: Vec<u8> = [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(
        is_pass(&check(&mut a, "<i4", &[2], Some(ints))),
        "integers are always finite"
    );
}

#[test]
fn value_range_over_the_whole_array() {
    let mut a = rule("min = 0, max = 1");
    assert!(is_pass(&check(
        &mut a,
        "<f8",
        &[3],
        Some(f64_bytes(&[0.0, 0.5, 1.0]))
    )));
    assert_eq!(
        msg(&check(&mut a, "<f8", &[2], Some(f64_bytes(&[0.0, 1.5])))),
        "heavy.img has max value 1.5 > max 1"
    );
    assert_eq!(
        msg(&check(&mut a, "<f8", &[2], Some(f64_bytes(&[-0.1, 0.5])))),
        "heavy.img has min value -0.1 < min 0"
    );
    assert_eq!(
        msg(&check(
            &mut a,
            "<f8",
            &[2],
            Some(f64_bytes(&[f64::NAN, 0.5]))
        )),
        "heavy.img contains NaN"
    );
    assert!(msg(&check(
        &mut a,
        "<f8",
        &[1],
        Some(f64_bytes(&[f64::INFINITY]))
    ))
    .contains("> max 1"));
    let be: Vec<u8> = [0i16, 2].iter().flat_map(|v| v.to_be_bytes()).collect();
    assert_eq!(
        msg(&check(&mut a, ">i2", &[2], Some(be))),
        "heavy.img has max value 2 > max 1"
    );
    assert!(is_pass(&check(&mut a, "|b1", &[2], Some(vec![0, 1]))));
}

#[test]
fn empty_arrays_pass_value_conditions() {
    let mut a = rule("finite = true, min = 0, max = 1");
    assert!(is_pass(&check(&mut a, "<f8", &[0], Some(Vec::new()))));
    assert!(is_pass(&check(&mut a, "<f8", &[3, 0], Some(Vec::new()))));
}

#[test]
fn data_that_does_not_fit_dtype_and_shape_fails() {
    let mut a = rule("finite = true");
    let v = check(&mut a, "<f8", &[2, 2], Some(f64_bytes(&[1.0, 2.0, 3.0])));
    assert_eq!(
        msg(&v),
        "heavy.img holds 24 bytes but dtype '<f8' and shape [2, 2] need 32"
    );
    let v = check(&mut a, "<f8", &[2], Some(vec![0; 17]));
    assert!(
        msg(&v).starts_with("heavy.img holds 17 bytes"),
        "a strided view's buffer is not the array"
    );
    assert_eq!(
        msg(&check(&mut a, "<f8", &[2], None)),
        "heavy.img: array data not mapped"
    );
    assert!(msg(&check(&mut a, "<f8", &[u64::MAX, 4], None)).contains("impossible shape"));
    assert_eq!(
        msg(&check(&mut a, "<c16", &[1], Some(vec![0; 16]))),
        "heavy.img has unsupported dtype '<c16'"
    );
    assert_eq!(
        msg(&check(&mut a, "<f2", &[1], Some(vec![0; 2]))),
        "heavy.img: values of dtype '<f2' cannot be scanned"
    );
}

#[test]
fn unaligned_and_large_buffers() {
    let mut a = rule("finite = true, max = 10");
    let values: Vec<f64> = (0..(PAR_MIN_BYTES / 8 + 3))
        .map(|i| (i % 10) as f64)
        .collect();
    let mut bytes = vec![0u8];
    bytes.extend(f64_bytes(&values));
    let n = values.len() as u64;
    let v = Upd::new("p")
        .arr("heavy.img", "<f8", &[n], Some(bytes[1..].to_vec()))
        .check(&mut a, 0);
    assert!(is_pass(&v), "{v:?}");
    let last = bytes.len() - 8;
    bytes[last..].copy_from_slice(&f64::NAN.to_le_bytes());
    let v = Upd::new("p")
        .arr("img", "<f8", &[n], Some(bytes[1..].to_vec()))
        .check(&mut a, 0);
    assert!(msg(&v).contains("NaN"));
}

#[test]
fn checksums_crc32_and_blake3() {
    let data = f64_bytes(&[1.0, 2.0]);
    let crc = format!("crc32:{:08X}", crc32(&data));
    let mut a = rule(&format!("checksum = \"{crc}\""));
    assert!(is_pass(&check(&mut a, "<f8", &[2], Some(data.clone()))));
    let v = check(&mut a, "<f8", &[2], Some(f64_bytes(&[1.0, 2.5])));
    assert!(
        msg(&v).contains(&format!("expected {}", crc.to_lowercase())),
        "{v:?}"
    );
    let b3 = blake3::hash(&data).to_hex().to_string();
    let mut a = rule(&format!("checksum = \"blake3:{b3}\""));
    assert!(is_pass(&check(&mut a, "<f8", &[2], Some(data))));
    assert!(!is_pass(&check(&mut a, "<f8", &[2], Some(vec![0; 16]))));
}

#[test]
fn bad_array_rules_are_refused() {
    let cases = [
        (r#"dtype = "<q9""#, "unknown dtype '<q9'"),
        (
            r#"shape = [2, -2]"#,
            "'shape' must be a list of lengths (-1 for any), found [2, -2]",
        ),
        (
            r#"checksum = "md5:00""#,
            "'checksum' must be crc32:<8 hex digits> or blake3:<64 hex digits>",
        ),
        (r#"eq = 1"#, "'eq' does not apply to heavy.<name> fields"),
        (r#"min = "a""#, "'min' of an array must be a number"),
        (
            r#"finite = "yes""#,
            "'finite' must be true or false, found a string",
        ),
    ];
    for (conds, want) in cases {
        let text =
            format!("[process.p]\nrules = [{{ name = \"r\", field = \"heavy.img\", {conds} }}]\n");
        let e = Auditor::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("<toml>: process 'p', rule 'r': {want}")),
            "{e}"
        );
    }
}

#[test]
fn missing_array_skips_unless_required() {
    let mut a = rule("finite = true");
    assert!(is_pass(&Upd::new("p").check(&mut a, 0)));
    let mut a = rule("finite = true, required = true");
    assert_eq!(msg(&Upd::new("p").check(&mut a, 0)), "heavy.img is missing");
}

//! Scan kernels: correctness against a plain loop, edge cases, and a throughput figure.

use super::scan::scan_f64_portable;
use super::*;

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn naive(values: &[f64]) -> ScanStats {
    let ok: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    ScanStats {
        finite: values.iter().all(|v| v.is_finite()),
        has_nan: values.iter().any(|v| v.is_nan()),
        min: ok.iter().copied().fold(f64::INFINITY, f64::min),
        max: ok.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        count: values.len() as u64,
    }
}

/// A deterministic pseudo-random sequence (xorshift), no dependency needed.
fn series(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2_000_001) as f64 / 1000.0 - 1000.0
        })
        .collect()
}

#[test]
fn f64_matches_naive_for_every_length_and_position_of_specials() {
    for n in [0usize, 1, 2, 7, 15, 16, 17, 31, 100, 257] {
        let base = series(n, n as u64 + 3);
        assert_eq!(scan_f64(&f64_bytes(&base)), naive(&base), "n={n}");
        for special in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            for pos in [0, n / 2, n.saturating_sub(1)] {
                if n == 0 {
                    continue;
                }
                let mut v = base.clone();
                v[pos] = special;
                let got = scan_f64(&f64_bytes(&v));
                assert_eq!(got, naive(&v), "n={n} pos={pos} special={special}");
            }
        }
    }
}

#[test]
fn empty_and_all_nan_arrays() {
    let empty = scan_f64(&[]);
    assert!(empty.finite && !empty.has_nan && empty.count == 0);
    assert!(empty.min > empty.max);
    let nan = scan_f64(&f64_bytes(&[f64::NAN; 5]));
    assert!(!nan.finite && nan.has_nan && nan.min == f64::INFINITY);
}

#[test]
fn unaligned_bytes_and_trailing_partial_element() {
    let v = series(1000, 9);
    let mut bytes = vec![0u8];
    bytes.extend(f64_bytes(&v));
    bytes.extend([1, 2, 3]);
    assert_eq!(scan_f64(&bytes[1..bytes.len() - 3]), naive(&v));
    let with_tail = scan_f64(&bytes[1..]);
    assert_eq!(with_tail.count, 1000);
    assert_eq!(with_tail.min, naive(&v).min);
}

#[test]
fn large_arrays_split_across_threads_agree_with_one_thread() {
    let mut v = series(PAR_MIN_BYTES / 8 * 3 + 5, 11);
    let last = v.len() - 1;
    v[last] = -5000.0;
    v[17] = 5000.0;
    let bytes = f64_bytes(&v);
    assert_eq!(scan_f64(&bytes), scan_f64_portable(&bytes));
    assert_eq!(scan_f64(&bytes).min, -5000.0);
    v[last] = f64::NAN;
    assert!(scan_f64(&f64_bytes(&v)).has_nan);
}

#[test]
fn f32_and_integer_kernels() {
    let f: Vec<u8> = [1.5f32, -2.0, f32::INFINITY]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let s = scan_f32(&f);
    assert!(!s.finite && !s.has_nan && s.min == -2.0 && s.max == f64::INFINITY);
    let i: Vec<u8> = [5i64, i64::MIN, 7]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        scan_i64(&i),
        IntStats {
            min: i64::MIN.into(),
            max: 7,
            count: 3
        }
    );
    let i: Vec<u8> = (-40i32..40).flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        scan_i32(&i),
        IntStats {
            min: -40,
            max: 39,
            count: 80
        }
    );
    assert_eq!(
        scan_u8(&[3, 250, 0, 9]),
        IntStats {
            min: 0,
            max: 250,
            count: 4
        }
    );
    assert_eq!(scan_u8(&[]).count, 0);
    let u: Vec<u8> = [u64::MAX, 1].iter().flat_map(|v| v.to_be_bytes()).collect();
    let dt = DType::parse(">u8").unwrap();
    assert_eq!(
        scan(dt, &u),
        Some(Stats::Int(IntStats {
            min: 1,
            max: u64::MAX.into(),
            count: 2
        }))
    );
    let half = DType::parse("<f2").unwrap();
    assert_eq!(scan(half, &[0, 0]), None);
}

#[test]
fn crc32_parallel_equals_serial() {
    let bytes: Vec<u8> = (0..PAR_MIN_BYTES * 2 + 77)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes);
    assert_eq!(crc32(&bytes), h.finalize());
}

/// Throughput of the fused finite+min+max scan on 100 MB of f64 (release build):
/// `cargo test --release -p pipeline-core scan_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn scan_throughput() {
    let v = series(100_000_000 / 8, 5);
    let bytes = f64_bytes(&v);
    let want = naive(&v);
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let got = std::hint::black_box(scan_f64(std::hint::black_box(&bytes)));
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(got, want);
    }
    let t = std::time::Instant::now();
    let one = scan_f64_portable(&bytes);
    let serial = t.elapsed().as_secs_f64();
    assert_eq!(one, want);
    let gbs = bytes.len() as f64 / best / 1e9;
    println!(
        "scan_f64: {} MB in {:.2} ms = {gbs:.1} GB/s (best of 20, {} threads); portable 1-thread kernel {:.1} GB/s",
        bytes.len() / 1_000_000,
        best * 1e3,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bytes.len() as f64 / serial / 1e9
    );
}

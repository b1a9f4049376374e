//! Fused single-pass scans over raw array bytes: finiteness, NaN, min and max at once.
//!
//! The kernels read the bytes in fixed blocks with many independent accumulators so LLVM
//! vectorises them; on x86-64 an AVX2 copy is chosen at run time. Arrays of
//! `PAR_MIN_BYTES` or more are split across the machine's cores with scoped threads.
//! Bytes need no alignment; a trailing partial element is ignored.

use std::sync::OnceLock;

use super::dtype::{DKind, DType};

/// Below this many bytes a scan runs on the calling thread.
pub const PAR_MIN_BYTES: usize = 4 << 20;

/// What a float scan found. For an array with no non-NaN element `min` is +inf and `max`
/// is -inf.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanStats {
    /// No NaN and no +-inf.
    pub finite: bool,
    /// At least one NaN.
    pub has_nan: bool,
    /// Smallest and largest non-NaN element (+-inf included).
    pub min: f64,
    pub max: f64,
    /// Elements scanned.
    pub count: u64,
}

/// What an integer (or bool) scan found. Empty arrays give `min > max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntStats {
    pub min: i128,
    pub max: i128,
    pub count: u64,
}

/// A scan's result for any supported dtype.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stats {
    Float(ScanStats),
    Int(IntStats),
}

impl ScanStats {
    fn merge(self, o: ScanStats) -> ScanStats {
        ScanStats {
            finite: self.finite && o.finite,
            has_nan: self.has_nan || o.has_nan,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            count: self.count + o.count,
        }
    }
}

impl IntStats {
    fn merge(self, o: IntStats) -> IntStats {
        IntStats {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            count: self.count + o.count,
        }
    }
}

/// Bytes per kernel iteration.
const BLOCK: usize = 128;

macro_rules! float_kernel {
    ($name:ident, $f:ty, $bits:ty, $ibits:ty) => {
        #[inline(always)]
        fn $name<const BE: bool>(data: &[u8]) -> ScanStats {
            const W: usize = std::mem::size_of::<$f>();
            const L: usize = BLOCK / W;
            const ABS: $bits = <$bits>::MAX >> 1;
            let load = |b: [u8; W]| {
                if BE {
                    <$bits>::from_be_bytes(b)
                } else {
                    <$bits>::from_le_bytes(b)
                }
            };
            let (blocks, rest) = data.as_chunks::<BLOCK>();
            let mut mn = [<$f>::INFINITY; L];
            let mut mx = [<$f>::NEG_INFINITY; L];
            let mut ab: [$ibits; L] = [0; L];
            for block in blocks {
                let (elems, _) = block.as_chunks::<W>();
                for i in 0..L {
                    let bits = load(elems[i]);
                    let x = <$f>::from_bits(bits);
                    mn[i] = if x < mn[i] { x } else { mn[i] };
                    mx[i] = if x > mx[i] { x } else { mx[i] };
                    let a = (bits & ABS) as $ibits;
                    ab[i] = if a > ab[i] { a } else { ab[i] };
                }
            }
            let (tail, _) = rest.as_chunks::<W>();
            for (i, e) in tail.iter().enumerate() {
                let bits = load(*e);
                let x = <$f>::from_bits(bits);
                mn[i] = if x < mn[i] { x } else { mn[i] };
                mx[i] = if x > mx[i] { x } else { mx[i] };
                let a = (bits & ABS) as $ibits;
                ab[i] = if a > ab[i] { a } else { ab[i] };
            }
            let inf = <$f>::INFINITY.to_bits() as $ibits;
            let worst = ab.iter().copied().max().unwrap_or(0);
            ScanStats {
                finite: worst < inf,
                has_nan: worst > inf,
                min: mn
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, |m, x| m.min(f64::from(x))),
                max: mx
                    .iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, |m, x| m.max(f64::from(x))),
                count: (data.len() / W) as u64,
            }
        }
    };
}

macro_rules! int_kernel {
    ($name:ident, $t:ty) => {
        #[inline(always)]
        fn $name<const BE: bool>(data: &[u8]) -> IntStats {
            const W: usize = std::mem::size_of::<$t>();
            const L: usize = BLOCK / W;
            let load = |b: [u8; W]| {
                if BE {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                }
            };
            let (blocks, rest) = data.as_chunks::<BLOCK>();
            let mut mn = [<$t>::MAX; L];
            let mut mx = [<$t>::MIN; L];
            for block in blocks {
                let (elems, _) = block.as_chunks::<W>();
                for i in 0..L {
                    let x = load(elems[i]);
                    mn[i] = if x < mn[i] { x } else { mn[i] };
                    mx[i] = if x > mx[i] { x } else { mx[i] };
                }
            }
            let (tail, _) = rest.as_chunks::<W>();
            for (i, e) in tail.iter().enumerate() {
                let x = load(*e);
                mn[i] = mn[i].min(x);
                mx[i] = mx[i].max(x);
            }
            let count = (data.len() / W) as u64;
            if count == 0 {
                return IntStats {
                    min: 0,
                    max: -1,
                    count,
                };
            }
            IntStats {
                min: mn.iter().copied().min().map_or(0, i128::from),
                max: mx.iter().copied().max().map_or(0, i128::from),
                count,
            }
        }
    };
}

float_kernel!(k_f64, f64, u64, i64);
float_kernel!(k_f32, f32, u32, i32);
int_kernel!(k_i64, i64);
int_kernel!(k_i32, i32);
int_kernel!(k_i16, i16);
int_kernel!(k_i8, i8);
int_kernel!(k_u64, u64);
int_kernel!(k_u32, u32);
int_kernel!(k_u16, u16);
int_kernel!(k_u8, u8);

/// A serial scan function: the kernel compiled for AVX2 when the CPU has it, else generic.
macro_rules! serial {
    ($name:ident, $kernel:ident, $be:literal, $ret:ty) => {
        fn $name(data: &[u8]) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2(data: &[u8]) -> $ret {
                    $kernel::<$be>(data)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: `avx2` only requires the AVX2 instructions, which the CPU was
                    // just found to support.
                    return unsafe { avx2(data) };
                }
            }
            $kernel::<$be>(data)
        }
    };
}

serial!(s_f64_le, k_f64, false, ScanStats);
serial!(s_f64_be, k_f64, true, ScanStats);
serial!(s_f32_le, k_f32, false, ScanStats);
serial!(s_f32_be, k_f32, true, ScanStats);
serial!(s_i64_le, k_i64, false, IntStats);
serial!(s_i64_be, k_i64, true, IntStats);
serial!(s_i32_le, k_i32, false, IntStats);
serial!(s_i32_be, k_i32, true, IntStats);
serial!(s_i16_le, k_i16, false, IntStats);
serial!(s_i16_be, k_i16, true, IntStats);
serial!(s_i8, k_i8, false, IntStats);
serial!(s_u64_le, k_u64, false, IntStats);
serial!(s_u64_be, k_u64, true, IntStats);
serial!(s_u32_le, k_u32, false, IntStats);
serial!(s_u32_be, k_u32, true, IntStats);
serial!(s_u16_le, k_u16, false, IntStats);
serial!(s_u16_be, k_u16, true, IntStats);
serial!(s_u8, k_u8, false, IntStats);

fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Run `serial` over `data`, split into whole-element parts across cores when large.
pub(crate) fn parallel<S: Send>(
    data: &[u8],
    elem: usize,
    serial: impl Fn(&[u8]) -> S + Sync,
    merge: impl Fn(S, S) -> S,
) -> S {
    let parts = threads().min(data.len() / (PAR_MIN_BYTES / 2)).max(1);
    if parts == 1 {
        return serial(data);
    }
    let step = (data.len() / parts / BLOCK).max(1) * BLOCK;
    debug_assert_eq!(step % elem, 0);
    let (first, rest) = data.split_at(step);
    std::thread::scope(|s| {
        let serial = &serial;
        let handles: Vec<_> = rest
            .chunks(step)
            .map(|part| s.spawn(move || serial(part)))
            .collect();
        let mut acc = serial(first);
        for h in handles {
            let part = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            acc = merge(acc, part);
        }
        acc
    })
}

/// Finite, NaN, min and max of little-endian f64 (`<f8`) bytes, in one pass.
pub fn scan_f64(data: &[u8]) -> ScanStats {
    parallel(data, 8, s_f64_le, ScanStats::merge)
}

/// Finite, NaN, min and max of little-endian f32 (`<f4`) bytes, in one pass.
pub fn scan_f32(data: &[u8]) -> ScanStats {
    parallel(data, 4, s_f32_le, ScanStats::merge)
}

/// Min and max of little-endian i64 (`<i8`) bytes.
pub fn scan_i64(data: &[u8]) -> IntStats {
    parallel(data, 8, s_i64_le, IntStats::merge)
}

/// Min and max of little-endian i32 (`<i4`) bytes.
pub fn scan_i32(data: &[u8]) -> IntStats {
    parallel(data, 4, s_i32_le, IntStats::merge)
}

/// Min and max of `|u1` bytes.
pub fn scan_u8(data: &[u8]) -> IntStats {
    parallel(data, 1, s_u8, IntStats::merge)
}

/// Scan bytes of any supported dtype; None for a dtype no kernel reads (float16).
pub fn scan(dtype: DType, data: &[u8]) -> Option<Stats> {
    let be = dtype.big_endian;
    let float = |f: fn(&[u8]) -> ScanStats| {
        Some(Stats::Float(parallel(
            data,
            dtype.size,
            f,
            ScanStats::merge,
        )))
    };
    let int =
        |f: fn(&[u8]) -> IntStats| Some(Stats::Int(parallel(data, dtype.size, f, IntStats::merge)));
    match (dtype.kind, dtype.size) {
        (DKind::Float, 8) => float(if be { s_f64_be } else { s_f64_le }),
        (DKind::Float, 4) => float(if be { s_f32_be } else { s_f32_le }),
        (DKind::Int, 8) => int(if be { s_i64_be } else { s_i64_le }),
        (DKind::Int, 4) => int(if be { s_i32_be } else { s_i32_le }),
        (DKind::Int, 2) => int(if be { s_i16_be } else { s_i16_le }),
        (DKind::Int, 1) => int(s_i8),
        (DKind::UInt, 8) => int(if be { s_u64_be } else { s_u64_le }),
        (DKind::UInt, 4) => int(if be { s_u32_be } else { s_u32_le }),
        (DKind::UInt, 2) => int(if be { s_u16_be } else { s_u16_le }),
        (DKind::UInt, 1) | (DKind::Bool, 1) => int(s_u8),
        _ => None,
    }
}

/// CRC-32 (IEEE) of `data`, split across cores when large.
pub fn crc32(data: &[u8]) -> u32 {
    let hasher = parallel(
        data,
        1,
        |part| {
            let mut h = crc32fast::Hasher::new();
            h.update(part);
            h
        },
        |mut a, b| {
            a.combine(&b);
            a
        },
    );
    hasher.finalize()
}

/// Scan using the portable kernel only (for tests comparing against the dispatched one).
#[cfg(test)]
pub(crate) fn scan_f64_portable(data: &[u8]) -> ScanStats {
    k_f64::<false>(data)
}

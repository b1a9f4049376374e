//! Decoding of UPDATE headers (`{"updates": [Update, ...]}`, docs/PROTOCOL.md) into borrowed
//! views. Every value stays as its raw msgpack bytes; a malformed update yields a short reason.
use crate::audit_api::Field;
use crate::msgpack::{DecodeResult, Reader};

/// Size limits applied to untrusted frames.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
pub const MAX_UPDATES_PER_FRAME: usize = 1 << 20;
pub const MAX_ENTRIES: usize = 4096;
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_DIMS: usize = 32;

/// The worker's exception (`Error` in PROTOCOL.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    pub kind: String,
    pub message: String,
    pub traceback: String,
}

/// Where a heavy array's bytes are: in a shared-memory segment, or inline in the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc<'a> {
    /// `{seg, off, len, gen, ...}`: bytes `[off, off + len)` of the segment file `seg`.
    Segment {
        seg: &'a str,
        off: u64,
        len: u64,
        gen: u64,
    },
    /// `{inline: bin, ...}`: the array's bytes.
    Inline(&'a [u8]),
}

/// A heavy write: its key, its raw Descriptor and the parts the auditor looks at.
pub struct HeavyRef<'a> {
    pub key: &'a str,
    pub raw: &'a [u8],
    pub dtype: &'a str,
    pub shape: std::ops::Range<usize>,
    pub loc: Loc<'a>,
}

/// The borrowed, variable-length parts of one update; reused from one update to the next.
#[derive(Default)]
pub struct Scratch<'a> {
    pub reads: Vec<(&'a str, u64)>,
    pub args: Vec<Field<'a>>,
    pub data: Vec<Field<'a>>,
    pub heavy: Vec<HeavyRef<'a>>,
    pub shapes: Vec<u64>,
}

impl Scratch<'_> {
    fn clear(&mut self) {
        self.reads.clear();
        self.args.clear();
        self.data.clear();
        self.heavy.clear();
        self.shapes.clear();
    }
}

/// The fixed-size parts of one update; the rest lives in a [`Scratch`].
#[derive(Default)]
pub struct Update<'a> {
    /// The whole update map, as received (journalled verbatim).
    pub raw: &'a [u8],
    pub task: &'a str,
    pub process: &'a str,
    pub attempt: u64,
    pub worker: &'a str,
    pub base: Option<u64>,
    /// `expect`: commit only if the global version equals it (any CAS mode).
    pub expect: Option<u64>,
    pub error: Option<ErrorInfo>,
    pub signals: Option<&'a [u8]>,
    pub tasks: Option<&'a [u8]>,
    pub run_us: u64,
    /// The broker's stamp on the task (ms since the epoch), the same on every attempt: the
    /// de-duplication horizon is checked against it.
    pub born_ms: Option<u64>,
}

/// A decode failure: which field, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed {
    pub field: &'static str,
    pub why: &'static str,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

fn at<T>(field: &'static str, r: DecodeResult<T>) -> Result<T, Malformed> {
    r.map_err(|why| Malformed { field, why })
}

/// The updates of one UPDATE header (`{"updates": [...]}`), yielded as raw bytes.
pub struct FrameUpdates<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> FrameUpdates<'a> {
    /// Check the frame's envelope; the updates are then read one by one.
    pub fn open(frame: &'a [u8]) -> Result<Self, Malformed> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(Malformed {
                field: "frame",
                why: "too large",
            });
        }
        let mut r = Reader::new(frame);
        if at("frame", r.map_len())? != 1 || at("frame", r.str())? != "updates" {
            return Err(Malformed {
                field: "frame",
                why: "expected {updates: [...]}",
            });
        }
        let left = at("updates", r.array_len())?;
        if left > MAX_UPDATES_PER_FRAME {
            return Err(Malformed {
                field: "updates",
                why: "too many",
            });
        }
        Ok(FrameUpdates { r, left })
    }

    /// How many updates are left to read (as the frame announces them).
    pub fn left(&self) -> usize {
        self.left
    }

    /// Decode the next update into `u` and `s`. A malformed update is skipped (the frame
    /// goes on); bytes that are not one msgpack value end the frame.
    pub fn next_update(&mut self, u: &mut Update<'a>, s: &mut Scratch<'a>) -> Option<Result<(), Malformed>> {
        if self.left == 0 {
            return (!self.r.is_empty()).then_some(Err(Malformed {
                field: "frame",
                why: "trailing bytes",
            }));
        }
        self.left -= 1;
        let start = self.r;
        let Err(bad) = decode_next(&mut self.r, u, s) else {
            return Some(Ok(()));
        };
        // Find where the update ends, as if it had not been decoded.
        self.r = start;
        if let Err(why) = self.r.skip() {
            (self.left, self.r) = (0, Reader::new(&[]));
            return Some(Err(Malformed {
                field: "updates",
                why,
            }));
        }
        Some(Err(bad))
    }
}

fn key<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, Malformed> {
    let k = at(field, r.str())?;
    if k.is_empty() || k.len() > MAX_KEY_BYTES {
        return Err(Malformed {
            field,
            why: "bad key length",
        });
    }
    Ok(k)
}

fn entries(r: &mut Reader<'_>, field: &'static str) -> Result<usize, Malformed> {
    let n = at(field, r.map_len())?;
    if n > MAX_ENTRIES {
        return Err(Malformed {
            field,
            why: "too many entries",
        });
    }
    Ok(n)
}

/// Decode one update (the raw bytes of one Update map) into `u` and `s`.
pub fn decode<'a>(raw: &'a [u8], u: &mut Update<'a>, s: &mut Scratch<'a>) -> Result<(), Malformed> {
    let mut r = Reader::new(raw);
    decode_next(&mut r, u, s)?;
    if !r.is_empty() {
        return Err(Malformed {
            field: "update",
            why: "trailing bytes",
        });
    }
    Ok(())
}

/// Decode the Update map at `r` into `u` and `s`; `u.raw` is its exact bytes.
fn decode_next<'a>(r: &mut Reader<'a>, u: &mut Update<'a>, s: &mut Scratch<'a>) -> Result<(), Malformed> {
    *u = Update::default();
    s.clear();
    let start = *r;
    let n = at("update", r.map_len())?;
    let mut seen = 0u32;
    for _ in 0..n {
        let name = at("update", r.str_bytes())?;
        let bit = field(name, r, u, s)?;
        if seen & bit != 0 {
            return Err(Malformed {
                field: "update",
                why: "repeated field",
            });
        }
        seen |= bit;
    }
    u.raw = r.since(&start);
    required(u, seen)
}

const TASK: u32 = 1;
const PROCESS: u32 = 2;
const ATTEMPT: u32 = 4;

fn required(u: &Update<'_>, seen: u32) -> Result<(), Malformed> {
    let need = |bit: u32, field: &'static str| {
        if seen & bit == 0 {
            Err(Malformed {
                field,
                why: "missing",
            })
        } else {
            Ok(())
        }
    };
    need(TASK, "task")?;
    need(PROCESS, "process")?;
    need(ATTEMPT, "attempt")?;
    if u.task.is_empty() || u.task.len() > MAX_KEY_BYTES {
        return Err(Malformed {
            field: "task",
            why: "bad length",
        });
    }
    Ok(())
}

/// Decode one named field; returns its bit in the "seen" mask (one bit per field name).
fn field<'a>(
    name: &[u8],
    r: &mut Reader<'a>,
    u: &mut Update<'a>,
    s: &mut Scratch<'a>,
) -> Result<u32, Malformed> {
    match name {
        b"task" => u.task = at("task", r.str())?,
        b"process" => u.process = at("process", r.str())?,
        b"attempt" => u.attempt = at("attempt", r.uint())?,
        b"worker" => u.worker = at("worker", r.str())?,
        b"reads" => reads(r, s)?,
        b"base" => u.base = opt_uint(r, "base")?,
        b"args" => fields(r, "args", &mut s.args)?,
        b"data" => fields(r, "data", &mut s.data)?,
        b"heavy" => heavy(r, s)?,
        b"error" => u.error = error(r)?,
        b"signals" => u.signals = Some(signals(r)?),
        b"tasks" => u.tasks = Some(tasks(r)?),
        b"run_us" => u.run_us = at("run_us", r.uint())?,
        b"expect" => u.expect = opt_uint(r, "expect")?,
        b"born_ms" => u.born_ms = opt_uint(r, "born_ms")?,
        _ => {
            return Err(Malformed {
                field: "update",
                why: "unknown field",
            })
        }
    }
    Ok(field_bit(name))
}

/// The field's bit: by its length and first byte, which tell the 15 names apart (the name
/// is known to be one of them).
#[inline]
fn field_bit(name: &[u8]) -> u32 {
    match (name.len(), name[0]) {
        (4, b't') => TASK,
        (7, b'p') => PROCESS,
        (7, b'a') => ATTEMPT,
        (6, b'w') => 1 << 3,
        (5, b'r') => 1 << 4,
        (4, b'b') => 1 << 5,
        (4, b'a') => 1 << 6,
        (4, b'd') => 1 << 7,
        (5, b'h') => 1 << 8,
        (5, b'e') => 1 << 9,
        (7, b's') => 1 << 10,
        (5, b't') => 1 << 11,
        (6, b'r') => 1 << 12,
        (6, b'e') => 1 << 13,
        (7, b'b') => 1 << 14,
        _ => 0,
    }
}

fn reads<'a>(r: &mut Reader<'a>, s: &mut Scratch<'a>) -> Result<(), Malformed> {
    for _ in 0..entries(r, "reads")? {
        let k = key(r, "reads")?;
        let v = at("reads", r.uint())?;
        s.reads.push((k, v));
    }
    Ok(())
}

/// An int or nil.
fn opt_uint(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u64>, Malformed> {
    if at(field, r.try_nil())? {
        return Ok(None);
    }
    at(field, r.uint()).map(Some)
}

fn fields<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
    out: &mut Vec<Field<'a>>,
) -> Result<(), Malformed> {
    for _ in 0..entries(r, field)? {
        let name = key(r, field)?;
        let value = at(field, r.raw())?;
        out.push(Field { name, value });
    }
    Ok(())
}

fn heavy<'a>(r: &mut Reader<'a>, s: &mut Scratch<'a>) -> Result<(), Malformed> {
    for _ in 0..entries(r, "heavy")? {
        let key = key(r, "heavy")?;
        let raw = at("heavy", r.raw())?;
        let start = s.shapes.len();
        let (dtype, loc) = descriptor(raw, &mut s.shapes)?;
        s.heavy.push(HeavyRef {
            key,
            raw,
            dtype,
            shape: start..s.shapes.len(),
            loc,
        });
    }
    Ok(())
}

/// Descriptor fields, one bit each (`ns`, optional, has none).
const D_SEG: u8 = 1;
const D_OFF: u8 = 2;
const D_LEN: u8 = 4;
const D_GEN: u8 = 8;
const D_DTYPE: u8 = 16;
const D_SHAPE: u8 = 32;
const D_STRIDES: u8 = 64;
const D_INLINE: u8 = 128;
const SEGMENT_FORM: u8 = D_SEG | D_OFF | D_LEN | D_GEN | D_DTYPE | D_SHAPE | D_STRIDES;
const INLINE_FORM: u8 = D_INLINE | D_DTYPE | D_SHAPE;

/// Check a Descriptor's fields and types (the segment form `{seg, off, len, dtype, shape,
/// strides, gen}` or the inline form `{inline, dtype, shape}`, either with an optional `ns`);
/// returns its dtype and location, and appends its shape.
fn descriptor<'a>(raw: &'a [u8], shapes: &mut Vec<u64>) -> Result<(&'a str, Loc<'a>), Malformed> {
    const F: &str = "heavy descriptor";
    let bad = |why| Malformed {
        field: "heavy",
        why,
    };
    let mut r = Reader::new(raw);
    let (mut dtype, mut seg, mut inline, mut seen) = ("", "", &[][..], 0u8);
    let (mut off, mut len, mut gen) = (0, 0, 0);
    for _ in 0..at(F, r.map_len())? {
        let bit = match at(F, r.str())? {
            "seg" => {
                seg = at(F, r.str())?;
                D_SEG
            }
            "off" => {
                off = at(F, r.uint())?;
                D_OFF
            }
            "len" => {
                len = at(F, r.uint())?;
                D_LEN
            }
            "gen" => {
                gen = at(F, r.uint())?;
                D_GEN
            }
            "dtype" => {
                dtype = at(F, r.str())?;
                D_DTYPE
            }
            "shape" if seen & D_SHAPE == 0 => dims(&mut r, Some(shapes)).map(|_| D_SHAPE)?,
            "strides" => dims(&mut r, None).map(|_| D_STRIDES)?,
            "inline" => {
                inline = at(F, r.bin())?;
                D_INLINE
            }
            "ns" => at(F, r.str()).map(|_| 0)?,
            _ => return Err(bad("unknown or repeated descriptor field")),
        };
        if seen & bit != 0 {
            return Err(bad("unknown or repeated descriptor field"));
        }
        seen |= bit;
    }
    if dtype.is_empty() || dtype.contains('O') {
        return Err(bad("incomplete descriptor or bad dtype"));
    }
    match seen {
        SEGMENT_FORM => Ok((dtype, Loc::Segment { seg, off, len, gen })),
        INLINE_FORM => Ok((dtype, Loc::Inline(inline))),
        _ => Err(bad("incomplete descriptor or bad dtype")),
    }
}

fn dims(r: &mut Reader<'_>, mut out: Option<&mut Vec<u64>>) -> Result<(), Malformed> {
    let n = at("heavy", r.array_len())?;
    if n > MAX_DIMS {
        return Err(Malformed {
            field: "heavy",
            why: "too many dims",
        });
    }
    for _ in 0..n {
        // Strides may be negative; shapes may not.
        let v = if out.is_some() {
            at("heavy", r.uint())?
        } else {
            skip_int(r)?
        };
        if let Some(o) = out.as_deref_mut() {
            o.push(v);
        }
    }
    Ok(())
}

fn skip_int(r: &mut Reader<'_>) -> Result<u64, Malformed> {
    let raw = at("heavy", r.raw())?;
    match rmp::Marker::from_u8(raw[0]) {
        rmp::Marker::FixPos(_) | rmp::Marker::FixNeg(_) => Ok(0),
        rmp::Marker::U8 | rmp::Marker::U16 | rmp::Marker::U32 | rmp::Marker::U64 => Ok(0),
        rmp::Marker::I8 | rmp::Marker::I16 | rmp::Marker::I32 | rmp::Marker::I64 => Ok(0),
        _ => Err(Malformed {
            field: "heavy",
            why: "expected int",
        }),
    }
}

fn error(r: &mut Reader<'_>) -> Result<Option<ErrorInfo>, Malformed> {
    if at("error", r.try_nil())? {
        return Ok(None);
    }
    let mut e = ErrorInfo {
        kind: String::new(),
        message: String::new(),
        traceback: String::new(),
    };
    for _ in 0..at("error", r.map_len())? {
        let slot = match at("error", r.str())? {
            "type" => &mut e.kind,
            "message" => &mut e.message,
            "traceback" => &mut e.traceback,
            _ => {
                return Err(Malformed {
                    field: "error",
                    why: "unknown field",
                })
            }
        };
        *slot = at("error", r.str())?.to_owned();
    }
    if e.kind.is_empty() {
        return Err(Malformed {
            field: "error",
            why: "missing type",
        });
    }
    Ok(Some(e))
}

/// `[{topic: str, payload: bin}]`, checked, returned raw.
fn signals<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Malformed> {
    if let Some(empty) = r.empty_array() {
        return Ok(empty);
    }
    let raw = at("signals", r.raw())?;
    let mut s = Reader::new(raw);
    for _ in 0..at("signals", s.array_len())? {
        let mut seen = 0;
        for _ in 0..at("signals", s.map_len())? {
            match at("signals", s.str())? {
                "topic" => seen |= at("signals", s.str()).map(|_| 1)?,
                "payload" => seen |= at("signals", s.bin()).map(|_| 2)?,
                _ => {
                    return Err(Malformed {
                        field: "signals",
                        why: "unknown field",
                    })
                }
            }
        }
        if seen != 3 {
            return Err(Malformed {
                field: "signals",
                why: "missing topic or payload",
            });
        }
    }
    Ok(raw)
}

/// `[{process: str, args: map}]`, checked, returned raw.
fn tasks<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Malformed> {
    if let Some(empty) = r.empty_array() {
        return Ok(empty);
    }
    let raw = at("tasks", r.raw())?;
    let mut s = Reader::new(raw);
    for _ in 0..at("tasks", s.array_len())? {
        let mut seen = 0;
        for _ in 0..at("tasks", s.map_len())? {
            match at("tasks", s.str())? {
                "process" => seen |= at("tasks", s.str()).map(|_| 1)?,
                "args" => {
                    let mut args = Vec::new();
                    fields(&mut s, "tasks", &mut args)?;
                    seen |= 2;
                }
                _ => {
                    return Err(Malformed {
                        field: "tasks",
                        why: "unknown field",
                    })
                }
            }
        }
        if seen & 1 == 0 {
            return Err(Malformed {
                field: "tasks",
                why: "missing process",
            });
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::field_bit;

    #[test]
    fn every_field_has_its_own_bit() {
        let names = [
            "task", "process", "attempt", "worker", "reads", "base", "args", "data", "heavy",
            "error", "signals", "tasks", "run_us", "expect", "born_ms",
        ];
        let bits: Vec<u32> = names.iter().map(|n| field_bit(n.as_bytes())).collect();
        let all = bits.iter().fold(0, |acc, b| acc | b);
        assert_eq!((all.count_ones(), bits.iter().all(|b| b.count_ones() == 1)), (15, true));
    }
}

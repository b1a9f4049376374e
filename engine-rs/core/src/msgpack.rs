//! A tiny msgpack reader over a borrowed byte slice and an infallible writer into a `Vec<u8>`.
//!
//! Values are never decoded needlessly: `raw` returns the exact bytes of one value so that
//! state values travel as msgpack bytes from the worker to the journal, the state and events.
use rmp::Marker;

/// A short, counter-friendly reason why bytes could not be decoded.
pub type DecodeResult<T> = Result<T, &'static str>;

/// `bytes` as UTF-8; short ASCII strings (ids, keys, names) skip the general validator.
#[inline]
pub fn utf8(bytes: &[u8]) -> DecodeResult<&str> {
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8 (just checked).
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|_| "invalid utf-8")
}

/// A cursor over msgpack bytes. Every read checks bounds; nothing panics on bad input.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The bytes read since `from` (an earlier copy of this reader).
    #[inline]
    pub fn since(&self, from: &Reader<'a>) -> &'a [u8] {
        &self.buf[from.pos..self.pos]
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or("truncated")?;
        let out = self.buf.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(out)
    }

    #[inline]
    fn be(&mut self, n: usize) -> DecodeResult<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    #[inline]
    fn marker(&mut self) -> DecodeResult<Marker> {
        Ok(Marker::from_u8(self.take(1)?[0]))
    }

    #[inline]
    fn peek(&self) -> DecodeResult<Marker> {
        self.buf
            .get(self.pos)
            .map(|b| Marker::from_u8(*b))
            .ok_or("truncated")
    }

    /// Consume an empty array (`[]`, 0x90) if one is next; its byte if it was.
    #[inline]
    pub fn empty_array(&mut self) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..self.pos + 1).filter(|b| b[0] == 0x90)?;
        self.pos += 1;
        Some(b)
    }

    /// Consume a nil if one is next; true if it was.
    #[inline]
    pub fn try_nil(&mut self) -> DecodeResult<bool> {
        let nil = self.peek()? == Marker::Null;
        if nil {
            self.pos += 1;
        }
        Ok(nil)
    }

    #[inline]
    pub fn map_len(&mut self) -> DecodeResult<usize> {
        let n = match self.marker()? {
            Marker::FixMap(n) => u64::from(n),
            Marker::Map16 => self.be(2)?,
            Marker::Map32 => self.be(4)?,
            _ => return Err("expected map"),
        };
        Ok(n as usize)
    }

    #[inline]
    pub fn array_len(&mut self) -> DecodeResult<usize> {
        let n = match self.marker()? {
            Marker::FixArray(n) => u64::from(n),
            Marker::Array16 => self.be(2)?,
            Marker::Array32 => self.be(4)?,
            _ => return Err("expected array"),
        };
        Ok(n as usize)
    }

    #[inline]
    pub fn str(&mut self) -> DecodeResult<&'a str> {
        utf8(self.str_bytes()?)
    }

    /// The bytes of a str, unchecked as UTF-8 (for names only compared with constants).
    #[inline]
    pub fn str_bytes(&mut self) -> DecodeResult<&'a [u8]> {
        let n = match self.marker()? {
            Marker::FixStr(n) => u64::from(n),
            Marker::Str8 => self.be(1)?,
            Marker::Str16 => self.be(2)?,
            Marker::Str32 => self.be(4)?,
            _ => return Err("expected str"),
        };
        self.take(n as usize)
    }

    #[inline]
    pub fn bin(&mut self) -> DecodeResult<&'a [u8]> {
        let n = match self.marker()? {
            Marker::Bin8 => self.be(1)?,
            Marker::Bin16 => self.be(2)?,
            Marker::Bin32 => self.be(4)?,
            _ => return Err("expected bin"),
        };
        self.take(n as usize)
    }

    #[inline]
    pub fn bool(&mut self) -> DecodeResult<bool> {
        match self.marker()? {
            Marker::True => Ok(true),
            Marker::False => Ok(false),
            _ => Err("expected bool"),
        }
    }

    /// A non-negative integer in any msgpack integer encoding.
    #[inline]
    pub fn uint(&mut self) -> DecodeResult<u64> {
        let signed = |v: i64| u64::try_from(v).map_err(|_| "negative int");
        match self.marker()? {
            Marker::FixPos(n) => Ok(u64::from(n)),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            Marker::I8 => signed(i64::from(self.be(1)? as u8 as i8)),
            Marker::I16 => signed(i64::from(self.be(2)? as u16 as i16)),
            Marker::I32 => signed(i64::from(self.be(4)? as u32 as i32)),
            Marker::I64 => signed(self.be(8)? as i64),
            Marker::FixNeg(_) => Err("negative int"),
            _ => Err("expected int"),
        }
    }

    /// Skip one value (iteratively: hostile nesting cannot overflow the stack).
    #[inline]
    pub fn skip(&mut self) -> DecodeResult<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            pending += self.skip_head()?;
        }
        Ok(())
    }

    /// The exact bytes of the next value.
    #[inline]
    pub fn raw(&mut self) -> DecodeResult<&'a [u8]> {
        let start = self.pos;
        self.skip()?;
        Ok(&self.buf[start..self.pos])
    }

    /// Consume one value's head (and its payload if scalar); returns how many child values
    /// follow it.
    #[inline]
    fn skip_head(&mut self) -> DecodeResult<u64> {
        let sized = |r: &mut Self, len_bytes: usize| -> DecodeResult<u64> {
            let n = r.be(len_bytes)? as usize;
            r.take(n).map(|_| 0)
        };
        match self.marker()? {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                Ok(0)
            }
            Marker::U8 | Marker::I8 => self.take(1).map(|_| 0),
            Marker::U16 | Marker::I16 => self.take(2).map(|_| 0),
            Marker::U32 | Marker::I32 | Marker::F32 => self.take(4).map(|_| 0),
            Marker::U64 | Marker::I64 | Marker::F64 => self.take(8).map(|_| 0),
            Marker::FixStr(n) => self.take(usize::from(n)).map(|_| 0),
            Marker::Str8 | Marker::Bin8 => sized(self, 1),
            Marker::Str16 | Marker::Bin16 => sized(self, 2),
            Marker::Str32 | Marker::Bin32 => sized(self, 4),
            Marker::FixArray(n) => Ok(u64::from(n)),
            Marker::Array16 => self.be(2),
            Marker::Array32 => self.be(4),
            Marker::FixMap(n) => Ok(2 * u64::from(n)),
            Marker::Map16 => Ok(2 * self.be(2)?),
            Marker::Map32 => Ok(2 * self.be(4)?),
            Marker::FixExt1 => self.take(2).map(|_| 0),
            Marker::FixExt2 => self.take(3).map(|_| 0),
            Marker::FixExt4 => self.take(5).map(|_| 0),
            Marker::FixExt8 => self.take(9).map(|_| 0),
            Marker::FixExt16 => self.take(17).map(|_| 0),
            Marker::Ext8 => self.ext(1),
            Marker::Ext16 => self.ext(2),
            Marker::Ext32 => self.ext(4),
            Marker::Reserved => Err("reserved marker"),
        }
    }

    #[inline]
    fn ext(&mut self, len_bytes: usize) -> DecodeResult<u64> {
        let n = self.be(len_bytes)? as usize;
        self.take(n.checked_add(1).ok_or("truncated")?).map(|_| 0)
    }
}

/// Infallible msgpack writers into a growing buffer.
pub mod put {
    use rmp::Marker;

    #[inline]
    fn sized(buf: &mut Vec<u8>, n: usize, m8: Option<Marker>, m16: Marker, m32: Marker) {
        match n {
            0..=0xff if m8.is_some() => {
                buf.extend_from_slice(&[m8.map_or(0, |m| m.to_u8()), n as u8])
            }
            0..=0xffff => {
                buf.push(m16.to_u8());
                buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                buf.push(m32.to_u8());
                buf.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }

    #[inline]
    pub fn map_len(buf: &mut Vec<u8>, n: usize) {
        if n < 16 {
            buf.push(Marker::FixMap(n as u8).to_u8());
        } else {
            sized(buf, n, None, Marker::Map16, Marker::Map32);
        }
    }

    #[inline]
    pub fn array_len(buf: &mut Vec<u8>, n: usize) {
        if n < 16 {
            buf.push(Marker::FixArray(n as u8).to_u8());
        } else {
            sized(buf, n, None, Marker::Array16, Marker::Array32);
        }
    }

    #[inline]
    pub fn str(buf: &mut Vec<u8>, s: &str) {
        if s.len() < 32 {
            buf.push(Marker::FixStr(s.len() as u8).to_u8());
        } else {
            sized(
                buf,
                s.len(),
                Some(Marker::Str8),
                Marker::Str16,
                Marker::Str32,
            );
        }
        buf.extend_from_slice(s.as_bytes());
    }

    #[inline]
    pub fn bin(buf: &mut Vec<u8>, b: &[u8]) {
        sized(
            buf,
            b.len(),
            Some(Marker::Bin8),
            Marker::Bin16,
            Marker::Bin32,
        );
        buf.extend_from_slice(b);
    }

    #[inline]
    pub fn uint(buf: &mut Vec<u8>, v: u64) {
        match v {
            0..=0x7f => buf.push(v as u8),
            0x80..=0xff => buf.extend_from_slice(&[Marker::U8.to_u8(), v as u8]),
            0x100..=0xffff => {
                buf.push(Marker::U16.to_u8());
                buf.extend_from_slice(&(v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                buf.push(Marker::U32.to_u8());
                buf.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                buf.push(Marker::U64.to_u8());
                buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    #[inline]
    pub fn nil(buf: &mut Vec<u8>) {
        buf.push(Marker::Null.to_u8());
    }

    #[inline]
    pub fn bool(buf: &mut Vec<u8>, v: bool) {
        buf.push(if v { Marker::True } else { Marker::False }.to_u8());
    }

    /// Start `{"<name>": [...]}` in `buf` (empty) with room for the head of at most `max`
    /// items; items are then appended. Returns where they start (for [`list_end`]).
    pub fn list_start(buf: &mut Vec<u8>, name: &str, max: usize) -> usize {
        map_len(buf, 1);
        str(buf, name);
        array_len(buf, max);
        buf.len()
    }

    /// Write the head of the list begun by [`list_start`] for its actual `count` items
    /// (at most the `max` reserved for), keeping the encoding canonical: the items move
    /// down only if the shorter head needs fewer bytes.
    pub fn list_end(buf: &mut Vec<u8>, name: &str, body_at: usize, count: usize) {
        let mut head = Vec::with_capacity(body_at);
        map_len(&mut head, 1);
        str(&mut head, name);
        array_len(&mut head, count);
        if head.len() < body_at {
            buf.copy_within(body_at.., head.len());
            buf.truncate(buf.len() - (body_at - head.len()));
        }
        buf[..head.len()].copy_from_slice(&head);
    }

    #[inline]
    pub fn opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => str(buf, s),
            None => nil(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[inline]
    fn round_trip_scalars_and_skip() {
        let mut b = Vec::new();
        put::map_len(&mut b, 2);
        put::str(&mut b, "a");
        put::uint(&mut b, 70000);
        put::str(&mut b, &"x".repeat(40));
        put::array_len(&mut b, 1);
        put::bin(&mut b, &[1, 2, 3]);
        let mut r = Reader::new(&b);
        assert_eq!(r.map_len(), Ok(2));
        assert_eq!(r.str(), Ok("a"));
        assert_eq!(r.uint(), Ok(70000));
        assert_eq!(r.str().map(str::len), Ok(40));
        assert_eq!(r.raw(), Ok(&b[b.len() - 6..]));
        assert!(r.is_empty());
    }

    #[test]
    fn lists_written_in_place_are_canonical() {
        for (max, count) in [(3, 3), (20, 3), (70_000, 3), (70_000, 20), (70_000, 70_000), (20, 20)] {
            let mut b = Vec::new();
            let at = put::list_start(&mut b, "items", max);
            (0..count).for_each(|i| put::uint(&mut b, i as u64 % 100));
            put::list_end(&mut b, "items", at, count);
            let mut want = Vec::new();
            put::map_len(&mut want, 1);
            put::str(&mut want, "items");
            put::array_len(&mut want, count);
            (0..count).for_each(|i| put::uint(&mut want, i as u64 % 100));
            assert_eq!(b, want, "max {max} count {count}");
        }
    }

    #[test]
    #[inline]
    fn truncated_and_hostile_inputs_fail_cleanly() {
        assert_eq!(
            Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).skip(),
            Err("truncated")
        );
        assert_eq!(Reader::new(&[0xc1]).skip(), Err("reserved marker"));
        let deep = vec![0x91u8; 100_000];
        assert_eq!(Reader::new(&deep).skip(), Err("truncated"));
        assert_eq!(Reader::new(&[0xff]).uint(), Err("negative int"));
    }
}

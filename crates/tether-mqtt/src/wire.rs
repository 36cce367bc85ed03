//! The data types of MQTT's packets (MQTT 5, 1.5; the same in 3.1.1 but for properties):
//! big-endian integers, variable byte integers, UTF-8 strings and binary data, each with a
//! reader that never reads or allocates past the packet and a writer that never panics.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// The largest value of a variable byte integer (four bytes of 7 bits).
pub const VBI_MAX: u32 = 268_435_455;

/// Decode a variable byte integer from the front of `buf`: `Ok(None)` when `buf` ends inside
/// it, else the value and how many bytes it took.
///
/// Refuses a fifth byte and a value not written in its fewest bytes ([MQTT-1.5.5-1] of 5.0),
/// so that one value has one encoding.
pub fn read_vbi(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer not in its shortest form",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// How many bytes `value` takes as a variable byte integer (at most [`VBI_MAX`]).
pub fn vbi_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Where an encoder writes: the packet's bytes, or just their count (the first pass of
/// [`crate::encode`], which sizes the packet so that the second writes it in one go).
pub trait Out {
    fn put(&mut self, bytes: &[u8]);

    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    fn vbi(&mut self, mut v: u32) {
        let mut b = [0u8; 4];
        let mut n = 0;
        loop {
            let mut byte = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                byte |= 0x80;
            }
            b[n] = byte;
            n += 1;
            if v == 0 || n == 4 {
                break;
            }
        }
        self.put(&b[..n]);
    }
    /// A UTF-8 string or binary data: a 2-byte length, then the bytes.
    fn data(&mut self, field: &'static str, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: bytes.len(),
        })?;
        self.u16(len);
        self.put(bytes);
        Ok(())
    }
}

/// Counts bytes instead of writing them.
#[derive(Debug, Default)]
pub struct Count(pub usize);

impl Out for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Out for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// Reads one packet's body: every read is checked against the end of the packet (or of the
/// properties being read), so nothing runs past it; strings and binary data are at most the
/// bytes left, so nothing allocates more than the packet holds.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a Bytes, pos: usize, end: usize) -> Self {
        Self { buf, pos, end }
    }

    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "packet ends inside a byte field")?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2, "packet ends inside a two-byte integer")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "packet ends inside a four-byte integer")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn vbi(&mut self) -> Result<u32, DecodeError> {
        match read_vbi(&self.buf[self.pos..self.end])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(DecodeError::Malformed(
                "packet ends inside a variable byte integer",
            )),
        }
    }

    /// Binary data: a 2-byte length and that many bytes, zero-copy.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.remaining() < len {
            return Err(DecodeError::Malformed("binary data runs past the packet"));
        }
        let b = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    /// A UTF-8 encoded string: well-formed UTF-8 ([MQTT-1.5.3-1]) without U+0000
    /// ([MQTT-1.5.3-2]).
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len, "string runs past the packet")?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::Malformed("string is not well-formed UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed("string holds U+0000"));
        }
        Ok(s.to_owned())
    }

    /// Everything left in the packet, zero-copy (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..self.end);
        self.pos = self.end;
        b
    }

    /// A reader of the next `len` bytes (properties), which this one skips.
    pub fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Malformed(what));
        }
        let r = Reader::new(self.buf, self.pos, self.pos + len);
        self.pos += len;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_values_from_the_spec() {
        // MQTT 5, 1.5.5: the boundaries of each length.
        for (v, bytes) in [
            (0u32, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = BytesMut::new();
            out.vbi(v);
            assert_eq!(&out[..], bytes, "{v}");
            assert_eq!(vbi_len(v), bytes.len());
            assert_eq!(read_vbi(bytes), Ok(Some((v, bytes.len()))));
            assert_eq!(read_vbi(&bytes[..bytes.len() - 1]), Ok(None));
        }
        assert!(read_vbi(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        assert!(read_vbi(&[0x80, 0x00]).is_err());
        assert!(read_vbi(&[0xFF, 0x80, 0x00]).is_err());
    }

    #[test]
    fn strings_are_checked() {
        let data = Bytes::from_static(b"\x00\x02a\x00\x00\x02\xC3\x28\x00\x05abc");
        let mut r = Reader::new(&data, 0, 4);
        assert_eq!(
            r.string(),
            Err(DecodeError::Malformed("string holds U+0000"))
        );
        let mut r = Reader::new(&data, 4, 8);
        assert!(r.string().is_err());
        let mut r = Reader::new(&data, 8, data.len());
        assert!(r.string().is_err());
    }
}

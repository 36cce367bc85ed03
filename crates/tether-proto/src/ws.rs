//! WebSocket framing (RFC 6455, section 5), the server's side: the frame headers clients send
//! (always masked) and the ones a server writes (never masked). What a message means (text: a
//! JSON frame, binary: a binary frame) and the HTTP upgrade before the first frame are the
//! gateway's business.
//!
//! Check, then parse, like the binary codec: [`parse_header`] answers `Ok(None)` until a whole
//! header is there, and checks the payload's length against the limit before anyone buffers
//! it. No extension is ever negotiated, so the reserved bits must be zero.
//!
//! What breaks WebSocket itself is a [`WsError`], closed with an RFC 6455 code, apart from the
//! [`crate::DecodeError`] of a message that is no tether frame.

use crate::Code;

mod utf8;

pub use utf8::Utf8Check;

/// Why a client's frames break WebSocket (RFC 6455) itself, below tether. Fatal: the server
/// closes with [`WsError::code`] in a close frame, and sends no `disconnect` (the client's
/// WebSocket layer failed, not its tether layer).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WsError {
    /// Framing RFC 6455 forbids: close code 1002.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message of the type the connection does not take (binary on a connection that
    /// speaks JSON, text on one that speaks binary): close code 1003.
    #[error("unsupported data: {0}")]
    UnsupportedData(&'static str),
    /// A text message that is not UTF-8: close code 1007.
    #[error("a text message is not valid UTF-8")]
    InvalidUtf8,
    /// A message longer than the limit: close code 1009. `len` and `max` count the tether
    /// frame (a binary message's length prefix excluded), as [`crate::DecodeError::TooLarge`]
    /// does, with the same text.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooBig { len: u64, max: u32 },
}

impl WsError {
    /// The close code (RFC 6455, 7.4.1).
    pub fn code(&self) -> Code {
        match self {
            WsError::Protocol(_) => Code::WS_PROTOCOL,
            WsError::UnsupportedData(_) => Code::WS_UNSUPPORTED_DATA,
            WsError::InvalidUtf8 => Code::WS_INVALID_UTF8,
            WsError::TooBig { .. } => Code::WS_TOO_BIG,
        }
    }
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a message begun by a text or binary frame.
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most [`MAX_CONTROL`] bytes, never fragmented, and allowed
    /// between the fragments of a message.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// The longest control frame payload.
pub const MAX_CONTROL: usize = 125;

/// The longest header a client sends: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_CLIENT_HEADER: usize = 14;

/// A client frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last fragment of its message (always set on control frames).
    pub fin: bool,
    pub opcode: Opcode,
    /// The key the payload is masked with (see [`unmask`]).
    pub mask: [u8; 4],
    /// The payload's length, at most the limit [`parse_header`] was given.
    pub len: usize,
    /// The header's own length: the payload starts there.
    pub header_len: usize,
}

/// The header of the client frame at the front of `buf`, or `Ok(None)` when it is not all
/// there yet. A frame whose payload is longer than `max_payload` is refused from its header
/// alone, and so is anything RFC 6455 forbids a client: unmasked frames, reserved bits or
/// opcodes, long or fragmented control frames.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol(
            "reserved bits set, and no extension was negotiated",
        ));
    }
    let Some(opcode) = Opcode::from_bits(b0 & 0x0F) else {
        return Err(WsError::Protocol("unknown opcode"));
    };
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("a client's frames must be masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol(
                        "the length's most significant bit is set",
                    ));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL as u64) {
        return Err(WsError::Protocol(
            "a control frame must be whole and at most 125 bytes",
        ));
    }
    if len > max_payload as u64 {
        return Err(WsError::TooBig {
            len,
            max: u32::try_from(max_payload).unwrap_or(u32::MAX),
        });
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        // At most `max_payload`, a usize.
        len: len as usize,
        header_len: at + 4,
    }))
}

/// Unmasks part of a client frame's payload in place, `part` beginning `offset` bytes into
/// the payload: a frame can be unmasked as it arrives, piece by piece.
pub fn unmask_at(part: &mut [u8], mut mask: [u8; 4], offset: usize) {
    mask.rotate_left(offset % 4);
    unmask(part, mask);
}

/// Unmasks a client frame's payload in place (masking is its own inverse).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Eight bytes at a time: the key repeats every four, so twice over.
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // The rest starts at a multiple of eight, so with the key's first byte.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// The header of a frame this side writes: one whole message (FIN), unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHeader {
    bytes: [u8; 10],
    len: u8,
}

impl ServerHeader {
    pub fn new(opcode: Opcode, payload_len: usize) -> ServerHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode.bits();
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        ServerHeader { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A whole control frame this side writes (pong, close). `payload` is cut to
/// [`MAX_CONTROL`] bytes.
pub fn control(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let header = ServerHeader::new(opcode, payload.len());
    let mut frame = Vec::with_capacity(header.as_bytes().len() + payload.len());
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A close frame's payload: the code, then as much of `reason` as fits, cut on a character
/// boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// The close frame that answers a client's close whose payload is `payload`: the same code,
/// or 1002 (protocol error) for a payload RFC 6455 does not allow (one byte, a code that is
/// not registered or that no endpoint may send, a reason that is not UTF-8), or no code for
/// an empty one.
pub fn close_reply(payload: &[u8]) -> Vec<u8> {
    let valid = match payload {
        [] => return control(Opcode::Close, &[]),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            allowed && std::str::from_utf8(reason).is_ok()
        }
        [_] => false,
    };
    let code = if valid {
        &payload[..2]
    } else {
        &1002u16.to_be_bytes()[..]
    };
    control(Opcode::Close, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as a client writes it.
    fn client_frame(fin: bool, opcode: Opcode, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![u8::from(fin) << 7 | opcode.bits()];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        // The RFC's own definition, not `unmask`: octet i is XORed with key octet i mod 4.
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn the_rfc_example_of_a_masked_hello() {
        // RFC 6455, 5.7: a single-frame masked text message containing "Hello".
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let header = parse_header(&frame, 1024).unwrap().unwrap();
        assert_eq!(
            header,
            Header {
                fin: true,
                opcode: Opcode::Text,
                mask: [0x37, 0xfa, 0x21, 0x3d],
                len: 5,
                header_len: 6,
            }
        );
        let mut payload = frame[6..].to_vec();
        unmask(&mut payload, header.mask);
        assert_eq!(payload, b"Hello");
        // And the unmasked one a server writes.
        assert_eq!(
            control(Opcode::Text, b"Hello"),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
    }

    #[test]
    fn a_header_is_not_complete_until_its_mask_is_there() {
        let frame = client_frame(true, Opcode::Binary, [1, 2, 3, 4], &[9; 300]);
        for cut in 0..8 {
            assert_eq!(parse_header(&frame[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let header = parse_header(&frame, 1024).unwrap().unwrap();
        assert_eq!((header.len, header.header_len), (300, 8));
    }

    #[test]
    fn what_a_client_must_not_send_is_refused() {
        let ok = client_frame(true, Opcode::Binary, [1, 2, 3, 4], b"x");
        let mut reserved = ok.clone();
        reserved[0] |= 0x40;
        let mut opcode = ok.clone();
        opcode[0] = 0x83;
        let mut unmasked = ok.clone();
        unmasked[1] &= 0x7F;
        let fragmented_ping = client_frame(false, Opcode::Ping, [0; 4], b"");
        let long_ping = client_frame(true, Opcode::Ping, [0; 4], &[0; 126]);
        for bad in [reserved, opcode, unmasked, fragmented_ping, long_ping] {
            let e = parse_header(&bad, 1024).unwrap_err();
            assert_eq!(e.code(), Code::WS_PROTOCOL, "{bad:?}: {e}");
        }
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            parse_header(&huge, 1024),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_from_its_header() {
        let header_only = &client_frame(true, Opcode::Binary, [0; 4], &[0; 2000])[..4];
        assert_eq!(
            parse_header(header_only, 1999),
            Err(WsError::TooBig {
                len: 2000,
                max: 1999
            })
        );
        assert_eq!(parse_header(header_only, 2000), Ok(None));
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(
            ServerHeader::new(Opcode::Binary, 125).as_bytes(),
            [0x82, 125]
        );
        assert_eq!(
            ServerHeader::new(Opcode::Text, 126).as_bytes(),
            [0x81, 126, 0, 126]
        );
        assert_eq!(
            ServerHeader::new(Opcode::Binary, 65_536).as_bytes(),
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn a_close_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(100);
        let payload = close_payload(4001, &reason);
        assert_eq!(&payload[..2], &4001u16.to_be_bytes());
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(close_payload(1000, "bye"), [0x03, 0xE8, b'b', b'y', b'e']);
    }

    #[test]
    fn a_close_is_answered_with_its_code_or_a_protocol_error() {
        assert_eq!(close_reply(&[]), [0x88, 0]);
        assert_eq!(
            close_reply(&[0x03, 0xE8, b'o', b'k']),
            [0x88, 2, 0x03, 0xE8]
        );
        assert_eq!(close_reply(&4001u16.to_be_bytes()), [0x88, 2, 0x0F, 0xA1]);
        let protocol_error = [0x88, 2, 0x03, 0xEA];
        assert_eq!(close_reply(&[0x03]), protocol_error);
        assert_eq!(close_reply(&1005u16.to_be_bytes()), protocol_error);
        assert_eq!(close_reply(&999u16.to_be_bytes()), protocol_error);
        assert_eq!(close_reply(&1015u16.to_be_bytes()), protocol_error);
        assert_eq!(close_reply(&1012u16.to_be_bytes()), [0x88, 2, 0x03, 0xF4]);
        assert_eq!(close_reply(&[0x03, 0xE8, 0xFF]), protocol_error);
    }

    proptest! {
        #[test]
        fn any_client_frame_parses_back(
            fin: bool,
            binary: bool,
            mask: [u8; 4],
            payload in proptest::collection::vec(any::<u8>(), 0..70_000),
        ) {
            let opcode = if binary { Opcode::Binary } else { Opcode::Text };
            let frame = client_frame(fin, opcode, mask, &payload);
            let header = parse_header(&frame, 100_000).unwrap().unwrap();
            prop_assert_eq!((header.fin, header.opcode, header.len), (fin, opcode, payload.len()));
            let mut got = frame[header.header_len..].to_vec();
            prop_assert_eq!(got.len(), header.len);
            unmask(&mut got, header.mask);
            prop_assert_eq!(got, payload);
        }

        #[test]
        fn a_payload_unmasked_in_pieces_is_the_payload(
            mask: [u8; 4],
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            cuts in proptest::collection::vec(any::<usize>(), 0..5),
        ) {
            let frame = client_frame(true, Opcode::Binary, mask, &payload);
            let mut got = frame[frame.len() - payload.len()..].to_vec();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (payload.len() + 1)).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for end in cuts.into_iter().chain([payload.len()]) {
                unmask_at(&mut got[at..end], mask, at);
                at = end;
            }
            prop_assert_eq!(got, payload);
        }

        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse_header(&bytes, 1 << 20);
        }
    }
}

//! UTF-8 checked as a text message's fragments arrive, so that a client sending invalid text
//! in fragments is refused at the first bad byte (RFC 6455, 8.1: fail fast), not at the end of
//! a message that may be long.

use super::WsError;

/// The check of one text message, fed its fragments in order.
///
/// # Invariants
/// The bytes fed so far are valid UTF-8 except for `carried` bytes at their end: the start of
/// a character cut between fragments (1 to 3 bytes, a valid prefix of some character).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Utf8Check {
    carry: [u8; 4],
    carried: u8,
}

impl Utf8Check {
    /// Checks the next fragment: `Err` as soon as the bytes so far can no longer begin valid
    /// UTF-8, whatever may follow. A character cut at the fragment's end is kept for the next.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), WsError> {
        if self.carried > 0 {
            // Complete the cut character with the front of this fragment.
            let have = usize::from(self.carried);
            let take = (4 - have).min(bytes.len());
            let mut joined = self.carry;
            joined[have..have + take].copy_from_slice(&bytes[..take]);
            let consumed = match std::str::from_utf8(&joined[..have + take]) {
                Ok(_) => have + take,
                Err(e) if e.valid_up_to() > 0 => e.valid_up_to(),
                Err(e) if e.error_len().is_some() => return Err(WsError::InvalidUtf8),
                // Still cut: the fragment was too short to complete it.
                Err(_) => {
                    self.carry = joined;
                    // At most 3: four bytes are always a whole character or an error.
                    self.carried = (have + take) as u8;
                    return Ok(());
                }
            };
            self.carried = 0;
            // The cut character was whole after `consumed` bytes, more than `have`.
            bytes = &bytes[consumed - have..];
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(WsError::InvalidUtf8),
            Err(e) => {
                let cut = &bytes[e.valid_up_to()..];
                self.carry[..cut.len()].copy_from_slice(cut);
                // At most 3 bytes, or `error_len` would be set.
                self.carried = cut.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: `Err` if it ended inside a character. The check is then ready for
    /// the next message.
    pub fn finish(&mut self) -> Result<(), WsError> {
        let cut = self.carried > 0;
        *self = Utf8Check::default();
        if cut {
            Err(WsError::InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `bytes` cut at `cuts`: `Err` with the index of the fragment refused, or
    /// `usize::MAX` if the message's end was.
    fn check(bytes: &[u8], cuts: &[usize]) -> Result<(), usize> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut check = Utf8Check::default();
        let mut at = 0;
        for (i, end) in points.into_iter().chain([bytes.len()]).enumerate() {
            if check.feed(&bytes[at..end]).is_err() {
                // Fail fast: refused exactly when the bytes so far cannot begin valid UTF-8.
                let so_far = std::str::from_utf8(&bytes[..end]).unwrap_err();
                assert!(so_far.error_len().is_some(), "refused early at {end}");
                return Err(i);
            }
            if let Err(e) = std::str::from_utf8(&bytes[..end]) {
                assert!(e.error_len().is_none(), "missed an error before {end}");
            }
            at = end;
        }
        check.finish().map_err(|_| usize::MAX)
    }

    #[test]
    fn a_character_cut_anywhere_is_carried() {
        let text = "a€𝄞é".as_bytes();
        for cut in 0..=text.len() {
            for second in cut..=text.len() {
                assert_eq!(check(text, &[cut, second]), Ok(()), "cuts {cut}, {second}");
            }
        }
    }

    #[test]
    fn bad_bytes_are_refused_in_the_fragment_that_brings_them() {
        // A 4-byte character begun, then a byte that cannot continue it.
        assert_eq!(check(&[b'a', 0xF0, 0x9D, b'z'], &[2]), Err(1));
        // An overlong encoding is refused at its second byte.
        assert_eq!(check(&[0xE0, 0x80, 0x80], &[1]), Err(1));
        // A surrogate (U+D800) likewise.
        assert_eq!(check(&[0xED, 0xA0, 0x80], &[1]), Err(1));
        // A message that ends inside a character.
        assert_eq!(check(&[b'a', 0xE2, 0x82], &[1]), Err(usize::MAX));
    }

    #[test]
    fn finish_readies_the_check_for_the_next_message() {
        let mut check = Utf8Check::default();
        check.feed(&[0xE2]).unwrap();
        assert_eq!(check.finish(), Err(WsError::InvalidUtf8));
        check.feed(b"ok").unwrap();
        assert_eq!(check.finish(), Ok(()));
    }

    /// Mostly text, sometimes with a byte changed, so that both outcomes are common.
    fn text_or_nearly() -> impl Strategy<Value = Vec<u8>> {
        (any::<String>(), any::<Option<(usize, u8)>>()).prop_map(|(s, change)| {
            let mut bytes = s.into_bytes();
            if let Some((at, byte)) = change
                && !bytes.is_empty()
            {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes
        })
    }

    proptest! {
        #[test]
        fn any_split_agrees_with_std(
            bytes in prop_oneof![text_or_nearly(), proptest::collection::vec(any::<u8>(), 0..40)],
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let whole = std::str::from_utf8(&bytes).is_ok();
            prop_assert_eq!(check(&bytes, &cuts).is_ok(), whole);
        }
    }
}

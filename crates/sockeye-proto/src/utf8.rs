//! Incremental UTF-8 validation that fails as soon as an invalid prefix arrives.
//!
//! A text message may arrive in many frames, and a frame may end in the middle of a character.
//! [`Utf8Validator`] keeps at most 3 bytes of an incomplete character between calls and
//! validates everything else with `simdutf8` (SIMD, no `unsafe` here). An invalid sequence is
//! reported by the call that brings its first invalid byte, not at the end of the message
//! (Autobahn cases 6.4.x check this "fail fast" behaviour).

/// The input is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Validates a stream of bytes as UTF-8, piece by piece.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rule for a text message sent in fragments (RFC 6455 §5.6), one fragment at a
    /// time: the fragments so far must be valid UTF-8, and the last (`fin`) must not end
    /// inside a character. [`crate::Protocol::send_fragment`] applies it; a front end that
    /// queues fragments before they reach the core checks them with it at once.
    pub fn feed_fragment(&mut self, data: &[u8], fin: bool) -> Result<(), crate::Error> {
        self.feed(data)
            .map_err(|_| crate::Error::Misuse("text fragments are not valid UTF-8"))?;
        if fin && !self.is_complete() {
            return Err(crate::Error::Misuse("text message ends inside a character"));
        }
        Ok(())
    }

    /// Validates the next piece. Fails if the bytes so far cannot be the start of valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            // Complete the character left over from the previous piece.
            let have = self.partial_len as usize;
            let need = width(self.partial[0]).ok_or(Utf8Error)?;
            let take = (need - have).min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            let now = have + take;
            match std::str::from_utf8(&self.partial[..now]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: `data` was too short to finish it.
                    self.partial_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
            data = &data[take..];
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Utf8Error),
                None => {
                    // An incomplete but so far valid character at the end (at most 3 bytes).
                    let tail = &data[e.valid_up_to()..];
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// Checks that the stream does not end in the middle of a character, and resets.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Whether the stream so far ends on a character boundary.
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }
}

/// Validates a whole buffer at once.
pub fn validate(data: &[u8]) -> Result<(), Utf8Error> {
    simdutf8::basic::from_utf8(data)
        .map(|_| ())
        .map_err(|_| Utf8Error)
}

fn width(first: u8) -> Option<usize> {
    match first {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_all(pieces: &[&[u8]]) -> Result<(), (usize, Utf8Error)> {
        let mut v = Utf8Validator::new();
        for (i, p) in pieces.iter().enumerate() {
            v.feed(p).map_err(|e| (i, e))?;
        }
        v.finish().map_err(|e| (pieces.len(), e))
    }

    #[test]
    fn split_characters_are_accepted() {
        let s = "κόσμε€𝄞".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(feed_all(&[&s[..i], &s[i..j], &s[j..]]), Ok(()), "{i} {j}");
            }
        }
    }

    #[test]
    fn fails_on_the_piece_that_brings_the_invalid_byte() {
        // Autobahn 6.4.1: "κόσμε" then an invalid 4-byte start (F4 90: above U+10FFFF).
        let r = feed_all(&["κόσμε".as_bytes(), b"\xf4\x90\x80\x80", b"edited"]);
        assert_eq!(r, Err((1, Utf8Error)));
        // The invalid byte arrives alone: F4 is fine, 90 is not.
        let r = feed_all(&[b"ab\xf4", b"\x90", b"\x80\x80"]);
        assert_eq!(r, Err((1, Utf8Error)));
        // Surrogates are invalid at the second byte.
        let r = feed_all(&[b"\xed", b"\xa0\x80"]);
        assert_eq!(r, Err((1, Utf8Error)));
    }

    #[test]
    fn truncated_character_fails_at_finish() {
        assert_eq!(feed_all(&[b"ab\xe2\x82"]), Err((1, Utf8Error)));
        assert_eq!(feed_all(&[b"\xc0\xaf"]), Err((0, Utf8Error)));
        assert_eq!(feed_all(&[b"\xff"]), Err((0, Utf8Error)));
    }

    proptest! {
        #[test]
        fn agrees_with_std_for_any_split(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..4),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts { pieces.push(&data[last..c]); last = c; }
            pieces.push(&data[last..]);
            let ours = feed_all(&pieces).is_ok();
            prop_assert_eq!(ours, std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn valid_strings_pass_in_any_split(s in "\\PC{0,40}", cut in 0usize..200) {
            let b = s.as_bytes();
            let cut = cut.min(b.len());
            prop_assert_eq!(feed_all(&[&b[..cut], &b[cut..]]), Ok(()));
        }
    }
}

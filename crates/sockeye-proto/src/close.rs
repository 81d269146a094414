//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use bytes::Bytes;

use crate::error::{Error, ProtocolError};

/// A close status code (RFC 6455 §7.4).
///
/// An open code space, so a newtype with constants rather than an enum: any `u16` can be
/// represented, and [`CloseCode::is_valid_on_wire`] says whether it may appear in a close frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure; the purpose of the connection was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutting down, browser leaving the page).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: the endpoint received a type of data it cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection was closed abnormally, without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a message was not consistent with its type (invalid UTF-8 in a text message).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: the message violates the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition (an internal error).
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: a gateway received an invalid response from upstream.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: the TLS handshake failed (never sent on the wire).
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether this code may be sent or received in a close frame.
    ///
    /// RFC 6455 §7.4.1 and §7.4.2: 1000-1003 and 1007-1011 are defined; 1012-1014 are registered
    /// with IANA since; 3000-4999 are for libraries, frameworks and applications. 1004, 1005,
    /// 1006 and 1015 are reserved and "MUST NOT be set as a status code in a Close control
    /// frame"; everything below 1000 and from 5000 on is invalid.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Whether a close with this code counts as a normal end of the connection (1000 or 1001).
    pub fn is_ok(self) -> bool {
        self == Self::NORMAL || self == Self::GOING_AWAY
    }

    /// A short English name for the code, for logs and messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            1000 => "OK",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1005 => "no status received",
            1006 => "abnormal closure",
            1007 => "invalid data",
            1008 => "policy violation",
            1009 => "message too big",
            1010 => "mandatory extension",
            1011 => "internal error",
            1012 => "service restart",
            1013 => "try again later",
            1014 => "bad gateway",
            1015 => "TLS handshake failure",
            3000..=3999 => "registered",
            4000..=4999 => "private use",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

/// The payload of a close frame: a code and a UTF-8 reason (RFC 6455 §5.5.1).
///
/// A close frame with an empty payload is represented as `None` where a `CloseFrame` is
/// optional; its code is then reported as [`CloseCode::NO_STATUS`] (1005).
#[derive(Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, at most 123 bytes of UTF-8 (the control frame limit of 125 minus the code).
    pub reason: String,
}

/// The longest reason that fits a close frame: 125 bytes of control payload minus 2 for the code.
pub const MAX_CLOSE_REASON: usize = 123;

impl CloseFrame {
    /// A close frame with this code and reason.
    pub fn new(code: impl Into<CloseCode>, reason: impl Into<String>) -> Self {
        CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// Parses the payload of a received close frame (RFC 6455 §5.5.1, §7.1.5, §7.4).
    ///
    /// Returns `Ok(None)` for an empty payload. A payload of one byte, an invalid code or a
    /// reason that is not UTF-8 is an error.
    pub fn parse(payload: &[u8]) -> Result<Option<CloseFrame>, Error> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(Error::Protocol(ProtocolError::CloseFrameTooShort)),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(Error::Protocol(ProtocolError::InvalidCloseCode(code.0)));
                }
                let reason = std::str::from_utf8(&payload[2..]).map_err(|_| Error::InvalidUtf8)?;
                Ok(Some(CloseFrame {
                    code,
                    reason: reason.to_owned(),
                }))
            }
        }
    }

    /// The payload of a close frame carrying this code and reason.
    ///
    /// The reason is cut at a character boundary to fit the 123 bytes a control frame leaves.
    pub fn to_payload(&self) -> Bytes {
        let reason = truncate_utf8(&self.reason, MAX_CLOSE_REASON);
        let mut out = Vec::with_capacity(2 + reason.len());
        out.extend_from_slice(&self.code.0.to_be_bytes());
        out.extend_from_slice(reason.as_bytes());
        Bytes::from(out)
    }
}

impl fmt::Debug for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {:?}", self.code, self.reason)
        }
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes_per_rfc_7_4() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999,
        ] {
            assert!(CloseCode(code).is_valid_on_wire(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_valid_on_wire(), "{code}");
        }
    }

    #[test]
    fn parse_close_payloads() {
        assert_eq!(CloseFrame::parse(b"").unwrap(), None);
        assert_eq!(
            CloseFrame::parse(b"\x03"),
            Err(Error::Protocol(ProtocolError::CloseFrameTooShort))
        );
        assert_eq!(
            CloseFrame::parse(b"\x03\xe8bye").unwrap(),
            Some(CloseFrame::new(1000, "bye"))
        );
        assert_eq!(
            CloseFrame::parse(b"\x03\xed"),
            Err(Error::Protocol(ProtocolError::InvalidCloseCode(1005)))
        );
        assert_eq!(CloseFrame::parse(b"\x03\xe8\xff"), Err(Error::InvalidUtf8));
    }

    #[test]
    fn reason_truncated_on_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let payload = CloseFrame::new(1000, long).to_payload();
        assert!(payload.len() <= 125);
        let parsed = CloseFrame::parse(&payload).unwrap().unwrap();
        assert_eq!(parsed.reason.len(), 122);
        assert!(parsed.reason.chars().all(|c| c == 'é'));
    }
}

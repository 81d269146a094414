//! permessage-deflate (RFC 7692). STUB: to be written.

use crate::error::{Error, HandshakeError};

/// What permessage-deflate to offer (client) or accept (server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Ask the server not to keep its compression context between messages.
    pub server_no_context_takeover: bool,
    /// Promise not to keep the client's compression context (client) / ask the client not to (server).
    pub client_no_context_takeover: bool,
    /// Limit on the server's LZ77 window, 9..=15, or `None` for no limit.
    pub server_max_window_bits: Option<u8>,
    /// Limit on the client's LZ77 window, 9..=15, or `None` for no limit.
    pub client_max_window_bits: Option<u8>,
    /// zlib compression level 0..=9.
    pub compression_level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
            compression_level: 6,
        }
    }
}

/// The negotiated parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// server_no_context_takeover
    pub server_no_context_takeover: bool,
    /// client_no_context_takeover
    pub client_no_context_takeover: bool,
    /// server_max_window_bits
    pub server_max_window_bits: u8,
    /// client_max_window_bits
    pub client_max_window_bits: u8,
}

impl DeflateConfig {
    /// The client's offer.
    pub fn offer(&self) -> crate::extensions::Extension {
        unimplemented!()
    }
    /// Server side: accept one offer.
    pub fn accept_offer(
        &self,
        _params: &[(String, Option<String>)],
    ) -> Result<Option<(DeflateParams, crate::extensions::Extension)>, HandshakeError> {
        unimplemented!()
    }
    /// Client side: check the response.
    pub fn accept_response(
        &self,
        _params: &[(String, Option<String>)],
    ) -> Result<DeflateParams, HandshakeError> {
        unimplemented!()
    }
}

/// Per-connection compression state.
#[derive(Debug)]
pub struct Deflate {}

impl Deflate {
    /// New state.
    pub fn new(_params: DeflateParams, _side: crate::Side, _level: u32) -> Self {
        Deflate {}
    }
    /// Compress.
    pub fn compress(&mut self, _payload: &[u8], _fin: bool, _out: &mut Vec<u8>) {
        unimplemented!()
    }
    /// Decompress.
    pub fn decompress(
        &mut self,
        _input: &[u8],
        _fin: bool,
        _out: &mut Vec<u8>,
        _max_size: usize,
    ) -> Result<(), Error> {
        unimplemented!()
    }
}

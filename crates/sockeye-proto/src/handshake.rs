//! The opening handshake (RFC 6455 §4). STUB: to be written.

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};

use crate::config::Config;
use crate::error::HandshakeError;
use crate::extensions::deflate::DeflateParams;
use crate::extensions::Extension;

/// The GUID of RFC 6455 §1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a server decided while validating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccept {
    /// The client's Sec-WebSocket-Key.
    pub key: String,
    /// The subprotocol chosen.
    pub subprotocol: Option<String>,
    /// permessage-deflate accepted, and the extension to put in the response.
    pub deflate: Option<(DeflateParams, Extension)>,
}

/// What a client learned from a 101 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccept {
    /// The subprotocol the server chose.
    pub subprotocol: Option<String>,
    /// permessage-deflate as negotiated.
    pub deflate: Option<DeflateParams>,
}

/// Sec-WebSocket-Accept for a key.
pub fn accept_key(_key: &[u8]) -> String {
    unimplemented!()
}

/// Parses a request head.
pub fn parse_request(
    _buf: &[u8],
    _config: &Config,
) -> Result<Option<(Request<()>, usize)>, HandshakeError> {
    unimplemented!()
}

/// Parses a response head.
pub fn parse_response(
    _buf: &[u8],
    _config: &Config,
) -> Result<Option<(Response<()>, usize)>, HandshakeError> {
    unimplemented!()
}

/// Serialises a request head.
pub fn write_request(_req: &Request<()>, _out: &mut Vec<u8>) {
    unimplemented!()
}

/// Serialises a response with its body.
pub fn write_response(_resp: &Response<Bytes>, _out: &mut Vec<u8>) {
    unimplemented!()
}

/// Builds a client request.
pub fn build_request(
    _uri: &Uri,
    _key: &str,
    _config: &Config,
) -> Result<Request<()>, HandshakeError> {
    unimplemented!()
}

/// Validates a request, negotiates.
pub fn check_request(
    _req: &Request<()>,
    _config: &Config,
    _subprotocol: Option<Option<&str>>,
) -> Result<ServerAccept, HandshakeError> {
    unimplemented!()
}

/// Builds the 101 response.
pub fn build_response(_accept: &ServerAccept, _config: &Config) -> Response<Bytes> {
    unimplemented!()
}

/// Validates a 101 response.
pub fn check_response(
    _resp: &Response<()>,
    _key: &str,
    _offered_subprotocols: &[String],
    _config: &Config,
) -> Result<ClientAccept, HandshakeError> {
    unimplemented!()
}

/// An HTTP error response.
pub fn reject(_status: StatusCode, _body: &str, _config: &Config) -> Response<Bytes> {
    unimplemented!()
}

/// Parses Sec-WebSocket-Extensions.
pub fn parse_extensions(_value: &str) -> Result<Vec<Extension>, HandshakeError> {
    unimplemented!()
}

/// Formats Sec-WebSocket-Extensions.
pub fn format_extensions(_exts: &[Extension]) -> String {
    unimplemented!()
}

/// Subprotocols offered in a request.
pub fn offered_subprotocols(_req: &Request<()>) -> Vec<String> {
    unimplemented!()
}

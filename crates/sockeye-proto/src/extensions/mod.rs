//! WebSocket extensions (RFC 6455 §9). sockeye implements one: permessage-deflate (RFC 7692).

pub mod deflate;

/// One extension from a `Sec-WebSocket-Extensions` header: its name and parameters.
///
/// `permessage-deflate; client_max_window_bits; server_max_window_bits=10` is
/// `Extension { name: "permessage-deflate", params: [("client_max_window_bits", None),
/// ("server_max_window_bits", Some("10"))] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// The parameters, in order, with their values (quotes removed) if any.
    pub params: Vec<(String, Option<String>)>,
}

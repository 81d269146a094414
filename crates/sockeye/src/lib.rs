//! sockeye: WebSockets for Rust. The tokio and blocking front ends come on top of
//! [`sockeye_proto`], the sans-I/O core, which is re-exported as [`proto`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use sockeye_proto as proto;

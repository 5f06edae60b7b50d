//! Glue shared by Lumen's four Spin components, so nothing is written four times: Spin KV behind
//! the shared [`lumen_shared::store::Kv`] trait, JSON replies with `content-length`, bounded body
//! reads, internal JSON calls, and the SSE relays.
//!
//! [`util`] and [`relay`] import nothing from Spin and are unit-tested natively; [`kv`] and
//! [`http`] are the thin Spin-facing layer.

pub mod http;
pub mod kv;
pub mod mount;
pub mod pipe;
pub mod relay;
pub mod util;

pub use http::Reply;
pub use kv::SpinKv;

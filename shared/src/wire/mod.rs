//! What crosses the network: client and upstream wire formats, pure conversions between them.

pub mod dialect;
pub mod embeddings;
pub mod openai;
pub mod request_id;
pub mod sse;

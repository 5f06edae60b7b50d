//! What crosses the network: client and upstream wire formats, pure conversions between them.

pub mod dialect;
pub mod embeddings;
pub mod openai;
pub mod sse;

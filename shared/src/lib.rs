//! Lumen's shared crate: wire types, internal contracts, KV key families, the error model and
//! the pure cores every component calls.
//!
//! Nothing here imports `spin_sdk`: cores take their inputs, `now`, and a [`kv::Kv`] so they run
//! natively in unit tests and unchanged inside the wasm components.
#![deny(missing_docs)]

pub mod audit;
pub mod budget;
pub mod byok;
pub mod catalog;
pub mod coldstart;
pub mod contracts;
pub mod deadline;
pub mod dialect;
pub mod embeddings;
pub mod error;
pub mod fallback;
pub mod health;
pub mod keys;
pub mod kv;
pub mod openai;
pub mod plans;
pub mod pricing;
pub mod ratelimit;
pub mod route;
pub mod schemas;
pub mod scorer;
pub mod sse;
pub mod stitch;
pub mod time;
pub mod usage;

pub use error::ApiError;

//! Lumen's shared crate, laid out as a request lives:
//!
//! - [`wire`]: what crosses the network: OpenAI and Anthropic wire types, SSE framing, one
//!   adapter per upstream dialect. Pure.
//! - [`domain`]: the decisions: the catalog, routing and scoring, fallbacks, deadlines, prices
//!   and costs, plans, the stitched stream. Pure: nothing here knows the key-value store.
//! - [`store`]: everything remembered between requests: the [`store::Kv`] trait, the typed key
//!   families (one place for every key's spelling) and the operations built on atomic
//!   `increment` and plain `get`/`set` — keys, limits, the budget ledger, the log (usage and
//!   audit chain), provider health. No compare-and-swap anywhere.
//! - [`contracts`]: what the four components hand each other (`components/wit/lumen.wit`).
//! - [`error`]: the error model, rendered once as OpenAI JSON.
//!
//! Nothing here imports `spin_sdk`: cores take their inputs, `now`, and a [`store::Kv`] so they
//! run natively in unit tests and unchanged inside the wasm components.
#![deny(missing_docs)]

pub mod contracts;
pub mod domain;
pub mod error;
pub mod schemas;
pub mod store;
pub mod time;
pub mod wire;

pub use error::ApiError;

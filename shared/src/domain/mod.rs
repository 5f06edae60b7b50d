//! The decisions a request goes through, as pure functions of their inputs: which model and
//! provider (catalog, route, scorer, fallback), under which deadlines, at what price, and how a
//! stream that failed over is stitched. Nothing here reads or writes the key-value store.

pub mod cache;
pub mod catalog;
pub mod compare;
pub mod deadline;
pub mod fallback;
pub mod fusion;
pub mod health;
pub mod plans;
pub mod pricing;
pub mod retry;
pub mod route;
pub mod saved;
pub mod scorer;
pub mod shadow;
pub mod stitch;
pub mod trace;

//! Lumen's test support crate: the mock OpenAI upstream ([`mock`]) used by the end-to-end
//! tests, the Python SDK tests and the benchmark driver (`lumen-bench`), plus the driver's pure
//! helpers ([`bench`]), its load phases ([`load`]) and its side-by-side comparison of gateways
//! ([`compare`]).

pub mod bench;
pub mod compare;
pub mod failover_bench;
pub mod load;
pub mod mock;
pub mod mock_dialects;
pub mod train;

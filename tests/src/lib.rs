//! Lumen's test support crate: the mock OpenAI upstream ([`mock`]) used by the end-to-end
//! tests, the Python SDK tests and the benchmark driver (`lumen-bench`), plus the driver's pure
//! helpers ([`bench`]).

pub mod bench;
pub mod failover_bench;
pub mod mock;
pub mod mock_dialects;
pub mod train;

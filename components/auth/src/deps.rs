//! The three components auth is composed with (`components/wit/lumen.wit`): the router's
//! planner, the provider's caller and the meter's ledger, called in process through their WIT
//! contracts with the shared crate's contract types as JSON.

use lumen_shared::contracts::{CallRequest, Plan, PlanRequest, SettleRequest, UsageSummary};
use lumen_shared::ApiError;
use lumen_spin::pipe::Polled;
use lumen_spin::util::from_wire;
use serde::Serialize;
use serde_json::Value;

/// The import glue (`wit_bindgen::generate!`).
mod bindings {
    wit_bindgen::generate!({
        world: "auth",
        path: "../wit",
    });
}

use bindings::lumen::gateway::{caller, ledger, planner};

fn json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| {
        ApiError::internal(format!(
            "could not serialise a request to the {what} component: {e}"
        ))
    })
}

/// The router's plan for one request.
pub fn plan(ask: &PlanRequest) -> Result<Plan, ApiError> {
    from_wire("router", planner::plan(&json("router", ask)?))
}

/// The router's plans for a batch (`/v1/route`).
pub fn route<T: Serialize + ?Sized>(batch: &T) -> Result<Value, ApiError> {
    from_wire("router", planner::route(&json("router", batch)?))
}

/// The catalog's `/v1/models` list.
pub fn models() -> Result<Value, ApiError> {
    from_wire("router", planner::models())
}

/// Settles one request with the meter.
pub fn settle(req: &SettleRequest) -> Result<Value, ApiError> {
    from_wire("meter", ledger::settle(&json("meter", req)?))
}

/// Seals the log's complete blocks.
pub fn seal() -> Result<Value, ApiError> {
    from_wire("meter", ledger::seal())
}

/// Usage totals for a query string (`key_ids=…&from=…`).
pub fn usage(query: &str) -> Result<UsageSummary, ApiError> {
    from_wire("meter", ledger::usage(query))
}

/// Usage records for a query string (`key_id=…&limit=…`).
pub fn records(query: &str) -> Result<Value, ApiError> {
    from_wire("meter", ledger::records(query))
}

/// The provider's answer: its head at hand, its body pulled piece by piece.
pub struct ProviderAnswer {
    answer: caller::Answer,
    status: u16,
    headers: Vec<(String, String)>,
}

/// Starts a provider call; returns once its head is known.
pub fn call(req: &CallRequest) -> Result<ProviderAnswer, ApiError> {
    let answer = caller::call(&json("provider", req)?);
    Ok(ProviderAnswer {
        status: answer.status(),
        headers: answer.headers(),
        answer,
    })
}

impl ProviderAnswer {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// A header's value (names are lowercase).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// The next body piece; `None` at the end.
    pub fn next_piece(&self) -> Option<Vec<u8>> {
        self.answer.next()
    }

    /// The next body piece if the provider has it within `wait_us` microseconds.
    pub fn poll_piece(&self, wait_us: u32) -> Polled {
        match self.answer.poll(wait_us) {
            caller::Polled::Piece(p) => Polled::Piece(p),
            caller::Polled::Pending => Polled::Pending,
            caller::Polled::End => Polled::End,
        }
    }

    /// The whole body, at most `limit` bytes.
    pub fn read_all(&self, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(piece) = self.next_piece() {
            if out.len() + piece.len() > limit {
                return Err(format!("the response is larger than {limit} bytes"));
            }
            out.extend(piece);
        }
        Ok(out)
    }
}

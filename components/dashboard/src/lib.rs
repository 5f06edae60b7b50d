//! The dashboard component: serves the admin dashboard's static files (HTML, CSS, JS and the
//! vendored chart library, mounted from `components/dashboard/static` at `/dashboard`) under the
//! public route `/app/...`; the page itself talks to the admin API with the admin token. No KV,
//! no variables, no outbound hosts: only the mount is read.

pub mod files;

use lumen_spin::http::{request_header, respond};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;

/// The path after the matched route (`/app`), as Spin's `spin-path-info` gives it; falls back
/// to the request path less `spin-component-route` for a host that omits it.
fn path_info(req: &IncomingRequest) -> String {
    if let Some(info) = request_header(req, "spin-path-info") {
        return info;
    }
    let full = req.path_with_query().unwrap_or_default();
    let path = full.split('?').next().unwrap_or("");
    let base = request_header(req, "spin-component-route").unwrap_or_else(|| "/app".into());
    path.strip_prefix(base.as_str()).unwrap_or(path).to_string()
}

/// The export: the code `#[http_component]` generates is the only unsafe code in the component.
#[allow(unsafe_code)]
mod entry {
    use super::*;

    #[http_component]
    async fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let method = req.method().to_string();
        let info = path_info(&req);
        let inm = request_header(&req, "if-none-match");
        let reply = files::serve(&method, &info, inm.as_deref(), files::read_regular_file);
        respond(out, reply).await;
    }
}

//! What the dashboard serves, with no Spin imports: a request path under `/app` resolved to a file
//! of the mount (or a redirect, or an OpenAI-shaped 404), and the reply headers for a file —
//! content type, cache policy, ETag, and the security headers of a page that holds an admin token.

use lumen_shared::ApiError;
use lumen_spin::Reply;
use std::io;

/// Where `spin.toml` mounts `components/dashboard/static` inside the component.
pub const MOUNT: &str = "/dashboard";

/// The dashboard's address; `/app` and `/app/` redirect here.
pub const HOME: &str = "/app/dashboard";

/// The file served for [`HOME`].
const INDEX: &str = "index.html";

/// Longest path (after `/app/dashboard/`) worth looking at; ours are far shorter.
const MAX_PATH: usize = 256;

/// Content security policy: everything from this origin, nothing inline, no framing. Chart
/// drawing only sets styles through the CSSOM, which `style-src 'self'` allows.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A resolved request.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// A file, as a path relative to the mount (checked: no `.`/`..`, no hidden names).
    File(String),
    /// Redirect to this absolute path.
    Redirect(&'static str),
}

fn not_found(shown: &str) -> ApiError {
    ApiError::not_found(
        format!("no dashboard file at /app{shown}; the dashboard is at {HOME}"),
        None,
        "unknown_route",
    )
}

/// One path segment we are willing to look up: ASCII letters, digits, `-`, `_` and `.`, not
/// starting with a dot. This refuses `..`, `.`, hidden files, percent-escapes (so `%2e%2e` is
/// never decoded into `..`), backslashes and NULs before the file system is ever asked.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Resolves `path_info`, the path after `/app` (Spin's `spin-path-info`, without the query).
pub fn resolve(path_info: &str) -> Result<Target, ApiError> {
    let path = path_info.split(['?', '#']).next().unwrap_or("");
    match path {
        "" | "/" => return Ok(Target::Redirect(HOME)),
        "/dashboard" | "/dashboard/" => return Ok(Target::File(INDEX.to_string())),
        _ => {}
    }
    let rest = path
        .strip_prefix("/dashboard/")
        .filter(|r| r.len() <= MAX_PATH)
        .ok_or_else(|| not_found(path))?;
    if !rest.split('/').all(safe_segment) {
        return Err(not_found(path));
    }
    Ok(Target::File(rest.to_string()))
}

/// The content type for a file name, from its extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ if !name.contains('.') => "text/plain; charset=utf-8", // LICENSE and friends
        _ => "application/octet-stream",
    }
}

/// The cache policy: the page is revalidated on every load (so a new release is picked up at
/// once); scripts, styles and the vendored library may be reused for five minutes.
pub fn cache_control(name: &str) -> &'static str {
    if name.ends_with(".html") {
        "no-cache"
    } else {
        "public, max-age=300"
    }
}

/// A strong ETag from the bytes (64-bit FNV-1a and the length): cheap, stable across instances.
pub fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}-{:x}\"", body.len())
}

/// Whether an `If-None-Match` header matches `tag` (a list, `*`, or weak forms).
fn matches_etag(if_none_match: &str, tag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == tag)
}

/// The whole answer to `method path_info`, reading files through `read` (a path under the
/// mount). Only GET is served; a missing file or a directory is a 404 like any unknown path.
pub fn serve(
    method: &str,
    path_info: &str,
    if_none_match: Option<&str>,
    read: impl FnOnce(&str) -> io::Result<Vec<u8>>,
) -> Reply {
    let shown = format!("/app{path_info}");
    if method != "GET" {
        return Reply::error(&ApiError::method_not_allowed(method, &shown, "GET"))
            .with_header("allow", "GET");
    }
    let name = match resolve(path_info) {
        Ok(Target::File(name)) => name,
        Ok(Target::Redirect(to)) => {
            return Reply::new(302, "text/plain; charset=utf-8", Vec::new())
                .with_header("location", to)
                .with_header("cache-control", "no-cache")
        }
        Err(e) => return Reply::error(&e),
    };
    let body = match read(&format!("{MOUNT}/{name}")) {
        Ok(body) => body,
        Err(e) if is_missing(&e) => return Reply::error(&not_found(path_info)),
        Err(e) => {
            // Logged here, once; the client learns only which file failed.
            eprintln!("lumen-dashboard: reading {MOUNT}/{name}: {e}");
            return Reply::error(&ApiError::internal(format!(
                "could not read the dashboard file {name}"
            )));
        }
    };
    let tag = etag(&body);
    let mut reply = if if_none_match.is_some_and(|inm| matches_etag(inm, &tag)) {
        Reply::new(304, content_type(&name), Vec::new())
    } else {
        Reply::new(200, content_type(&name), body)
    };
    for (header, value) in [
        ("cache-control", cache_control(&name)),
        ("etag", tag.as_str()),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", CSP),
    ] {
        reply.set_header(header, value);
    }
    reply
}

/// Reads a regular file whole. Anything else is `NotFound`: hosts differ on what reading a
/// directory gives (lumen-host: `IsADirectory`; Spin: `EBADF`), so it is checked first.
pub fn read_regular_file(path: &str) -> io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{path} is not a regular file"),
        ));
    }
    std::fs::read(path)
}

/// A path that names nothing servable: absent, a directory, or under a file.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidFilename
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn files(path: &str) -> io::Result<Vec<u8>> {
        match path {
            "/dashboard/index.html" => Ok(b"<!doctype html>".to_vec()),
            "/dashboard/app.js" => Ok(b"console.log(1)".to_vec()),
            "/dashboard/vendor/chart.js/LICENSE.md" => Ok(b"MIT".to_vec()),
            "/dashboard/vendor" => Err(io::Error::new(io::ErrorKind::IsADirectory, "dir")),
            "/dashboard/app.js/x" => Err(io::Error::new(io::ErrorKind::NotADirectory, "file")),
            "/dashboard/broken.css" => Err(io::Error::other("disk on fire")),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "missing")),
        }
    }

    fn error_of(r: &Reply) -> Value {
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["error"].clone()
    }

    #[test]
    fn resolves_the_page_its_assets_and_redirects_the_root() {
        assert_eq!(resolve(""), Ok(Target::Redirect(HOME)));
        assert_eq!(resolve("/"), Ok(Target::Redirect(HOME)));
        assert_eq!(resolve("/dashboard"), Ok(Target::File("index.html".into())));
        assert_eq!(
            resolve("/dashboard/"),
            Ok(Target::File("index.html".into()))
        );
        assert_eq!(
            resolve("/dashboard/vendor/chart.js/chart.umd.js?v=1"),
            Ok(Target::File("vendor/chart.js/chart.umd.js".into()))
        );
    }

    #[test]
    fn never_resolves_outside_the_mount() {
        for path in [
            "/dashboard/../spin.toml",
            "/dashboard/../../etc/passwd",
            "/dashboard/./index.html",
            "/dashboard/vendor/../../x",
            "/dashboard/%2e%2e/spin.toml",
            "/dashboard/%2E%2E%2Fspin.toml",
            "/dashboard/..%5c..%5cspin.toml",
            "/dashboard/..\\spin.toml",
            "/dashboard/.hidden",
            "/dashboard//etc/passwd",
            "/dashboard/a\0b",
            "/dashboard/index.html/",
            "/../dashboard/index.html",
            "/dashboardx",
            "/other/index.html",
        ] {
            let e = resolve(path).expect_err(path);
            assert_eq!(e.status, 404, "{path}");
        }
        let long = format!("/dashboard/{}", "a".repeat(MAX_PATH + 1));
        assert_eq!(resolve(&long).unwrap_err().status, 404);
    }

    #[test]
    fn serves_files_with_type_length_cache_and_etag() {
        let r = serve("GET", "/dashboard", None, files);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"<!doctype html>");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert!(r
            .header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'"));
        assert!(r
            .wire_headers()
            .contains(&("content-length".to_string(), "15".to_string())));

        let js = serve("GET", "/dashboard/app.js", None, files);
        assert_eq!(
            js.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(js.header("cache-control"), Some("public, max-age=300"));
        assert_eq!(js.header("x-content-type-options"), Some("nosniff"));
        let license = serve("GET", "/dashboard/vendor/chart.js/LICENSE.md", None, files);
        assert_eq!(
            license.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }

    #[test]
    fn answers_304_when_the_etag_matches() {
        let first = serve("GET", "/dashboard/app.js", None, files);
        let tag = first.header("etag").unwrap().to_string();
        assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        let again = serve(
            "GET",
            "/dashboard/app.js",
            Some(&format!("W/\"x\", {tag}")),
            files,
        );
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        let other = serve("GET", "/dashboard/app.js", Some("\"nope\""), files);
        assert_eq!(other.status, 200);
        assert_ne!(etag(b"a"), etag(b"b"));
    }

    #[test]
    fn unknown_files_and_traversal_get_openai_shaped_404s() {
        for path in [
            "/dashboard/nope.js",
            "/dashboard/vendor",
            "/dashboard/../spin.toml",
            "/x",
        ] {
            let r = serve("GET", path, None, files);
            assert_eq!(r.status, 404, "{path}");
            let e = error_of(&r);
            assert_eq!(e["type"], "invalid_request_error", "{path}");
            assert_eq!(e["code"], "unknown_route", "{path}");
            assert!(e["message"].as_str().unwrap().contains(HOME), "{e}");
        }
    }

    #[test]
    fn reads_only_regular_files() {
        let dir = std::env::temp_dir().join(format!("lumen-dashboard-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"hello").unwrap();
        let at = |p: &str| dir.join(p).to_string_lossy().into_owned();
        assert_eq!(read_regular_file(&at("a.txt")).unwrap(), b"hello");
        for p in ["sub", "missing.txt", "a.txt/x"] {
            let e = read_regular_file(&at(p)).unwrap_err();
            assert!(is_missing(&e), "{p}: {e:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_methods_and_read_errors() {
        let r = serve("POST", "/dashboard", None, files);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET"));
        assert_eq!(error_of(&r)["code"], "method_not_allowed");

        let r = serve("GET", "/dashboard/broken.css", None, files);
        assert_eq!(r.status, 500);
        assert!(!String::from_utf8_lossy(&r.body).contains("disk on fire"));

        let r = serve("GET", "/", None, files);
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some(HOME));
    }
}

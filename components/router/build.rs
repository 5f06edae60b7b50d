//! Bakes the checked catalog into the router: `config/catalog.toml` is parsed and validated here,
//! at build time (an invalid catalog fails the build, naming the field), and embedded as its
//! source text plus the checked catalog as JSON. At run time the router reads the mounted
//! `/config/catalog.toml` and, when it is byte for byte the baked one, decodes the JSON (~15 µs)
//! instead of parsing TOML and compiling alias regexes (~0.5 ms natively, more in wasm) on every
//! request. An edited mount that was not rebuilt is parsed at run time, as before. The file's
//! size and modification time are baked too: a mount that still has both is the baked file, and
//! the router then only asks for its metadata instead of reading and comparing it. The source's
//! sha256 is baked as well: it is what a router records in the store for a mounted copy it
//! found to hold the built file (see the router's `catalog_for_plan`).

use lumen_shared::domain::catalog::file_stamp;
use std::path::PathBuf;

/// The router's linear memory at start: 9 pages (576 KiB). wasm-ld sizes it to the stack and
/// data (7 pages), and reading and decoding the catalog then grew it by a page on every
/// request: the grow made the page writable (`mprotect`), and the pooling allocator took it
/// away again when the slot was reused (`mprotect` `PROT_NONE`, which flushes the other cores'
/// TLBs: ~2 % of lumen-host's CPU under load). Two pages of headroom keep a chat's planning
/// within it (strace: `mprotect` calls per 20 chats 43 → 8).
const INITIAL_MEMORY: u32 = 9 * 65536;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--initial-memory={INITIAL_MEMORY}");
    }
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../config/catalog.toml");
    println!("cargo:rerun-if-changed={}", src.display());
    let before = file_stamp(&src);
    let text = std::fs::read_to_string(&src)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
    // The file's size and modification time, when it did not change while it was read.
    let stamp = before.filter(|b| file_stamp(&src).as_ref() == Some(b));
    let catalog = lumen_shared::domain::catalog::Catalog::from_toml(&text, "config/catalog.toml")
        .unwrap_or_else(|e| panic!("config/catalog.toml is invalid: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out.join("catalog.toml"), &text).unwrap();
    std::fs::write(
        out.join("catalog.sha256"),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
    )
    .unwrap();
    std::fs::write(out.join("catalog.stamp"), format!("{stamp:?}")).unwrap();
    std::fs::write(
        out.join("catalog.json"),
        serde_json::to_vec(&catalog).unwrap(),
    )
    .unwrap();
}

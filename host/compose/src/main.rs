//! `lumen-compose`: plugs the router, provider and meter components into the imports auth
//! declares (`components/wit/lumen.wit`) and writes the one component `spin.toml` runs, so a
//! request is one instance graph with in-process calls between the four.
//!
//! ```text
//! lumen-compose OUT AUTH PLUG...
//! ```
//! Every import of `AUTH` that a plug exports is satisfied by that plug; every other import
//! (WASI, Spin) stays an import of the result, shared by all four. It fails when a plug fills
//! none of auth's imports or when one of auth's `lumen:` imports is left unfilled. A component
//! that exports `wizer-initialize` (the router) is pre-initialized first ([`preinit`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use wac_graph::types::Package;
use wac_graph::{plug, CompositionGraph, EncodeOptions};

mod preinit;

/// Reads a component into the graph under a package name derived from its file name,
/// pre-initialized when it exports `wizer-initialize`.
fn register(graph: &mut CompositionGraph, path: &Path) -> Result<wac_graph::PackageId> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| format!("lumen:{}", s.replace('_', "-")))
        .context("component paths must have a file name")?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let read = |bytes: Vec<u8>, graph: &mut CompositionGraph| {
        Package::from_bytes(&name, None, bytes, graph.types_mut())
            .with_context(|| format!("{} is not a component", path.display()))
    };
    let mut package = read(bytes, graph)?;
    if graph.types()[package.ty()]
        .exports
        .contains_key(preinit::INIT)
    {
        let initialized = preinit::preinit(package.bytes())
            .with_context(|| format!("cannot pre-initialize {}", path.display()))?;
        eprintln!(
            "lumen-compose: {} pre-initialized ({} KiB → {} KiB)",
            path.display(),
            package.bytes().len() / 1024,
            initialized.len() / 1024
        );
        package = read(initialized, graph)?;
    }
    graph
        .register_package(package)
        .with_context(|| format!("cannot register {}", path.display()))
}

/// Composes `socket` with `plugs` into the bytes of one component.
pub fn compose(socket: &Path, plugs: &[PathBuf]) -> Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let socket_id = register(&mut graph, socket)?;
    let mut plug_ids = Vec::new();
    for p in plugs {
        plug_ids.push(register(&mut graph, p)?);
    }
    plug(&mut graph, plug_ids, socket_id).context("plugging the components together")?;
    let left: Vec<String> = graph
        .imports()
        .map(|(name, _, _)| name.to_string())
        .filter(|name| name.starts_with("lumen:"))
        .collect();
    if !left.is_empty() {
        bail!(
            "{} still imports {} after composition; build the component that exports it and pass it as a plug",
            socket.display(),
            left.join(", ")
        );
    }
    graph
        .encode(EncodeOptions::default())
        .context("encoding the composed component")
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out, socket, plugs @ ..] = args.as_slice() else {
        bail!("usage: lumen-compose OUT AUTH PLUG...");
    };
    if plugs.is_empty() {
        bail!("usage: lumen-compose OUT AUTH PLUG... (no plug given)");
    }
    let bytes = compose(socket, plugs)?;
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "lumen-compose: {} ({} KiB) = {} + {}",
        out.display(),
        bytes.len() / 1024,
        socket.display(),
        plugs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    Ok(())
}

//! The components import only what Spin provides: no host-only interface may ever appear.

mod common;

/// Interfaces real Spin (3.x/4.x) provides to spin-sdk 5 components, as prefixes of import names.
const SPIN_PROVIDES: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:http/types@",
    "wasi:http/outgoing-handler@",
    "fermyon:spin/key-value@2.0.0",
    "fermyon:spin/variables@2.0.0",
    "fermyon:spin/llm@2.0.0",
    "wasi:keyvalue/store@0.2.0-draft2",
    "wasi:keyvalue/atomics@0.2.0-draft2",
];

#[test]
fn components_import_only_what_spin_provides() {
    let root = common::repo();
    let engine = lumen_host::engine::shared_engine().unwrap();
    for c in ["auth", "router", "provider", "meter", "dashboard"] {
        let wasm = root.join(format!("target/wasm32-wasip2/release/lumen_{c}.wasm"));
        assert!(
            wasm.is_file(),
            "{} missing: run scripts/build.sh",
            wasm.display()
        );
        let component =
            lumen_host::engine::load_component(&engine, &wasm, &root.join("target/lumen-cache"))
                .unwrap();
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&engine)
            .map(|(name, _)| name.to_string())
            .collect();
        assert!(!imports.is_empty());
        for name in &imports {
            assert!(
                SPIN_PROVIDES.iter().any(|p| name.starts_with(p)),
                "{c} imports {name}, which Spin does not provide"
            );
        }
        let exports: Vec<String> = ty
            .exports(&engine)
            .map(|(name, _)| name.to_string())
            .collect();
        assert!(
            exports
                .iter()
                .any(|e| e == "wasi:http/incoming-handler@0.2.0"),
            "{c} exports {exports:?}"
        );
    }
}

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
    "wasi:keyvalue/batch@0.2.0-draft2",
];

fn component_type(file: &str) -> (Vec<String>, Vec<String>) {
    let root = common::repo();
    let engine = lumen_host::engine::shared_engine().unwrap();
    let wasm = root.join(format!("target/wasm32-wasip2/release/{file}"));
    assert!(
        wasm.is_file(),
        "{} missing: run scripts/build.sh",
        wasm.display()
    );
    let component =
        lumen_host::engine::load_component(&engine, &wasm, &root.join("target/lumen-cache"))
            .unwrap();
    let ty = component.component_type();
    let imports = ty.imports(&engine).map(|(n, _)| n.to_string()).collect();
    let exports = ty.exports(&engine).map(|(n, _)| n.to_string()).collect();
    (imports, exports)
}

fn assert_spin_only(what: &str, imports: &[String]) {
    assert!(!imports.is_empty());
    for name in imports {
        assert!(
            SPIN_PROVIDES.iter().any(|p| name.starts_with(p)),
            "{what} imports {name}, which Spin does not provide"
        );
    }
}

/// The components spin.toml runs (the composed gateway and the dashboard): everything they
/// import, Spin provides; they export only the HTTP handler.
#[test]
fn the_components_spin_runs_import_only_what_spin_provides() {
    for file in ["lumen_gateway.wasm", "lumen_dashboard.wasm"] {
        let (imports, exports) = component_type(file);
        assert_spin_only(file, &imports);
        assert_eq!(
            exports,
            vec!["wasi:http/incoming-handler@0.2.0".to_string()],
            "{file}"
        );
    }
}

/// Each part exports its contract from components/wit/lumen.wit (the router also the
/// `wizer-initialize` that lumen-compose pre-initializes it with; the composed gateway exports
/// only the handler, above); auth imports the three and otherwise only what Spin provides.
#[test]
fn the_four_parts_meet_through_their_contracts() {
    for (c, contract) in [
        (
            "router",
            &["wizer-initialize", "lumen:gateway/planner@0.1.0"][..],
        ),
        ("provider", &["lumen:gateway/caller@0.1.0"][..]),
        ("meter", &["lumen:gateway/ledger@0.1.0"][..]),
    ] {
        let (imports, exports) = component_type(&format!("lumen_{c}.wasm"));
        assert_spin_only(c, &imports);
        assert_eq!(exports, contract, "{c}");
    }
    let (imports, exports) = component_type("lumen_auth.wasm");
    let (ours, spin): (Vec<String>, Vec<String>) =
        imports.into_iter().partition(|n| n.starts_with("lumen:"));
    assert_spin_only("auth", &spin);
    let mut ours = ours;
    ours.sort();
    assert_eq!(
        ours,
        [
            "lumen:gateway/caller@0.1.0",
            "lumen:gateway/ledger@0.1.0",
            "lumen:gateway/planner@0.1.0"
        ]
    );
    assert_eq!(
        exports,
        vec!["wasi:http/incoming-handler@0.2.0".to_string()]
    );
}

/// lumen-compose pre-initializes the router (and only it: the one part that exports
/// `wizer-initialize`), and the gateway spin.toml runs is that composition, byte for byte.
#[test]
fn the_gateway_runs_the_router_pre_initialized() {
    let dir = common::repo().join("target/wasm32-wasip2/release");
    let out = std::env::temp_dir().join(format!("lumen-compose-{}.wasm", std::process::id()));
    let run = std::process::Command::new(common::release_bin("lumen-compose"))
        .arg(&out)
        .args(["auth", "router", "provider", "meter"].map(|c| dir.join(format!("lumen_{c}.wasm"))))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{said}");
    let initialized: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("pre-initialized"))
        .collect();
    assert_eq!(initialized.len(), 1, "{said}");
    assert!(initialized[0].contains("lumen_router.wasm"), "{said}");
    let composed = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(
        composed == std::fs::read(dir.join("lumen_gateway.wasm")).unwrap(),
        "lumen_gateway.wasm is not this composition: run scripts/build.sh"
    );
}

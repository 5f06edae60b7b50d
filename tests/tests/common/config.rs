//! A gateway on its own configuration: a copy of `spin.toml` whose sources point back into the
//! repository and whose `config/` is a temporary copy with TOML appended to the catalog and the
//! plans (shadow experiments, plans with cache settings, …).

use super::{repo, Gateway, UPSTREAM_KEY};
use lumen_host::HostOptions;
use lumen_tests::mock::MockConfig;
use std::path::PathBuf;

/// A temporary directory with `spin.toml` and `config/`; removed when dropped.
pub struct Config {
    pub dir: PathBuf,
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Config {
    /// The shipped configuration with `catalog` appended to `catalog.toml` and `plans` to
    /// `plans.toml`.
    pub fn new(catalog: &str, plans: &str) -> Config {
        let mut b = [0u8; 8];
        getrandom_bytes(&mut b);
        let dir =
            std::env::temp_dir().join(format!("lumen-config-{}-{}", std::process::id(), hex(&b)));
        let cfg = dir.join("config");
        std::fs::create_dir_all(&cfg).unwrap();
        for entry in std::fs::read_dir(repo().join("config")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), cfg.join(entry.file_name())).unwrap();
        }
        for (file, extra) in [("catalog.toml", catalog), ("plans.toml", plans)] {
            let path = cfg.join(file);
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push('\n');
            text.push_str(extra);
            std::fs::write(&path, text).unwrap();
        }
        let root = repo().canonicalize().unwrap();
        let manifest = std::fs::read_to_string(root.join("spin.toml"))
            .unwrap()
            .replace(
                "source = \"config\"",
                &format!("source = \"{}\"", cfg.display()),
            )
            .replace("source = \"", &format!("source = \"{}/", root.display()))
            .replace(
                &format!("source = \"{}/{}", root.display(), cfg.display()),
                &format!("source = \"{}", cfg.display()),
            );
        // Spin maps only files inside the application directory: the dashboard's static files
        // are copied next to the manifest (the wasm sources may stay absolute).
        let statics = "components/dashboard/static";
        copy_dir(&root.join(statics), &dir.join(statics));
        let manifest = manifest.replace(
            &format!("source = \"{}/{statics}\"", root.display()),
            &format!("source = \"{statics}\""),
        );
        std::fs::write(dir.join("spin.toml"), manifest).unwrap();
        Config { dir }
    }

    /// Replaces `from` with `to` in the copy of `config/{file}`, in place.
    pub fn replace(&self, file: &str, from: &str, to: &str) {
        let path = self.dir.join("config").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} is not in config/{file}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// The manifest.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("spin.toml")
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom_bytes(b: &mut [u8]) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let v = (t as u64) ^ n.rotate_left(32);
    for (i, x) in b.iter_mut().enumerate() {
        *x = (v >> ((i % 8) * 8)) as u8;
    }
}

impl Gateway {
    /// A gateway on `cfg`, with `tweak` applied to the host options.
    pub async fn start_config(cfg: &Config, tweak: impl FnOnce(&mut HostOptions)) -> Gateway {
        let manifest = cfg.manifest();
        Gateway::start_with(
            MockConfig {
                api_key: Some(UPSTREAM_KEY.into()),
                ..MockConfig::default()
            },
            move |o| {
                o.manifest = manifest;
                tweak(o);
            },
        )
        .await
    }
}

//! Files mounted into a component (spin.toml `files`), read through the host's preopened
//! directories.

use lumen_shared::domain::catalog::FileStamp;

/// The [`FileStamp`] (size, modification seconds and nanoseconds) of the mounted file at the
/// absolute `path`, from one `wasi:filesystem` `stat-at` on the preopened directory that holds
/// it. `std::fs::metadata` costs two calls in WASI (wasi-libc adds a `metadata-hash-at` for the
/// inode number), and Spin runs each file-system call on its blocking thread pool: a hand-off
/// to another thread and back per call. Same values as [`lumen_shared::domain::catalog::file_stamp`].
#[cfg(target_arch = "wasm32")]
pub fn stamp(path: &str) -> Option<FileStamp> {
    use spin_sdk::wit::wasi::filesystem0_2_6::{preopens, types::PathFlags};
    let dirs = preopens::get_directories();
    let (dir, rel) = dirs
        .iter()
        .filter_map(|(dir, name)| Some((dir, name.len(), relative_to(name, path)?)))
        .max_by_key(|(_, len, _)| *len)
        .map(|(dir, _, rel)| (dir, rel))?;
    let meta = dir.stat_at(PathFlags::SYMLINK_FOLLOW, rel).ok()?;
    let at = meta.data_modification_timestamp?;
    Some((meta.size, at.seconds, at.nanoseconds))
}

/// Native builds (unit tests): std's metadata.
#[cfg(not(target_arch = "wasm32"))]
pub fn stamp(path: &str) -> Option<FileStamp> {
    lumen_shared::domain::catalog::file_stamp(std::path::Path::new(path))
}

/// `path` relative to the preopened directory `name` (both absolute), when it lies under it:
/// `"."` for the directory itself. A preopen of `/` holds every absolute path.
pub fn relative_to<'a>(name: &str, path: &'a str) -> Option<&'a str> {
    if !name.starts_with('/') {
        return None;
    }
    let base = name.trim_end_matches('/');
    let rest = path.strip_prefix(base)?;
    let rel = if base.is_empty() {
        rest
    } else if rest.is_empty() {
        return Some(".");
    } else {
        rest.strip_prefix('/')?
    };
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() { "." } else { rel })
}

#[cfg(test)]
mod tests {
    use super::relative_to;

    #[test]
    fn paths_resolve_under_the_preopen_that_holds_them() {
        // lumen-host preopens the mount's destination; Spin preopens `/` over its copy.
        assert_eq!(
            relative_to("/config", "/config/catalog.toml"),
            Some("catalog.toml")
        );
        assert_eq!(
            relative_to("/config/", "/config/catalog.toml"),
            Some("catalog.toml")
        );
        assert_eq!(
            relative_to("/", "/config/catalog.toml"),
            Some("config/catalog.toml")
        );
        assert_eq!(relative_to("/config", "/config"), Some("."));
        assert_eq!(relative_to("/", "/"), Some("."));
        // Not under it: a sibling with the same prefix, another tree, a relative preopen.
        assert_eq!(relative_to("/config", "/configs/catalog.toml"), None);
        assert_eq!(relative_to("/data", "/config/catalog.toml"), None);
        assert_eq!(relative_to(".", "/config/catalog.toml"), None);
    }

    #[test]
    fn the_native_stamp_is_the_shared_one() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert!(super::stamp(file).is_some());
        assert_eq!(
            super::stamp(file),
            lumen_shared::domain::catalog::file_stamp(std::path::Path::new(file))
        );
    }
}

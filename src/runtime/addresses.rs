//! Where a running proxy's listeners are bound, reported three ways: the
//! "portcullis is serving" log line, `GET /listeners` on the admin endpoint,
//! and the `--ready-file` written once every listener is bound.
//!
//! A `listen` address with port 0 gets a port from the kernel, so these
//! reports are how tests, and users running several proxies on one host,
//! learn the real ports. The JSON is the same in the file and over HTTP.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a running proxy's listeners ended up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BoundAddresses {
    /// Admin listener, if enabled.
    pub admin: Option<SocketAddr>,
    /// Inbound listeners by name.
    pub inbound: BTreeMap<String, SocketAddr>,
    /// Outbound listeners by name.
    pub outbound: BTreeMap<String, SocketAddr>,
}

impl BoundAddresses {
    /// `{"admin": "127.0.0.1:9901", "inbound": {"api": "0.0.0.0:8443"},
    /// "outbound": {}}`, pretty-printed, with a final newline.
    pub fn to_json(&self) -> String {
        // Serializing maps of strings cannot fail; the fallback keeps this
        // function total all the same.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    }

    /// Write [`Self::to_json`] to `path` atomically: a reader sees no file,
    /// or the old one, or the whole new one, never a half-written file.
    pub fn write_ready_file(&self, path: &Path) -> std::io::Result<()> {
        let temporary = temporary_path(path)?;
        let written = std::fs::File::create(&temporary).and_then(|mut file| {
            file.write_all(self.to_json().as_bytes())?;
            file.sync_all()
        });
        let renamed = written.and_then(|()| std::fs::rename(&temporary, path));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        renamed
    }
}

/// A sibling of `path` (same folder, so the rename stays on one file
/// system) that no other process writing the same file would pick.
fn temporary_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> BoundAddresses {
        BoundAddresses {
            admin: Some("127.0.0.1:9901".parse().unwrap()),
            inbound: BTreeMap::from([("api".to_string(), "0.0.0.0:8443".parse().unwrap())]),
            outbound: BTreeMap::from([(
                "payments".to_string(),
                "127.0.0.1:15001".parse().unwrap(),
            )]),
        }
    }

    #[test]
    fn json_names_every_listener_with_its_address() {
        let json: serde_json::Value = serde_json::from_str(&example().to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "admin": "127.0.0.1:9901",
                "inbound": {"api": "0.0.0.0:8443"},
                "outbound": {"payments": "127.0.0.1:15001"},
            })
        );
        let none = BoundAddresses::default().to_json();
        assert!(none.contains("\"admin\": null"), "{none}");
        assert!(none.ends_with('\n'));
    }

    #[test]
    fn ready_file_is_replaced_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        std::fs::write(&path, "stale").unwrap();
        example().write_ready_file(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), example().to_json());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ready.json")]);
    }

    #[test]
    fn ready_file_in_a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("ready.json");
        assert!(example().write_ready_file(&path).is_err());
        assert!(BoundAddresses::default()
            .write_ready_file(Path::new("/"))
            .is_err());
    }
}

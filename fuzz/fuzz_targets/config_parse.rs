//! Arbitrary bytes (as lossy UTF-8) as a configuration file, read both as
//! the proxy's config (`config::parse`) and as the CA's `ca.toml`
//! (`ca::config::parse`): each must answer Ok, or Err naming the file with
//! at least one keyed error, and never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::ConfigErrors;

fn check_errors(errors: &ConfigErrors, path: &Path) {
    assert!(!errors.errors.is_empty(), "Err with no error: {errors:?}");
    assert_eq!(errors.file, path);
    for error in &errors.errors {
        assert!(!error.key.is_empty(), "an error without a key: {errors:?}");
        assert!(
            !error.reason.is_empty(),
            "an error without a reason: {errors:?}"
        );
    }
    // The message printed to the operator is built from hostile text.
    let _ = errors.to_string();
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let path = Path::new("/etc/portcullis/fuzz.toml");
    match portcullis::config::parse(&text, path) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(errors) => check_errors(&errors, path),
    }

    let path = Path::new("/etc/portcullis-ca/ca.toml");
    match portcullis::ca::config::parse(&text, path) {
        Ok(config) => {
            let _ = (config.server_ips(), config.server_dns(), config.log_path());
        }
        Err(errors) => check_errors(&errors, path),
    }
});

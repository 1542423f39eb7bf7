//! Unit tests of the runtime pieces that need no socket: building the
//! listeners of a config (and the key paths of its errors), and the metrics
//! at start.

use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::certs::Credentials;
use crate::config::AllowRule;

/// A store holding a self-signed certificate that is also the trust bundle.
fn store() -> Arc<IdentityStore> {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["proxy.example.org".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let provider = default_provider();
    let material = TlsMaterial::build(
        Credentials {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            trust_bundle: vec![cert.der().clone()],
            crls: Vec::new(),
        },
        &provider,
    )
    .unwrap();
    Arc::new(IdentityStore::new(material, provider))
}

/// A config in which every listener is taken from `text` (TOML), with a
/// files identity that is never read (the store is built by `store`).
fn config(text: &str) -> Config {
    let identity =
        "[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\ntrust_bundle = \"b\"\n";
    crate::config::parse(&format!("{identity}{text}"), Path::new("test.toml")).unwrap()
}

fn inbound(name: &str, listen: &str) -> String {
    format!(
        "[[inbound]]\nname = \"{name}\"\nlisten = \"{listen}\"\nbackend = \"127.0.0.1:8080\"\n\
         allow_any_authenticated = true\n"
    )
}

fn outbound(name: &str, listen: &str) -> String {
    format!(
        "[[outbound]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstream = \"pay.example.org:8443\"\n\
         expect = {{ dns = \"pay.example.org\" }}\n"
    )
}

#[test]
fn every_listener_is_prepared_in_config_order_without_binding() {
    let text = format!(
        "{}{}{}",
        inbound("b", "127.0.0.1:0"),
        inbound("a", "127.0.0.1:0"),
        outbound("pay", "127.0.0.1:0")
    );
    let prepared = PreparedListeners::build(&config(&text), &store()).unwrap();
    let names: Vec<&str> = prepared.inbound.iter().map(|p| p.spec().name).collect();
    assert_eq!(names, ["b", "a"]);
    assert_eq!(prepared.outbound.len(), 1);
    assert_eq!(prepared.outbound[0].spec().listen.port(), 0);
    assert_eq!(prepared.outbound[0].spec().max_connections, 4096);
}

#[test]
fn a_listener_that_does_not_build_is_named_by_its_key_path() {
    // Not through `config::parse`, which would refuse these first: the
    // builders must still report where the problem is.
    let mut config = config(&format!(
        "{}{}",
        inbound("ok", "127.0.0.1:0"),
        inbound("bad", "127.0.0.1:0")
    ));
    config.inbound[1].allow = vec![AllowRule {
        ip: Some("not-an-ip".into()),
        ..AllowRule::default()
    }];
    config.inbound[1].allow_any_authenticated = false;
    let (key, reason) = match PreparedListeners::build(&config, &store()) {
        Err(error) => error,
        Ok(_) => panic!("a bad allow rule built"),
    };
    assert_eq!(key, "inbound[1]");
    assert!(reason.starts_with("allow[0].ip:"), "{reason}");

    let mut config = self::config(&outbound("pay", "127.0.0.1:0"));
    config.outbound[0].expect = AllowRule::default();
    let (key, reason) = match PreparedListeners::build(&config, &store()) {
        Err(error) => error,
        Ok(_) => panic!("an empty expect built"),
    };
    assert_eq!(key, "outbound[0]");
    assert!(reason.starts_with("expect."), "{reason}");
}

#[test]
fn prepare_errors_carry_the_file() {
    let mut config = config(&outbound("pay", "127.0.0.1:0"));
    config.outbound[0].expect = AllowRule::default();
    let errors = match build_listeners(&config, &store(), Path::new("/etc/p.toml")) {
        Err(errors) => errors,
        Ok(_) => panic!("an empty expect built"),
    };
    assert_eq!(errors.file, Path::new("/etc/p.toml"));
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(errors.errors[0].key, "outbound[0]");
}

#[test]
fn startup_metrics_export_our_certificate_and_zero_reloads() {
    let metrics = startup_metrics(&store()).unwrap();
    let text = metrics.encode().unwrap();
    for want in [
        "portcullis_config_reloads_total{result=\"success\"} 0",
        "portcullis_config_reloads_total{result=\"failure\"} 0",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    assert!(
        text.contains("portcullis_config_last_reload_success_timestamp_seconds"),
        "{text}"
    );
    assert!(text.contains("role=\"leaf\""), "{text}");
}

#[test]
fn serve_options_default_to_no_reload_and_no_ready_file() {
    let options = ServeOptions::default();
    assert!(options.config_path.is_none());
    assert!(options.ready_file.is_none());
}

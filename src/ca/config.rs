//! `ca.toml`: the configuration of `portcullis ca serve`, its schema,
//! defaults and validation. Unknown keys are refused; every problem is
//! reported with its key path and reason, all at once, in the same format as
//! the proxy's configuration errors. Relative paths are relative to the
//! configuration file's folder.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::files;
use super::template::IdentityTemplate;
use crate::config::{ConfigError, ConfigErrors};
use crate::identity::SpiffeId;

/// The whole `ca.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// HTTPS listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The CA folder (made by `ca init`).
    pub dir: PathBuf,
    /// The trust domain; must be the one the CA folder was made for.
    pub trust_domain: String,
    /// DNS names and IP addresses of the CA's own TLS certificate.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// Lifetime of an issued certificate when the request names none.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime ever issued.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Issuance log (JSON lines); default `<dir>/issuance.log`.
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// Who may mint bootstrap tokens the CA accepts.
    #[serde(default, rename = "provisioner")]
    pub provisioners: Vec<ProvisionerConfig>,
    /// Accept an intermediate key readable by group or others (e.g. a
    /// Kubernetes Secret mounted with `fsGroup` and mode 0440).
    #[serde(default)]
    pub insecure_key_permissions: bool,
}

/// `[[provisioner]]`: an issuer of bootstrap JWTs and how its tokens map to
/// SPIFFE IDs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvisionerConfig {
    /// Name, used in logs and in the issuance log (`token:<name>`).
    pub name: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim (one of the token's audiences).
    pub audience: String,
    /// JWKS file with the public keys that sign the tokens.
    pub jwks: PathBuf,
    /// Identity template, default `{sub}`.
    #[serde(default = "default_identity")]
    pub identity: String,
    /// Require a `jti` and accept each token once (default). Set to false
    /// for Kubernetes service-account tokens, which a restarted pod reuses
    /// until the kubelet rotates them; their short lifetime bounds replay.
    #[serde(default = "default_single_use")]
    pub single_use: bool,
}

fn default_single_use() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8500))
}

fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_identity() -> String {
    "{sub}".into()
}

impl CaConfig {
    /// The issuance log path.
    pub fn log_path(&self) -> PathBuf {
        self.log
            .clone()
            .unwrap_or_else(|| self.dir.join(files::ISSUANCE_LOG))
    }

    /// Server names that are IP addresses.
    pub fn server_ips(&self) -> Vec<IpAddr> {
        self.server_names
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Server names that are DNS names.
    pub fn server_dns(&self) -> Vec<String> {
        self.server_names
            .iter()
            .filter(|n| n.parse::<IpAddr>().is_err())
            .cloned()
            .collect()
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        if base.as_os_str().is_empty() {
            return;
        }
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                // `dir = "."` means the config file's folder itself.
                *p = base
                    .join(&*p)
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .collect();
            }
        };
        fix(&mut self.dir);
        if let Some(log) = &mut self.log {
            fix(log);
        }
        for p in &mut self.provisioners {
            fix(&mut p.jwks);
        }
    }
}

/// Read, parse and validate `ca.toml`.
pub fn load(path: &Path) -> Result<CaConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![error("(file)", format!("cannot read: {e}"))],
    })?;
    parse(&text, path)
}

fn error(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parse and validate `ca.toml` text; `path` names the file in errors and
/// anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<CaConfig, ConfigErrors> {
    let errors = |errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    };
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| errors(vec![syntax_error(text, &e, None)]))?;
    let mut config: CaConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        errors(vec![syntax_error(text, e.inner(), Some(key))])
    })?;
    let problems = validate(&config);
    if !problems.is_empty() {
        return Err(errors(problems));
    }
    if let Some(base) = path.parent() {
        config.resolve_relative_paths(base);
    }
    Ok(config)
}

fn syntax_error(text: &str, e: &toml::de::Error, key: Option<String>) -> ConfigError {
    let location = e.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}")
    });
    let mut key = key.filter(|k| !k.is_empty() && k != ".");
    if let Some(missing) = e
        .message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        key = Some(match key {
            Some(table) => format!("{table}.{missing}"),
            None => missing.to_string(),
        });
    }
    let key = match (key, location) {
        (Some(key), Some(location)) => format!("{key} at {location}"),
        (Some(key), None) => key,
        (None, Some(location)) => location,
        (None, None) => "(syntax)".into(),
    };
    error(key, e.message().trim())
}

/// Every semantic problem of a parsed configuration.
pub fn validate(config: &CaConfig) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    match SpiffeId::parse(&format!("spiffe://{}", config.trust_domain)) {
        Ok(id) if id.trust_domain() == config.trust_domain => {}
        Ok(_) => problems.push(error(
            "trust_domain",
            "a trust domain is a name like example.org, without scheme or path",
        )),
        Err(e) => problems.push(error("trust_domain", e.to_string())),
    }
    if config.server_names.is_empty() {
        problems.push(error(
            "server_names",
            "must name at least one DNS name or IP address",
        ));
    }
    for (i, name) in config.server_names.iter().enumerate() {
        let valid = name.parse::<IpAddr>().is_ok()
            || rustls_pki_types::DnsName::try_from(name.as_str()).is_ok();
        if !valid {
            problems.push(error(
                format!("server_names[{i}]"),
                format!("{name:?} is neither a DNS name nor an IP address"),
            ));
        }
    }
    if config.default_ttl.is_zero() {
        problems.push(error("default_ttl", "must be longer than zero"));
    }
    if config.max_ttl.is_zero() {
        problems.push(error("max_ttl", "must be longer than zero"));
    }
    if config.default_ttl > config.max_ttl {
        problems.push(error(
            "default_ttl",
            format!(
                "is longer than max_ttl ({})",
                humantime::format_duration(config.max_ttl)
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, p) in config.provisioners.iter().enumerate() {
        let key = |field: &str| format!("provisioner[{i}].{field}");
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            problems.push(error(
                key("name"),
                format!(
                    "{:?} must be non-empty and use only A-Z a-z 0-9 . _ -",
                    p.name
                ),
            ));
        } else if !names.insert(p.name.as_str()) {
            problems.push(error(
                key("name"),
                format!("{:?} is used by an earlier provisioner", p.name),
            ));
        }
        if p.issuer.is_empty() {
            problems.push(error(key("issuer"), "must not be empty"));
        }
        if p.audience.is_empty() {
            problems.push(error(key("audience"), "must not be empty"));
        }
        if let Err(e) = IdentityTemplate::parse(&p.identity) {
            problems.push(error(key("identity"), format!("{:?}: {e}", p.identity)));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "dir = \"ca\"\ntrust_domain = \"example.org\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MINIMAL, Path::new("/etc/portcullis/ca.toml")).unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.dir, Path::new("/etc/portcullis/ca"));
        assert_eq!(c.log_path(), Path::new("/etc/portcullis/ca/issuance.log"));
        assert_eq!(c.default_ttl, Duration::from_secs(3600));
        assert_eq!(c.max_ttl, Duration::from_secs(86400));
        assert_eq!(c.server_dns(), vec!["localhost".to_string()]);
        assert_eq!(c.server_ips(), vec![IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn the_config_init_writes_is_valid() {
        let text = super::super::init::default_config("example.org");
        let c = parse(&text, Path::new("/ca/ca.toml")).unwrap();
        assert_eq!(c.provisioners.len(), 1);
        assert_eq!(c.provisioners[0].jwks, Path::new("/ca/jwks.json"));
        assert_eq!(c.dir, Path::new("/ca"));
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../config/ca/ca.toml");
        let c = parse(text, Path::new("config/ca/ca.toml")).unwrap();
        assert_eq!(c.provisioners.len(), 2);
        assert_eq!(c.max_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_precise() {
        let err = parse(&format!("{MINIMAL}lsten = \"x\"\n"), Path::new("ca.toml")).unwrap_err();
        assert!(err.to_string().contains("lsten"), "{err}");
        let text = format!(
            "{MINIMAL}default_ttl = \"2d\"\nserver_names = [\"bad name\"]\n\
             [[provisioner]]\nname = \"a\"\nissuer = \"\"\naudience = \"x\"\njwks = \"j\"\nidentity = \"spiffe://{{td}}/x\"\n\
             [[provisioner]]\nname = \"a\"\nissuer = \"i\"\naudience = \"x\"\njwks = \"j\"\n"
        );
        let err = parse(&text, Path::new("ca.toml")).unwrap_err();
        let keys: Vec<_> = err.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "server_names[0]",
                "default_ttl",
                "provisioner[0].issuer",
                "provisioner[0].identity",
                "provisioner[1].name"
            ],
            "{err}"
        );
        let err = parse("dir = \"x\"\n", Path::new("ca.toml")).unwrap_err();
        assert!(err.errors[0].key.starts_with("trust_domain"), "{err}");
        let err = parse(
            "dir = \"x\"\ntrust_domain = \"Example.org\"\n",
            Path::new("ca.toml"),
        )
        .unwrap_err();
        assert_eq!(err.errors[0].key, "trust_domain", "{err}");
    }
}

//! Configuration: the TOML schema, loading, and validation with precise errors.
//!
//! Loading never panics on any input. Every problem is reported with the
//! file, the key path (e.g. `inbound[0].allow[1].spiffe_id`) and the reason,
//! and all problems are reported at once rather than the first only.

mod rules;
pub mod schema;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use rules::{compile_authorizer, compile_http_authz, compile_policy, compile_rule, HttpAuthz};
pub use schema::*;
pub use validate::split_host_port;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the key is, e.g. `inbound[0].listen`, or `line 3, column 1` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the errors are in.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}: {}", e.key, e.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn one(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigErrors {
        ConfigErrors {
            file: file.to_path_buf(),
            errors: vec![ConfigError {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(path, "(file)", format!("cannot read: {e}")))?;
    parse(&text, path)
}

/// Parse and validate configuration text; `path` is used in errors and to
/// resolve relative file paths (relative to the config file's folder).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| syntax_error(text, path, &e, None))?;
    let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        syntax_error(text, path, e.inner(), Some(key))
    })?;
    let errors = validate::validate(&config);
    if !errors.is_empty() {
        return Err(ConfigErrors {
            file: path.to_path_buf(),
            errors,
        });
    }
    if let Some(dir) = path.parent() {
        config.resolve_relative_paths(dir);
    }
    Ok(config)
}

/// A parse or type error, keyed by the key path when serde knows it (e.g.
/// `inbound[0].bakend`) and always by line and column when toml knows them.
fn syntax_error(
    text: &str,
    path: &Path,
    error: &toml::de::Error,
    key_path: Option<String>,
) -> ConfigErrors {
    let location = error.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
        format!("line {line}, column {column} (`{source_line}`)")
    });
    let mut key_path = key_path.filter(|k| !k.is_empty() && k != ".");
    // serde reports a missing key at its table; name the key itself.
    if let Some(missing) = error
        .message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        key_path = Some(match key_path {
            Some(table) => format!("{table}.{missing}"),
            None => missing.to_string(),
        });
    }
    let key = match (key_path, location) {
        (Some(key), Some(location)) => format!("{key} at {location}"),
        (Some(key), None) => key,
        (None, Some(location)) => location,
        (None, None) => "(syntax)".to_string(),
    };
    ConfigErrors::one(path, key, friendlier(error.message().trim()))
}

/// serde's wording for the values people most often get wrong, made concrete.
fn friendlier(message: &str) -> String {
    if message.contains("invalid socket address syntax") {
        return format!(
            "{message}: expected IP:port such as \"0.0.0.0:8443\" or \"[::1]:8443\" (host names are not allowed here)"
        );
    }
    if message.contains("expected usize") || message.contains("expected u64") {
        return format!("{message}: expected a whole number");
    }
    if message.contains("expected a duration") {
        return message.replace(
            "expected a duration",
            "expected a duration such as \"500ms\", \"30s\", \"5m\" or \"1h\"",
        );
    }
    message.to_string()
}

impl Config {
    /// Make relative file paths relative to `dir` (the config file's folder),
    /// so a config means the same whatever the working directory.
    fn resolve_relative_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        match &mut self.identity {
            IdentityConfig::Files(files) => {
                fix(&mut files.cert);
                fix(&mut files.key);
                fix(&mut files.trust_bundle);
                files.crls.iter_mut().for_each(fix);
            }
            IdentityConfig::Ca(ca) => {
                fix(&mut ca.ca_bundle);
                fix(&mut ca.token_file);
                if let Some(dir) = &mut ca.write_dir {
                    fix(dir);
                }
            }
        }
        for watch in &mut self.watch {
            for path in [
                &mut watch.path,
                &mut watch.client_cert,
                &mut watch.client_key,
            ]
            .into_iter()
            .flatten()
            {
                fix(path);
            }
        }
    }
}

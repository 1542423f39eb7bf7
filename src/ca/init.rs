//! `portcullis ca init`: a new CA folder with a root, an intermediate signed
//! by it, a bootstrap token signing key and a ready-to-use `ca.toml`.
//!
//! Everything is generated in memory first; nothing is written when the
//! folder already holds any CA file, so an existing CA is never touched.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::files::{self, CaDir, FileError};
use super::policy::{self, PolicyError};
use super::token::{self, TokenError};
use crate::identity::SpiffeId;

/// Lifetime of the root.
const ROOT_DAYS: i64 = 3650;
/// Lifetime of the intermediate.
const INTERMEDIATE_DAYS: i64 = 365;
/// Default address of `ca serve` in the generated ca.toml.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8500";

/// Why `ca init` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The trust domain is not valid.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    TrustDomain {
        /// What was given.
        trust_domain: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The folder already holds a CA.
    #[error(
        "{} already holds a CA ({}); refusing to overwrite it. \
         Use another folder, or delete the old CA first if you really mean to replace it",
        dir.display(),
        existing.join(", ")
    )]
    Exists {
        /// The folder.
        dir: PathBuf,
        /// The CA files found in it.
        existing: Vec<String>,
    },
    /// Key or certificate generation failed.
    #[error("cannot create the {what}: {reason}")]
    Generate {
        /// Which object.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The signing policy (random serials) failed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The token key set cannot be made.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A file cannot be written.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What `ca init` created.
#[derive(Debug, Clone)]
pub struct Created {
    /// The CA folder.
    pub dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// The files written.
    pub files: Vec<PathBuf>,
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> InitError {
    move |e| InitError::Generate {
        what,
        reason: e.to_string(),
    }
}

fn ca_params(
    trust_domain: &SpiffeId,
    cn: &str,
    constraint: BasicConstraints,
    days: i64,
) -> Result<CertificateParams, InitError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name.push(DnType::OrganizationName, trust_domain.trust_domain());
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraint);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let uri = trust_domain
        .as_str()
        .try_into()
        .map_err(generate("CA certificate"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.serial_number = Some(SerialNumber::from_slice(&policy::random_serial()?));
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
    Ok(params)
}

/// Create a CA in `dir` for `trust_domain`.
pub fn init(dir: &Path, trust_domain: &str) -> Result<Created, InitError> {
    let td_id = SpiffeId::parse(&format!("spiffe://{trust_domain}")).map_err(|e| {
        InitError::TrustDomain {
            trust_domain: trust_domain.to_string(),
            reason: e.to_string(),
        }
    })?;
    if td_id.trust_domain() != trust_domain || trust_domain.is_empty() {
        return Err(InitError::TrustDomain {
            trust_domain: trust_domain.to_string(),
            reason: "a trust domain is a name like example.org, without scheme or path".into(),
        });
    }
    let ca = CaDir::new(dir);
    let existing = ca.existing_files();
    if !existing.is_empty() {
        return Err(InitError::Exists {
            dir: dir.to_path_buf(),
            existing: existing
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        });
    }

    // Generate everything before writing anything.
    let root_key = KeyPair::generate().map_err(generate("root key"))?;
    let root_params = ca_params(
        &td_id,
        "portcullis root CA",
        BasicConstraints::Unconstrained,
        ROOT_DAYS,
    )?;
    let root = root_params
        .self_signed(&root_key)
        .map_err(generate("root certificate"))?;
    let intermediate_key = KeyPair::generate().map_err(generate("intermediate key"))?;
    let intermediate_params = ca_params(
        &td_id,
        "portcullis intermediate CA",
        BasicConstraints::Constrained(0),
        INTERMEDIATE_DAYS,
    )?;
    let intermediate = intermediate_params
        .signed_by(
            &intermediate_key,
            &Issuer::from_params(&root_params, &root_key),
        )
        .map_err(generate("intermediate certificate"))?;
    let token_key = KeyPair::generate().map_err(generate("token signing key"))?;
    let jwks = token::jwks_json(&token_key)?;
    let config = default_config(trust_domain);

    files::create_private_dir(dir)?;
    let outputs: [(&str, String, bool); 9] = [
        (files::ROOT_KEY, root_key.serialize_pem(), true),
        (files::ROOT_CERT, root.pem(), false),
        (
            files::INTERMEDIATE_KEY,
            intermediate_key.serialize_pem(),
            true,
        ),
        (files::INTERMEDIATE_CERT, intermediate.pem(), false),
        (files::BUNDLE, root.pem(), false),
        (files::TOKEN_KEY, token_key.serialize_pem(), true),
        (files::JWKS, jwks, false),
        (files::REVOKED, String::new(), false),
        (files::CONFIG, config, false),
    ];
    let mut written = Vec::new();
    for (name, contents, private) in &outputs {
        let path = ca.file(name);
        if let Err(error) = files::write_atomic(&path, contents.as_bytes(), *private) {
            // Leave the folder as it was.
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
            return Err(error.into());
        }
        written.push(path);
    }
    Ok(Created {
        dir: dir.to_path_buf(),
        trust_domain: trust_domain.to_string(),
        files: written,
    })
}

/// The `ca.toml` written by `init`: paths relative to the file's folder
/// (the CA folder), so the folder can be moved.
pub fn default_config(trust_domain: &str) -> String {
    format!(
        r#"# portcullis ca serve configuration, written by `portcullis ca init`.
# Relative paths are relative to this file's folder (the CA folder).
# Every key is described in docs/ca.md.

listen = "{DEFAULT_LISTEN}"
dir = "."
trust_domain = "{trust_domain}"
server_names = ["localhost", "127.0.0.1"]
default_ttl = "1h"
max_ttl = "24h"
# log = "issuance.log"

# Bootstrap tokens minted by `portcullis ca token`.
[[provisioner]]
name = "bootstrap"
issuer = "{issuer}"
audience = "{audience}"
jwks = "jwks.json"
identity = "{{sub}}"
"#,
        issuer = token::ISSUER,
        audience = token::AUDIENCE,
    )
}

/// The text `ca init` prints.
pub fn summary(created: &Created) -> String {
    let dir = created.dir.display();
    let mut out = format!(
        "created a CA for trust domain {} in {dir}\n",
        created.trust_domain
    );
    for path in &created.files {
        out.push_str(&format!("  {}\n", path.display()));
    }
    out.push_str(&format!(
        "\nroot.key is needed only to sign a new intermediate: move it offline now \
         (ca serve and ca issue use the intermediate only).\n\
         next:\n  portcullis ca serve -c {}\n  portcullis ca token --dir {dir} --spiffe-id spiffe://{}/my/service\n",
        created.dir.join(files::CONFIG).display(),
        created.trust_domain,
    ));
    out
}

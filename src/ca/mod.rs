//! The internal CA (`portcullis ca ...`): creates a root and intermediate,
//! issues offline, mints bootstrap tokens, serves the signing API, revokes.
//!
//! The CA decides a certificate's identity from the caller's credential
//! (a bootstrap token, or the caller's current certificate on renewal),
//! never from what the CSR asks for.
//!
//! Modules: [`files`] (the CA folder), [`init`], [`authority`] (the loaded
//! intermediate), [`policy`] (what a leaf looks like), [`csr`] (proof of
//! possession), [`token`] (minting bootstrap tokens), [`template`] and
//! [`provisioner`] (verifying tokens and mapping them to identities),
//! [`sign`] (the signing decision), [`revocation`] (revoked.txt and the
//! CRL), [`log`] (the issuance log), [`metrics`], [`config`] (ca.toml),
//! [`server`] (HTTPS), [`issue`] (offline issuance), [`api`] (the wire
//! contract shared with the proxy's CA client). See docs/ca.md.

pub mod api;
pub mod authority;
pub mod config;
pub mod csr;
pub mod files;
pub mod init;
pub mod issue;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod provisioner;
pub mod revocation;
pub mod server;
pub mod sign;
pub mod template;
pub mod token;

use crate::cli::CaCommand;

/// Run one `portcullis ca` subcommand.
pub fn run_command(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, trust_domain } => {
            let created = init::init(&dir, &trust_domain)?;
            print!("{}", init::summary(&created));
        }
        CaCommand::Issue {
            dir,
            spiffe_id,
            dns,
            ttl,
            out,
        } => {
            let issued = issue::issue(&files::CaDir::new(dir), &spiffe_id, &dns, ttl.into(), &out)?;
            println!(
                "issued {spiffe_id} (serial {}, valid until {})\n  {}\n  {} (0600)\n  {}",
                issued.serial,
                issued.not_after,
                issued.cert.display(),
                issued.key.display(),
                issued.bundle.display()
            );
        }
        CaCommand::Token {
            dir,
            spiffe_id,
            ttl,
        } => {
            let token = token::mint(&files::CaDir::new(dir), &spiffe_id, ttl.into())?;
            println!("{token}");
        }
        CaCommand::Serve { config } => server::run(&config)?,
        CaCommand::Revoke { dir, serial } => {
            match revocation::revoke(&files::CaDir::new(dir), &serial)? {
                revocation::Revoked::Added(serial) => println!(
                    "revoked {serial}; a running CA lists it in its CRL within a minute \
                     (at once on the next GET {})",
                    api::CRL_PATH
                ),
                revocation::Revoked::AlreadyRevoked(serial) => {
                    println!("{serial} was already revoked; nothing changed")
                }
            }
        }
    }
    Ok(())
}

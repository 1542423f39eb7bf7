//! The internal CA (`portcullis ca ...`): creates a root and intermediate,
//! issues offline, mints bootstrap tokens, serves the signing API, revokes.
//!
//! The CA decides a certificate's identity from the caller's credential
//! (a bootstrap token, or the caller's current certificate on renewal),
//! never from what the CSR asks for.

pub mod api;

use crate::cli::CaCommand;

/// Run one `portcullis ca` subcommand.
pub fn run_command(command: CaCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet: {command:?}")
}

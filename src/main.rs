//! The `portcullis` binary: parse the command line, dispatch into the library.

use std::process::ExitCode;

use clap::Parser;

use portcullis::cli::{AuthzCommand, CertCommand, Cli, Command};
use portcullis::runtime;

fn main() -> ExitCode {
    let cli = Cli::parse();
    runtime::logging::init(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Run { config, ready_file } => block_on(runtime::run(config, ready_file)),
        Command::Dev {
            forward,
            listen,
            admin,
            outbound,
            outbound_listen,
            dir,
        } => block_on(portcullis::dev::run(portcullis::dev::DevOptions {
            forward,
            listen,
            admin,
            outbound,
            outbound_listen,
            dir: dir.unwrap_or_else(portcullis::dev::default_dir),
        })),
        Command::Check { config, no_files } => {
            match portcullis::config::load(&config).and_then(|c| {
                if no_files {
                    Ok(())
                } else {
                    runtime::prepare(c, &config).map(|_| ())
                }
            }) {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprint!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ca { command } => match portcullis::ca::run_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Authz {
            command:
                AuthzCommand::Explain {
                    config,
                    listener,
                    at,
                    json,
                    path,
                    method,
                    cert,
                },
        } => {
            let request = portcullis::authz::explain::ExplainRequest {
                config,
                listener,
                at,
                cert,
                path,
                method,
            };
            match portcullis::authz::explain::explain(&request) {
                Ok(explanation) => {
                    if json {
                        println!("{}", explanation.to_json());
                    } else {
                        print!("{}", explanation.to_text());
                    }
                    ExitCode::from(if explanation.allowed() { 0 } else { 1 })
                }
                Err(e) => {
                    eprint!("error: {e}");
                    if !e.to_string().ends_with('\n') {
                        eprintln!();
                    }
                    ExitCode::from(2)
                }
            }
        }
        Command::Authz {
            command:
                AuthzCommand::Suggest {
                    from,
                    from_log,
                    listener,
                    generalize,
                },
        } => {
            use portcullis::authz::suggest::{suggest, Source, SuggestRequest};
            let source = match (from, from_log) {
                (_, Some(log)) => Source::Log(log),
                (Some(from), None) if from.contains("://") => Source::Peers(from),
                (Some(from), None) => Source::PeersFile(from.into()),
                (None, None) => {
                    eprintln!("error: give --from or --from-log");
                    return ExitCode::from(2);
                }
            };
            let request = SuggestRequest {
                source,
                listener,
                generalize,
            };
            match suggest(&request) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Cert {
            command: CertCommand::Inspect { file, json },
        } => match portcullis::inspect::inspect_file(&file) {
            Ok(summaries) if json => match serde_json::to_string_pretty(&summaries) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Ok(summaries) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                print!("{}", portcullis::inspect::render_text(&summaries, now));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Run a long-lived command on a multi-threaded runtime; errors go to the
/// log and to stderr with their whole context chain.
fn block_on(task: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `dingtalk-relay` binary: parses the command line and hands over to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dingtalk_relay::cli::{self, Rendered};
use dingtalk_relay::config::{ConfigError, Mode, Settings};
use dingtalk_relay::startup::Application;
use dingtalk_relay::telemetry;
use tokio_util::sync::CancellationToken;

/// Turns CI job results and standup updates into DingTalk 日志 (work reports).
#[derive(Parser)]
#[command(name = "dingtalk-relay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Configuration file (default: config/default.yaml, then config/local.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Use the built-in DingTalk stand-in: no credentials, no network.
        #[arg(long)]
        sandbox: bool,
    },
    /// Validate the configuration and every template; exit 1 naming each bad key.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also resolve templates against DingTalk.
        #[arg(long)]
        online: bool,
        /// Check as `serve --sandbox` would (secrets may be absent; templates checked against
        /// the sandbox's 日报).
        #[arg(long)]
        sandbox: bool,
        /// Print the effective configuration (defaults, file, environment) with secrets
        /// redacted, instead of checking it.
        #[arg(long, conflicts_with_all = ["online", "sandbox"])]
        print: bool,
    },
    /// Print the create_report_param a webhook would produce (nothing is sent).
    Render {
        /// Route name.
        #[arg(long)]
        route: String,
        /// File holding the webhook body (`-` for standard input); with --digest, give it once
        /// per webhook of the period, in order.
        #[arg(long, required = true)]
        body: Vec<PathBuf>,
        /// The route is a digest route: print the digest the bodies would make if it were due
        /// now.
        #[arg(long)]
        digest: bool,
        /// A request header, e.g. -H 'X-GitHub-Event: workflow_run'.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Resolve the template against DingTalk (fetches a token).
        #[arg(long)]
        online: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(run(cli.command))
}

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Fails with `e`; several configuration problems go one per line, each naming its key path
/// (or environment variable).
fn fail_with(e: &anyhow::Error) -> ExitCode {
    let (headline, lines): (String, Vec<String>) =
        if let Some(problems) = e.downcast_ref::<cli::Problems>() {
            (problems.headline.clone(), problems.lines.clone())
        } else if let Some(ConfigError::Invalid(issues)) = e.downcast_ref::<ConfigError>() {
            (
                "configuration is invalid".to_owned(),
                issues.iter().map(ToString::to_string).collect(),
            )
        } else {
            (String::new(), Vec::new())
        };
    if lines.len() > 1 {
        fail(&format!(
            "{headline} ({} problems):\n  {}",
            lines.len(),
            lines.join("\n  ")
        ))
    } else {
        fail(&one_line(e))
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve { config, sandbox } => serve(config, sandbox).await,
        Command::CheckConfig {
            config,
            print: true,
            ..
        } => match cli::effective_config(config.as_deref()) {
            Ok(text) => print_out(&text),
            Err(e) => fail_with(&e.into()),
        },
        Command::CheckConfig {
            config,
            online,
            sandbox,
            print: false,
        } => match cli::check_config(config.as_deref(), online, sandbox).await {
            Ok(summary) => print_out(&summary),
            Err(e) => fail_with(&e),
        },
        Command::Render {
            route,
            body,
            digest,
            headers,
            config,
            online,
        } => {
            let mut bodies = Vec::with_capacity(body.len());
            for path in &body {
                let bytes = if path.as_os_str() == "-" {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
                } else {
                    std::fs::read(path)
                };
                match bytes {
                    Ok(b) => bodies.push(b),
                    Err(e) => return fail(&format!("--body {}: {e}", path.display())),
                }
            }
            match cli::render(config.as_deref(), &route, &bodies, &headers, online, digest).await {
                Ok(Rendered::Report(param) | Rendered::Digest(param)) => print_out(&pretty(&param)),
                Ok(Rendered::KeptForDigest(group)) => print_out(&pretty(&serde_json::json!({
                    "status": "digest",
                    "group": group,
                    "hint": "this route makes digests: add --digest to see the report"
                }))),
                Ok(Rendered::Ignored(reason)) => print_out(&pretty(
                    &serde_json::json!({"status": "ignored", "reason": reason}),
                )),
                Ok(Rendered::Rejected(status, body)) => {
                    print_out(&pretty(
                        &serde_json::json!({"rejected": status, "answer": body}),
                    ));
                    ExitCode::from(2)
                }
                Err(e) => fail(&one_line(&e)),
            }
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn print_out(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn serve(config: Option<PathBuf>, sandbox: bool) -> ExitCode {
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail_with(&e.into()),
    };
    telemetry::init(&settings.log);
    let mode = if sandbox {
        Mode::Sandbox
    } else {
        Mode::Production
    };
    let app = match Application::build(settings, mode).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %one_line(&e), "startup failed");
            return fail_with(&e);
        }
    };
    tracing::info!(
        port = app.port(),
        admin_port = app.admin_port(),
        sandbox,
        "dingtalk-relay listening"
    );
    let reloader = app.state().reloader.clone();
    reloader.set_config_file(config);
    let cancel = CancellationToken::new();
    tokio::spawn(shutdown_signal(cancel.clone()));
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(reloader));
    match app.run_until_stopped(cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&one_line(&e)),
    }
}

/// Re-reads the configuration on every SIGHUP.
#[cfg(unix)]
async fn reload_on_sighup(reloader: std::sync::Arc<dingtalk_relay::startup::Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use POST /-/reload");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged and counted by the reloader.
        let _ = reloader.reload().await;
    }
}

/// Cancels on Ctrl-C or SIGTERM.
async fn shutdown_signal(cancel: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested: no new webhooks; finishing work in flight");
    cancel.cancel();
}

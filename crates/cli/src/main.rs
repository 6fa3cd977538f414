//! `nimbus`: one binary for the whole cloud: `up` (all-in-one), `controller`, `agent`, and
//! the client commands of the REST API.

mod args;
mod commands;
mod context;
mod output;
mod progress;
mod up;

use args::{Cli, Command};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(dispatch(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing(cli: &Cli) {
    let server = matches!(
        cli.command,
        Command::Up(_) | Command::Controller(_) | Command::Agent(_)
    );
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Controller(args) => commands::server::controller(args).await,
        Command::Agent(args) => commands::server::agent(args).await,
        Command::Host(cmd) => commands::host::run(&cli.conn, out, cmd).await,
        Command::Flavor(cmd) => commands::flavor::run(&cli.conn, out, cmd).await,
        Command::Image(cmd) => commands::image::run(&cli.conn, out, cmd).await,
        Command::Instance(cmd) => commands::instance::run(&cli.conn, out, cmd).await,
        Command::Group(cmd) => commands::group::run(&cli.conn, out, cmd).await,
        Command::Operation(cmd) => commands::operation::run(&cli.conn, out, cmd).await,
    }
}

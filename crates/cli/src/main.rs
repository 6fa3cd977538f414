//! `nimbus`: one binary for the whole cloud: `up` (all-in-one), `controller`, `agent`, and
//! the client commands of the REST API.

mod args;
mod commands;
mod context;
mod duration;
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
    let server = matches!(cli.command, Command::Up(_) | Command::Agent(_))
        || matches!(&cli.command, Command::Controller(c) if c.action.is_none());
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::Usage(args) = cli.command {
        return commands::usage::run(&cli.conn, cli.output, args).await;
    }
    let out = cli.output.plain()?;
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Controller(cmd) => match cmd.action {
            Some(action) => commands::controller::run(&cli.conn, out, action).await,
            None => commands::server::controller(cmd.run).await,
        },
        Command::Agent(args) => commands::server::agent(args).await,
        Command::Host(cmd) => commands::host::run(&cli.conn, out, cmd).await,
        Command::Flavor(cmd) => commands::flavor::run(&cli.conn, out, cmd).await,
        Command::Image(cmd) => commands::image::run(&cli.conn, out, cmd).await,
        Command::Keypair(cmd) => commands::keypair::run(&cli.conn, out, cmd).await,
        Command::Instance(cmd) => commands::instance::run(&cli.conn, out, cmd).await,
        Command::Group(cmd) => commands::group::run(&cli.conn, out, cmd).await,
        Command::Network(cmd) => commands::network::run(&cli.conn, out, cmd).await,
        Command::Ip(cmd) => commands::floating_ip::run(&cli.conn, out, cmd).await,
        Command::PlacementGroup(cmd) => commands::placement_group::run(&cli.conn, out, cmd).await,
        Command::Secgroup(cmd) => commands::secgroup::run(&cli.conn, out, cmd).await,
        Command::Operation(cmd) => commands::operation::run(&cli.conn, out, cmd).await,
        Command::Snapshot(cmd) => commands::snapshot::run(&cli.conn, out, cmd).await,
        Command::Project(cmd) => commands::project::run(&cli.conn, out, cmd).await,
        Command::Token(cmd) => commands::token::run(&cli.conn, out, cmd).await,
        Command::Quota(cmd) => commands::quota::run(&cli.conn, out, cmd).await,
        Command::Audit(cmd) => commands::audit::run(&cli.conn, out, cmd).await,
        Command::Usage(args) => commands::usage::run(&cli.conn, cli.output, args).await,
    }
}

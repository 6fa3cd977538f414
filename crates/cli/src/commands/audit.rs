//! `nimbus audit ...`

use crate::args::{AuditCmd, Connection, Output};
use crate::{context, duration, output};
use anyhow::Context;
use nimbus_api::AuditEntry;

fn row(e: &AuditEntry) -> Vec<String> {
    vec![
        e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
        e.token_name
            .clone()
            .or_else(|| e.token_id.clone())
            .unwrap_or_else(|| "-".into()),
        output::opt(&e.project),
        e.action.clone(),
        output::opt(&e.target),
        e.status.to_string(),
        output::opt(&e.client_ip),
    ]
}

const HEADERS: &[&str] = &[
    "at", "who", "project", "action", "target", "status", "client",
];

/// `--since`: an RFC 3339 time, or a duration ago.
fn since(s: &str) -> anyhow::Result<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc).to_rfc3339());
    }
    let ago = duration::parse(s)
        .map_err(anyhow::Error::msg)
        .with_context(|| {
            format!("--since {s:?}: give an RFC 3339 time or a duration ago (1h, 7d)")
        })?;
    let ago = chrono::Duration::from_std(ago).context("--since is too long ago")?;
    Ok((chrono::Utc::now() - ago).to_rfc3339())
}

pub async fn run(conn: &Connection, out: Output, cmd: AuditCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        AuditCmd::List { since: s, limit } => {
            let since = s.as_deref().map(since).transpose()?;
            let entries = client.audit(since.as_deref(), limit).await?;
            output::list(out, &entries, HEADERS, row)
        }
    }
}

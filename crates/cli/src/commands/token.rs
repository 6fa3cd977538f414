//! `nimbus token ...`

use crate::args::{Connection, Output, RoleArg, TokenCmd};
use crate::{context, output};
use nimbus_api::{CreateToken, Role, TokenView};

fn row(t: &TokenView) -> Vec<String> {
    let time = |t: &Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    vec![
        t.id.clone(),
        output::opt(&t.name),
        t.project.clone(),
        t.role.to_string(),
        t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        time(&t.expires_at),
        time(&t.revoked_at),
    ]
}

const HEADERS: &[&str] = &[
    "id", "name", "project", "role", "created", "expires", "revoked",
];

fn role(r: RoleArg) -> Role {
    match r {
        RoleArg::Admin => Role::Admin,
        RoleArg::Member => Role::Member,
        RoleArg::Reader => Role::Reader,
        RoleArg::Metrics => Role::Metrics,
    }
}

pub async fn run(conn: &Connection, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        TokenCmd::Create {
            role: r,
            expires_in,
            name,
        } => {
            let created = client
                .create_token(&CreateToken {
                    role: role(r),
                    name,
                    expires_in_secs: expires_in.map(|d| d.as_secs()),
                })
                .await?;
            match out {
                Output::Json => output::json(&created),
                Output::Table => {
                    output::fields(&[
                        ("id", created.token.id.clone()),
                        ("project", created.token.project.clone()),
                        ("role", created.token.role.to_string()),
                        ("expires", row(&created.token)[5].clone()),
                        ("secret", created.secret.clone()),
                    ]);
                    eprintln!("store the secret now: it is not shown again");
                    Ok(())
                }
            }
        }
        TokenCmd::List => output::list(out, &client.list_tokens().await?, HEADERS, row),
        TokenCmd::Revoke { id } => {
            let t = client.revoke_token(&id).await?;
            println!("token {} revoked", t.id);
            Ok(())
        }
    }
}

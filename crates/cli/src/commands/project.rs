//! `nimbus project ...`

use crate::args::{Connection, Output, ProjectCmd};
use crate::{context, output};
use nimbus_api::{CreateProject, ProjectView};

fn row(p: &ProjectView) -> Vec<String> {
    vec![
        p.name.clone(),
        output::opt(&p.description),
        p.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
    ]
}

const HEADERS: &[&str] = &["name", "description", "created"];

pub async fn run(conn: &Connection, out: Output, cmd: ProjectCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        ProjectCmd::Create { name, description } => {
            let p = client
                .create_project(&CreateProject { name, description })
                .await?;
            output::list(out, &[p], HEADERS, row)
        }
        ProjectCmd::List => output::list(out, &client.list_projects().await?, HEADERS, row),
        ProjectCmd::Show { name } => {
            output::list(out, &[client.project(&name).await?], HEADERS, row)
        }
        ProjectCmd::Delete { name } => {
            client.delete_project(&name).await?;
            println!("project {name} deleted (its tokens are revoked)");
            Ok(())
        }
    }
}

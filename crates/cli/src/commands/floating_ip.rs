//! `nimbus ip ...`

use crate::args::{Connection, IpCmd, Output};
use crate::{context, output};
use nimbus_api::FloatingIpView;

fn row(f: &FloatingIpView) -> Vec<String> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    vec![f.address.clone(), dash(&f.instance), dash(&f.private_ip)]
}

const HEADERS: &[&str] = &["address", "instance", "private ip"];

pub async fn run(conn: &Connection, out: Output, cmd: IpCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    // One address: an object in JSON, a one-row table otherwise.
    let one = |f: FloatingIpView| match out {
        Output::Json => output::json(&f),
        _ => output::list(out, &[f], HEADERS, row),
    };
    match cmd {
        IpCmd::Allocate => one(client.allocate_floating_ip().await?),
        IpCmd::List => output::list(out, &client.list_floating_ips().await?, HEADERS, row),
        IpCmd::Attach { ip, instance } => one(client.attach_floating_ip(&ip, &instance).await?),
        IpCmd::Detach { ip } => one(client.detach_floating_ip(&ip).await?),
        IpCmd::Release { ip } => {
            client.release_floating_ip(&ip).await?;
            println!("floating IP {ip} released");
            Ok(())
        }
    }
}

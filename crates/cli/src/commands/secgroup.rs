//! `nimbus secgroup ...`

use crate::args::{Connection, Output, Proto, RuleAdd, RuleCmd, SecgroupCmd};
use crate::{context, output};
use anyhow::Context;
use nimbus_api::{CreateSecurityRule, Direction, Protocol, SecurityGroupView, SecurityRuleView};

const HEADERS: &[&str] = &["name", "rules", "members"];

fn row(g: &SecurityGroupView) -> Vec<String> {
    vec![
        g.name.clone(),
        g.rules.len().to_string(),
        g.members.to_string(),
    ]
}

const RULE_HEADERS: &[&str] = &["id", "direction", "proto", "ports", "remote"];

fn rule_row(r: &SecurityRuleView) -> Vec<String> {
    let ports = match (r.port_min, r.port_max) {
        (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
        (Some(a), _) => a.to_string(),
        _ => "all".into(),
    };
    let remote = match (&r.cidr, &r.group) {
        (Some(cidr), _) => cidr.clone(),
        (None, Some(group)) => format!("group {group}"),
        (None, None) => "-".into(),
    };
    vec![
        r.id.to_string(),
        r.direction.as_str().into(),
        r.protocol.as_str().into(),
        ports,
        remote,
    ]
}

fn show(out: Output, g: &SecurityGroupView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(g),
        Output::Table => {
            output::fields(&[
                ("name", g.name.clone()),
                ("project", g.project.clone()),
                ("members", g.members.to_string()),
                ("created", g.created_at.to_rfc3339()),
            ]);
            println!();
            output::list(out, &g.rules, RULE_HEADERS, rule_row)
        }
    }
}

/// `--port P` or `--port P-Q`.
fn parse_ports(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| -> anyhow::Result<u16> {
        p.trim()
            .parse()
            .with_context(|| format!("--port {s:?}: expected a port (1-65535) or a range P-Q"))
    };
    Ok((port(a)?, port(b)?))
}

fn rule_request(add: &RuleAdd) -> anyhow::Result<CreateSecurityRule> {
    let ports = add.port.as_deref().map(parse_ports).transpose()?;
    Ok(CreateSecurityRule {
        direction: if add.egress {
            Direction::Egress
        } else {
            Direction::Ingress
        },
        protocol: match add.proto {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
            Proto::Icmp => Protocol::Icmp,
            Proto::Any => Protocol::Any,
        },
        port_min: ports.map(|p| p.0),
        port_max: ports.map(|p| p.1),
        cidr: add.cidr.clone(),
        group: add.remote_group.clone(),
    })
}

pub async fn run(conn: &Connection, out: Output, cmd: SecgroupCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        SecgroupCmd::List => output::list(out, &client.list_secgroups().await?, HEADERS, row),
        SecgroupCmd::Create { name } => show(out, &client.create_secgroup(&name).await?),
        SecgroupCmd::Show { name } => show(out, &client.secgroup(&name).await?),
        SecgroupCmd::Delete { name } => {
            client.delete_secgroup(&name).await?;
            println!("security group {name} deleted");
            Ok(())
        }
        SecgroupCmd::Rule(RuleCmd::Add(add)) => {
            let rule = client
                .add_secgroup_rule(&add.group, &rule_request(&add)?)
                .await?;
            output::list(out, &[rule], RULE_HEADERS, rule_row)
        }
        SecgroupCmd::Rule(RuleCmd::Delete { group, rule_id }) => {
            client.delete_secgroup_rule(&group, rule_id).await?;
            println!("rule {rule_id} of security group {group} deleted");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_and_ranges_parse() {
        assert_eq!(super::parse_ports("22").expect("22"), (22, 22));
        assert_eq!(
            super::parse_ports("8000-8080").expect("range"),
            (8000, 8080)
        );
        assert!(super::parse_ports("http").is_err());
        assert!(super::parse_ports("70000").is_err());
    }
}

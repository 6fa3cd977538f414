//! Metadata-service steps of the gateway test: each guest reads its own instance's metadata
//! at 169.254.169.254 with an IMDSv2 token, from the default busybox guest over `nc` (its
//! `wget` cannot PUT): real guests, so the requests cross the tap and its port security as
//! any guest's do, which a client namespace on the bridge would not.

use nimbus_client::Client;

/// An HTTP answer: the status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `request` (an HTTP/1.0 request head, `\r\n` written as such) from guest `name` to
/// the metadata service, with the extra shell `setup` run first in the same command; `None`
/// when nothing answers within 5 s.
async fn send(client: &Client, name: &str, setup: &str, request: &str) -> Option<Answer> {
    let cmd = format!("{setup} printf '{request}\\r\\n' | nc -w 5 169.254.169.254 80 2>&1");
    let out = client
        .exec(name, &cmd)
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    let answer = parse(&out.output);
    if answer.is_none() || !setup.is_empty() {
        eprintln!("{name}: {request:?} after {setup:?}: {:?}", out.output);
    }
    answer
}

fn parse(text: &str) -> Option<Answer> {
    let text = text.replace('\r', "");
    let start = text.find("HTTP/1.")?;
    let text = &text[start..];
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\n\n")
        .map_or("", |(_, b)| b)
        .trim()
        .to_string();
    Some(Answer { status, body })
}

/// `PUT /latest/api/token` from guest `name`: the token, asserted to be granted.
pub async fn token(client: &Client, name: &str) -> String {
    let answer = send(
        client,
        name,
        "",
        "PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 300\\r\\n",
    )
    .await
    .unwrap_or_else(|| panic!("{name}: no answer at 169.254.169.254"));
    assert_eq!(answer.status, 200, "{name}: token refused: {answer:?}");
    answer.body
}

/// `GET path` from guest `name` with `token` (if any).
pub async fn get(client: &Client, name: &str, path: &str, token: Option<&str>) -> Answer {
    get_as(client, name, "", path, token)
        .await
        .unwrap_or_else(|| panic!("{name}: no answer at 169.254.169.254"))
}

/// `GET path` after `setup` (e.g. a forged source address); `None`: no answer.
pub async fn get_as(
    client: &Client,
    name: &str,
    setup: &str,
    path: &str,
    token: Option<&str>,
) -> Option<Answer> {
    let header = token
        .map(|t| format!("X-aws-ec2-metadata-token: {t}\\r\\n"))
        .unwrap_or_default();
    send(
        client,
        name,
        setup,
        &format!("GET {path} HTTP/1.0\\r\\n{header}"),
    )
    .await
}

/// A fresh token and `meta-data/<key>` with it, from guest `name`.
pub async fn read(client: &Client, name: &str, key: &str) -> Answer {
    let t = token(client, name).await;
    get(client, name, &format!("/latest/meta-data/{key}"), Some(&t)).await
}

/// Shell run before a request from a guest that forges `ip` as its source: the address on
/// eth0 and a route to the metadata address from it, through `gateway`.
pub fn forge_source(ip: &str, gateway: &str) -> String {
    format!(
        "ip addr add {ip}/32 dev eth0; \
         ip route replace 169.254.169.254/32 via {gateway} dev eth0 src {ip}; \
         ip route get 169.254.169.254;"
    )
}

/// Undoes [`forge_source`].
pub fn unforge(ip: &str) -> String {
    format!("ip route del 169.254.169.254/32; ip addr del {ip}/32 dev eth0; echo done")
}

#[test]
fn answers_are_parsed_from_what_nc_printed() {
    let text = "HTTP/1.0 401 Unauthorized\r\ncontent-type: text/plain\r\n\r\nno\r\n";
    assert_eq!(
        parse(text),
        Some(Answer {
            status: 401,
            body: "no".into()
        })
    );
    assert_eq!(parse("nc: timed out"), None);
}

//! Enrolment of this host with a join token (see `nimbus_agent_api::enrol` for the
//! exchange): the key is made here and never leaves the host; the certificate and the CA
//! the controller answers are saved in the state dir and reused by every later start.

use anyhow::{bail, Context};
use nimbus_agent_api::enrol::{CA_PATH, ENROL_PATH};
use nimbus_agent_api::{AgentErrorBody, EnrolRequest, EnrolResponse};
use nimbus_pki::{HostCredentials, JoinToken};
use std::time::Duration;

/// Enrols host `name` (reached at `agent_url`) with the controller at `controller_url`.
pub async fn enrol(
    controller_url: &str,
    token: &str,
    name: &str,
    agent_url: &str,
    creds: &HostCredentials,
) -> anyhow::Result<()> {
    let base = controller_url.trim_end_matches('/');
    let token = JoinToken::parse(token)?;
    let ca_pem = fetch_pinned_ca(base, &token).await?;
    let tls = nimbus_pki::client_config(&ca_pem, None)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls)
        .build()?;
    let req = EnrolRequest {
        token: token.encode(),
        name: name.to_string(),
        csr_pem: creds.new_request(name)?,
        agent_url: agent_url.to_string(),
        sent_at: Some(chrono::Utc::now()),
    };
    let resp = http
        .post(format!("{base}{ENROL_PATH}"))
        .json(&req)
        .send()
        .await
        .with_context(|| format!("cannot reach the controller at {base} to enrol"))?;
    let status = resp.status();
    let body = resp.bytes().await.context("the enrolment answer was cut")?;
    if !status.is_success() {
        let message = serde_json::from_slice::<AgentErrorBody>(&body)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        tracing::error!(host = name, %status, reason = message, "enrolment refused by the controller");
        bail!("the controller refused to enrol host {name:?}: {message}");
    }
    let answer: EnrolResponse =
        serde_json::from_slice(&body).context("the enrolment answer is not an EnrolResponse")?;
    creds.save(&answer.cert_pem, &answer.ca_pem)?;
    tracing::info!(
        host = name,
        agent_url,
        "enrolled: certificate saved in the state dir"
    );
    Ok(())
}

/// The controller's CA certificate, accepted only when its SHA-256 is the one the join
/// token carries (the TLS of this first call cannot be checked yet: the pin does it).
async fn fetch_pinned_ca(base: &str, token: &JoinToken) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_certs(true)
        .build()?;
    let resp = http
        .get(format!("{base}{CA_PATH}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!("cannot fetch the CA certificate from the controller at {base}")
        })?;
    check_clock(base, resp.headers())?;
    let pem = resp.text().await?;
    let der = nimbus_pki::certs_from_pem(&pem)?;
    let got = nimbus_pki::fingerprint(&der[0]);
    if got != token.ca_fingerprint {
        tracing::error!(
            controller = base,
            presented = got,
            expected = token.ca_fingerprint,
            "enrolment refused: the controller's CA is not the join token's"
        );
        bail!(
            "the controller at {base} presents a CA (sha256 {got}) that is not the one of the \
             join token (sha256 {}): it is not this cloud's controller, or someone is in between",
            token.ca_fingerprint
        );
    }
    Ok(pem)
}

/// Refuses to enrol with a clock far off the controller's (its answer's `Date`): the
/// certificate it issues would look not yet valid, or expired, to one of the two.
fn check_clock(base: &str, headers: &reqwest::header::HeaderMap) -> anyhow::Result<()> {
    let Some(date) = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
    else {
        return Ok(());
    };
    let whom = format!("the controller at {base}");
    if let Some(reason) = nimbus_agent_api::clock_skew(chrono::Utc::now(), date.to_utc(), &whom) {
        tracing::error!(controller = base, reason, "enrolment refused");
        bail!("{reason}");
    }
    Ok(())
}

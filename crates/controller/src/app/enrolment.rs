//! Host identity: join tokens, enrolment (a host's CSR signed by the cloud CA, its name
//! bound to the certificate), the checks on every call an agent makes with its
//! certificate, and removal (revocation). See docs/security.md.

use super::hosts::url_host;
use crate::app::{App, AppError, Caller};
use chrono::Utc;
use nimbus_agent_api::{EnrolRequest, EnrolResponse, RegisterHost};
use nimbus_api::{validate_name, ErrorCode, JoinTokenView};
use nimbus_pki::{JoinToken, PeerIdentity, Role};
use nimbus_store::{JoinRefusal, RemoveRefusal};

/// How long a join token lives unless asked otherwise.
pub const DEFAULT_JOIN_TTL_SECS: u64 = 3600;
/// The longest a join token may live.
const MAX_JOIN_TTL_SECS: u64 = 7 * 24 * 3600;

fn forbidden(message: impl Into<String>) -> AppError {
    AppError::new(ErrorCode::Forbidden, message)
}

impl App {
    /// A new one-time join token (admin).
    pub async fn create_join_token(
        &self,
        caller: &Caller,
        expires_in_secs: Option<u64>,
    ) -> Result<JoinTokenView, AppError> {
        caller.require_admin()?;
        let ttl = expires_in_secs.unwrap_or(DEFAULT_JOIN_TTL_SECS);
        if ttl == 0 || ttl > MAX_JOIN_TTL_SECS {
            return Err(AppError::bad_request(format!(
                "a join token lives 1 s to {MAX_JOIN_TTL_SECS} s (7 days), not {ttl} s"
            )));
        }
        let token = JoinToken::generate(&self.tls().ca.fingerprint());
        let expires_at = Utc::now() + chrono::Duration::seconds(ttl as i64);
        self.store()
            .insert_join_token(&super::auth::hash_token(&token.secret), expires_at)
            .await?;
        tracing::info!(%expires_at, "join token created");
        Ok(JoinTokenView {
            token: token.encode(),
            expires_at,
            ca_fingerprint: token.ca_fingerprint,
        })
    }

    /// Enrols a host: checks the token (once, unexpired), the name (not enrolled yet) and
    /// the advertise URL, then signs the host's CSR for its name and address.
    pub async fn enrol_host(&self, req: &EnrolRequest) -> Result<EnrolResponse, AppError> {
        let refuse = |reason: String| {
            tracing::warn!(
                host = req.name,
                agent_url = req.agent_url,
                reason,
                "enrolment refused"
            );
            reason
        };
        let whom = format!("host {:?}", req.name);
        if let Some(reason) = req
            .sent_at
            .and_then(|sent| nimbus_agent_api::clock_skew(Utc::now(), sent, &whom))
        {
            return Err(AppError::bad_request(refuse(reason)));
        }
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(refuse(format!("invalid host name {:?}: {e}", req.name)))
        })?;
        let address =
            advertised_address(&req.agent_url).map_err(|e| AppError::bad_request(refuse(e)))?;
        let token = JoinToken::parse(&req.token)
            .map_err(|e| AppError::new(ErrorCode::Unauthorized, refuse(e.to_string())))?;
        let mut names = vec![address];
        if req.name.parse::<std::net::IpAddr>().is_err() {
            names.push(req.name.clone());
        }
        let issued = self
            .tls()
            .ca
            .sign_host(&req.csr_pem, &req.name, &names)
            .map_err(|e| AppError::bad_request(refuse(e.to_string())))?;
        let hash = super::auth::hash_token(&token.secret);
        match self
            .store()
            .enrol_host(
                &hash,
                &req.name,
                Utc::now(),
                &issued.serial,
                &issued.fingerprint,
            )
            .await?
        {
            Ok(_) => {
                tracing::info!(
                    host = req.name,
                    serial = issued.serial,
                    fingerprint = issued.fingerprint,
                    agent_url = req.agent_url,
                    "host enrolled"
                );
                Ok(EnrolResponse {
                    cert_pem: issued.cert_pem,
                    ca_pem: self.tls().ca.cert_pem().to_string(),
                })
            }
            Err(r) => {
                let code = match r {
                    JoinRefusal::NameTaken => ErrorCode::Conflict,
                    _ => ErrorCode::Unauthorized,
                };
                Err(AppError::new(code, refuse(r.reason().to_string())))
            }
        }
    }

    /// Checks the certificate an agent called with: a host's, not revoked, the one its name
    /// is bound to. A certificate of this CA the store has no binding for (a database
    /// restored beside enrolled hosts) is bound on first sight.
    pub async fn authenticate_host(&self, id: &PeerIdentity) -> Result<(), AppError> {
        let refuse = |reason: &str| {
            tracing::warn!(
                host = id.name,
                serial = id.serial,
                reason,
                "agent call refused"
            );
            AppError::new(ErrorCode::Unauthorized, reason.to_string())
        };
        if id.role != Role::Host {
            return Err(refuse("not a host certificate"));
        }
        if self.store().is_revoked(&id.serial).await? {
            return Err(refuse("this host's certificate was revoked (`nimbus host remove`); enrol it again with a new join token"));
        }
        match self.store().host_identity(&id.name).await? {
            Some(bound) if bound.serial == id.serial => Ok(()),
            Some(_) => Err(refuse("another certificate is bound to this host name")),
            None => {
                if self
                    .store()
                    .adopt_host_identity(&id.name, &id.serial, &id.fingerprint)
                    .await?
                {
                    tracing::warn!(host = id.name, serial = id.serial,
                        "a host certificate of this CA unknown to the store (restored database?): bound to its name");
                    return Ok(());
                }
                Err(refuse("another certificate is bound to this host name"))
            }
        }
    }

    /// A registration must name the certificate's host, and an agent URL whose address the
    /// certificate carries.
    pub fn check_registration(
        &self,
        id: &PeerIdentity,
        req: &RegisterHost,
    ) -> Result<(), AppError> {
        let refuse = |reason: String| {
            tracing::warn!(
                host = id.name,
                agent_url = req.agent_url,
                reason,
                "registration refused"
            );
            forbidden(reason)
        };
        if req.inventory.name != id.name {
            return Err(refuse(format!(
                "this certificate is host {:?}'s: it cannot register host {:?}",
                id.name, req.inventory.name
            )));
        }
        let address = advertised_address(&req.agent_url).map_err(refuse)?;
        if !id.names_address(&address) {
            return Err(refuse(format!(
                "the agent URL {} is not an address of this host's certificate ({}); \
                 re-enrol the host for its new address",
                req.agent_url,
                id.addresses.join(", ")
            )));
        }
        Ok(())
    }

    /// Removes a host and revokes its certificate (admin); refused while instances are on
    /// it.
    pub async fn remove_host(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        caller.require_admin()?;
        match self.store().remove_host(name).await? {
            Ok(()) => {
                tracing::info!(host = name, "host removed; its certificate is revoked");
                Ok(())
            }
            Err(RemoveRefusal::Unknown) => {
                Err(AppError::not_found(format!("host {name:?} not found")))
            }
            Err(RemoveRefusal::HasInstances) => Err(AppError::conflict(format!(
                "host {name:?} still has instances: move them first (`nimbus host evacuate {name}`)"
            ))),
        }
    }
}

/// The address of an agent URL, checked: `https`, a concrete address.
fn advertised_address(url: &str) -> Result<String, String> {
    let host = url_host(url).unwrap_or_default();
    if host.is_empty() || !url.starts_with("https://") {
        return Err(format!(
            "the agent URL {url:?} must look like https://ADDRESS:PORT (set --advertise-url)"
        ));
    }
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "the agent URL {url:?} names every address, which the controller cannot call back: \
             set --advertise-url to the address the controller reaches the agent at"
        ));
    }
    Ok(host)
}

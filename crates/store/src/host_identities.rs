//! Host identity: one-time join tokens, the certificate each host name is bound to, and the
//! revoked certificates (see docs/security.md).

use crate::{time, Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// The certificate a host name is bound to.
#[derive(Debug, Clone, PartialEq)]
pub struct HostIdentityRecord {
    pub name: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the certificate, lowercase hex.
    pub fingerprint: String,
    pub enrolled_at: DateTime<Utc>,
}

/// Why a join token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    Unknown,
    Expired,
    Used,
    /// The host name is already bound to a certificate.
    NameTaken,
}

impl JoinRefusal {
    /// A message for the user (and the logs).
    pub fn reason(self) -> &'static str {
        match self {
            JoinRefusal::Unknown => "the join token is not one this cloud issued",
            JoinRefusal::Expired => "the join token has expired: ask for a new one (`nimbus host join-token`)",
            JoinRefusal::Used => "the join token was already used: each token enrols one host",
            JoinRefusal::NameTaken => "a host of that name is already enrolled: pick another --name, or remove the old host first (`nimbus host remove NAME`)",
        }
    }
}

/// Why a host cannot be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveRefusal {
    Unknown,
    HasInstances,
}

fn identity_from_row(r: &sqlx::any::AnyRow) -> Result<HostIdentityRecord, StoreError> {
    Ok(HostIdentityRecord {
        name: r.try_get("name")?,
        serial: r.try_get("serial")?,
        fingerprint: r.try_get("fingerprint")?,
        enrolled_at: time::parse(&r.try_get::<String, _>("enrolled_at")?)?,
    })
}

impl Store {
    /// Stores a join token's hash, valid until `expires_at`.
    pub async fn insert_join_token(
        &self,
        hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(time::now())
        .bind(time::to_text(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enrols `name` with the token of hash `hash`, in one transaction: the token is used up
    /// and the name bound to the certificate (`serial`, `fingerprint`) only when both can
    /// be; otherwise nothing changes and the refusal says why (the certificate, already
    /// signed, is then never handed out).
    pub async fn enrol_host(
        &self,
        hash: &str,
        name: &str,
        now: DateTime<Utc>,
        serial: &str,
        fingerprint: &str,
    ) -> Result<Result<HostIdentityRecord, JoinRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let token =
            sqlx::query("SELECT expires_at, used_at FROM join_tokens WHERE token_hash = $1")
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(token) = token else {
            return Ok(Err(JoinRefusal::Unknown));
        };
        if token.try_get::<Option<String>, _>("used_at")?.is_some() {
            return Ok(Err(JoinRefusal::Used));
        }
        if time::parse(&token.try_get::<String, _>("expires_at")?)? <= now {
            return Ok(Err(JoinRefusal::Expired));
        }
        let taken = sqlx::query("SELECT name FROM host_identities WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Ok(Err(JoinRefusal::NameTaken));
        }
        // Conditional: a concurrent enrolment with the same token updates nothing here.
        let used = sqlx::query(
            "UPDATE join_tokens SET used_at = $1, used_by = $2 \
             WHERE token_hash = $3 AND used_at IS NULL",
        )
        .bind(time::to_text(now))
        .bind(name)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(Err(JoinRefusal::Used));
        }
        let inserted = sqlx::query(
            "INSERT INTO host_identities (name, serial, fingerprint, enrolled_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(serial)
        .bind(fingerprint)
        .bind(time::to_text(now))
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return match StoreError::unique_or(e, String::new) {
                StoreError::Conflict(_) => Ok(Err(JoinRefusal::NameTaken)),
                other => Err(other),
            };
        }
        tx.commit().await?;
        Ok(Ok(HostIdentityRecord {
            name: name.to_string(),
            serial: serial.to_string(),
            fingerprint: fingerprint.to_string(),
            enrolled_at: now,
        }))
    }

    /// The certificate `name` is bound to, if enrolled.
    pub async fn host_identity(
        &self,
        name: &str,
    ) -> Result<Option<HostIdentityRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM host_identities WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(identity_from_row).transpose()
    }

    /// Every enrolled host's certificate.
    pub async fn list_host_identities(&self) -> Result<Vec<HostIdentityRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM host_identities ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(identity_from_row).collect()
    }

    /// Binds `name` to a certificate of the CA the store has no record of (a database
    /// restored or recreated beside enrolled hosts); false when the name is bound already.
    pub async fn adopt_host_identity(
        &self,
        name: &str,
        serial: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO host_identities (name, serial, fingerprint, enrolled_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(serial)
        .bind(fingerprint)
        .bind(time::now())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// True when the certificate of `serial` was revoked.
    pub async fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT serial FROM revoked_certs WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Removes host `name` and revokes its certificate, in one transaction; refused while an
    /// instance is placed on it or a migration to or from it runs.
    pub async fn remove_host(&self, name: &str) -> Result<Result<(), RemoveRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let busy = sqlx::query(
            "SELECT 1 AS busy FROM instances WHERE host = $1 \
             UNION ALL SELECT 1 AS busy FROM migrations \
             WHERE (source = $2 OR target = $3) AND state = 'running'",
        )
        .bind(name)
        .bind(name)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if busy.is_some() {
            return Ok(Err(RemoveRefusal::HasInstances));
        }
        let identity = sqlx::query("SELECT serial FROM host_identities WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let host = sqlx::query("DELETE FROM hosts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if identity.is_none() && host.rows_affected() == 0 {
            return Ok(Err(RemoveRefusal::Unknown));
        }
        if let Some(row) = identity {
            let serial: String = row.try_get("serial")?;
            sqlx::query(
                "INSERT INTO revoked_certs (serial, host, revoked_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (serial) DO NOTHING",
            )
            .bind(&serial)
            .bind(name)
            .bind(time::now())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM host_identities WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::stores;
    use chrono::Duration;

    #[tokio::test]
    async fn a_join_token_enrols_one_host_once_before_it_expires() {
        for (s, _backing) in stores().await {
            let now = Utc::now();
            s.insert_join_token("h1", now + Duration::hours(1))
                .await
                .expect("token");
            s.insert_join_token("old", now - Duration::seconds(1))
                .await
                .expect("token");
            let enrol = |hash: &'static str, name: &'static str, serial: &'static str| {
                let s = s.clone();
                async move {
                    s.enrol_host(hash, name, now, serial, "fp")
                        .await
                        .expect("db")
                }
            };
            assert_eq!(
                enrol("nope", "host1", "01").await,
                Err(JoinRefusal::Unknown)
            );
            assert_eq!(enrol("old", "host1", "01").await, Err(JoinRefusal::Expired));
            let bound = enrol("h1", "host1", "01").await.expect("enrolled");
            assert_eq!(
                (bound.name.as_str(), bound.serial.as_str()),
                ("host1", "01")
            );
            assert_eq!(enrol("h1", "host2", "02").await, Err(JoinRefusal::Used));
            // A fresh token cannot take an enrolled name, and is not used up by the refusal.
            s.insert_join_token("h2", now + Duration::hours(1))
                .await
                .expect("token");
            assert_eq!(
                enrol("h2", "host1", "03").await,
                Err(JoinRefusal::NameTaken)
            );
            let stored = s.host_identity("host1").await.expect("db").expect("bound");
            assert_eq!(stored.serial, bound.serial);
            enrol("h2", "host2", "04")
                .await
                .expect("the token still works");
            // Removal revokes the serial and frees the name.
            assert!(!s.is_revoked("01").await.expect("db"));
            s.remove_host("host1").await.expect("db").expect("removed");
            assert!(s.is_revoked("01").await.expect("db"));
            assert_eq!(s.host_identity("host1").await.expect("db"), None);
            assert_eq!(
                s.remove_host("host1").await.expect("db"),
                Err(RemoveRefusal::Unknown)
            );
        }
    }
}

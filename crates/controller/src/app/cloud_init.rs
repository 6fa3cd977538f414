//! Cloud-init for uploaded images: the inputs a create names (keypair, user-data) are
//! checked and stored with the instance; the VM spec carries a NoCloud seed built from them
//! (see docs/cloud-init.md). Images registered by path (the default image) get none.

use crate::app::{App, AppError, Caller};
use base64::Engine as _;
use nimbus_agent_api::CloudInitSeed;
use nimbus_api::{CreateInstance, ImageView, MAX_USER_DATA_BYTES};
use nimbus_store::{InstanceRecord, InstanceSeed, StoreError};

/// Decodes base64 user-data and checks EC2's 16 KiB limit.
fn check_user_data(b64: &str) -> Result<String, AppError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine
        .decode(b64.trim())
        .map_err(|e| AppError::bad_request(format!("user_data is not base64: {e}")))?;
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(AppError::bad_request(format!(
            "user-data has {} bytes; at most {MAX_USER_DATA_BYTES} (16 KiB, as EC2) are accepted: \
             compress it (gzip) or have it fetch the rest",
            bytes.len()
        )));
    }
    Ok(engine.encode(bytes))
}

impl App {
    /// The seed inputs of a create: the keypair's public key (copied) and the user-data.
    /// Refused for images registered by path (they get no seed, so the key would be lost).
    pub(crate) async fn seed_inputs(
        &self,
        caller: &Caller,
        req: &CreateInstance,
        img: &ImageView,
    ) -> Result<InstanceSeed, AppError> {
        if img.digest.is_none() && (req.key_name.is_some() || req.user_data.is_some()) {
            return Err(AppError::bad_request(format!(
                "image {:?} is registered by path and boots without cloud-init; --key and \
                 --user-data-file apply to uploaded images (`nimbus image upload`)",
                img.name
            )));
        }
        let public_key = match &req.key_name {
            Some(name) => Some(
                self.store()
                    .get_keypair(name, &caller.scope())
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound { .. } => AppError::not_found(format!(
                            "keypair {name:?} not found; `nimbus keypair list` shows the project's keys"
                        )),
                        e => e.into(),
                    })?
                    .public_key,
            ),
            None => None,
        };
        Ok(InstanceSeed {
            key_name: req.key_name.clone(),
            public_key,
            user_data: req.user_data.as_deref().map(check_user_data).transpose()?,
        })
    }

    /// The NoCloud seed of an instance booting uploaded image `img`.
    pub(crate) async fn cloud_init_seed(
        &self,
        inst: &InstanceRecord,
        img: &ImageView,
    ) -> Result<Option<CloudInitSeed>, AppError> {
        if img.digest.is_none() {
            return Ok(None);
        }
        let seed = self.store().instance_seed(inst.id).await?;
        Ok(Some(CloudInitSeed {
            instance_id: inst.id.to_string(),
            hostname: inst.name.clone(),
            public_keys: seed.public_key.into_iter().collect(),
            user_data: seed.user_data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_is_base64_within_16_kib() {
        let engine = base64::engine::general_purpose::STANDARD;
        let ok = engine.encode(vec![b'x'; MAX_USER_DATA_BYTES]);
        assert_eq!(check_user_data(&ok).expect("at the limit"), ok);
        let over = engine.encode(vec![b'x'; MAX_USER_DATA_BYTES + 1]);
        let e = check_user_data(&over).expect_err("over");
        assert!(e.message.contains("16 KiB"), "{}", e.message);
        assert!(check_user_data("not base64!").is_err());
    }
}

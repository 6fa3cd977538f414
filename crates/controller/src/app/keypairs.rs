//! Keypairs: SSH public keys of a project, imported or created here (Ed25519, the private
//! key answered once and never stored), put into instances by cloud-init.

use crate::app::{App, AppError, Caller};
use nimbus_api::{validate_name, CreateKeypair, CreatedKeypair, KeypairView};
use nimbus_store::{Page, PageRequest};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

/// Longest public key line accepted (an RSA 16384-bit key is about 2.8 KiB).
const MAX_PUBLIC_KEY_BYTES: usize = 8 * 1024;

/// Parses one OpenSSH public key line; answers it re-encoded and its fingerprint.
fn parse_public_key(text: &str) -> Result<(String, String), AppError> {
    let line = text.trim();
    if line.len() > MAX_PUBLIC_KEY_BYTES || line.contains('\n') {
        return Err(AppError::bad_request(
            "a public key is one OpenSSH line (e.g. the content of ~/.ssh/id_ed25519.pub)",
        ));
    }
    let key = PublicKey::from_openssh(line).map_err(|e| {
        AppError::bad_request(format!(
            "not an SSH public key ({e}); pass an OpenSSH `.pub` file such as ~/.ssh/id_ed25519.pub"
        ))
    })?;
    let encoded = key
        .to_openssh()
        .map_err(|e| AppError::bad_request(format!("cannot encode the public key: {e}")))?;
    Ok((encoded, key.fingerprint(HashAlg::Sha256).to_string()))
}

impl App {
    /// Imports `req.public_key`, or creates an Ed25519 keypair and answers its private key.
    pub async fn create_keypair(
        &self,
        caller: &Caller,
        req: &CreateKeypair,
    ) -> Result<CreatedKeypair, AppError> {
        caller.require_write()?;
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid keypair name {:?}: {e}", req.name))
        })?;
        let (public, private) = match &req.public_key {
            Some(text) => (parse_public_key(text)?, None),
            None => {
                let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
                    .map_err(|e| AppError::internal(format!("cannot generate a key: {e}")))?;
                key.set_comment(&req.name);
                let pem = key
                    .to_openssh(LineEnding::LF)
                    .map_err(|e| AppError::internal(format!("cannot encode the key: {e}")))?;
                let public = key
                    .public_key()
                    .to_openssh()
                    .map_err(|e| AppError::internal(format!("cannot encode the key: {e}")))?;
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                ((public, fingerprint), Some(pem.to_string()))
            }
        };
        let keypair = self
            .store()
            .create_keypair(&caller.project, &req.name, &public.0, &public.1)
            .await?;
        Ok(CreatedKeypair {
            keypair,
            private_key: private,
        })
    }

    pub async fn list_keypairs(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<KeypairView>, AppError> {
        Ok(self
            .store()
            .list_keypairs_page(&caller.scope(), page)
            .await?)
    }

    pub async fn get_keypair(&self, caller: &Caller, name: &str) -> Result<KeypairView, AppError> {
        Ok(self.store().get_keypair(name, &caller.scope()).await?)
    }

    /// Deletes a keypair; instances created with it keep their key.
    pub async fn delete_keypair(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        caller.require_write()?;
        Ok(self.store().delete_keypair(name, &caller.scope()).await?)
    }
}

//! Baking an image from an instance: the agent flattens the stopped instance's disk (its
//! whole chain) into one self-contained qcow2 and streams it; the controller receives it
//! like an upload (hashed, inspected, stored by digest, inside the project's image quota).
//! Only stopped instances: the copy is then consistent, not merely crash-consistent.

use crate::app::{App, AppError, Caller};
use futures::TryStreamExt;
use nimbus_api::{validate_name, CreateImageFromInstance, ErrorCode, ImageView, InstanceState};
use nimbus_store::NewImage;

impl App {
    /// Creates image `name` from the stopped instance `req.instance`.
    pub async fn create_image_from_instance(
        &self,
        caller: &Caller,
        name: &str,
        req: &CreateImageFromInstance,
    ) -> Result<ImageView, AppError> {
        caller.require_write()?;
        if req.public {
            caller.require_admin()?;
        }
        validate_name(name)
            .map_err(|e| AppError::bad_request(format!("invalid image name {name:?}: {e}")))?;
        self.store()
            .check_image_name_free(&caller.project, name, req.public)
            .await?;
        let inst = self.find_instance(caller, &req.instance).await?;
        let (InstanceState::Stopped, Some(host)) = (inst.state, &inst.host) else {
            return Err(AppError::conflict(format!(
                "instance {} is {}: stop it first (`nimbus instance stop {}`); its disk is copied \
                 only while it is stopped",
                inst.name, inst.state, inst.name
            )));
        };
        let source = self
            .store()
            .get_image_in(&inst.image_project, &inst.image)
            .await?;
        let resp = self
            .agent_of(host)
            .await?
            .export_flattened_disk(inst.id)
            .await?;
        let length = resp.content_length().ok_or_else(|| {
            AppError::unavailable("the agent sent the disk without its length; retry")
        })?;
        self.store()
            .check_image_quota(&caller.project, length)
            .await?;
        let body = resp.bytes_stream().map_err(|e| e.to_string());
        let incoming = self.image_blobs().receive(body, length).await?;
        let path = incoming.path().to_path_buf();
        let found = tokio::task::spawn_blocking(move || nimbus_image::inspect_file(&path))
            .await
            .map_err(|e| AppError::internal(format!("image inspection panicked: {e}")))?
            .map_err(|e| {
                AppError::new(
                    ErrorCode::Internal,
                    format!("the baked disk is refused: {e}"),
                )
            })?;
        let new = NewImage {
            name: name.to_string(),
            project: caller.project.clone(),
            public: req.public,
            digest: incoming.digest.to_string(),
            format: found.format.as_str().to_string(),
            virtual_size: found.virtual_size,
            size_bytes: incoming.size,
            firmware: source.firmware,
            ready_marker: source.ready_marker.clone(),
        };
        tracing::info!(image = name, instance = %inst.name, digest = %new.digest,
            bytes = new.size_bytes, "image baked from an instance");
        self.keep_image(incoming, &new).await
    }
}

//! `GET /vms/{id}/disk/flattened`: the VM's disk as one self-contained qcow2 (its whole chain
//! flattened, no backing file), streamed; the controller bakes an image from it. Only a
//! stopped VM: its disk is then consistent (a running guest's would be crash-consistent at
//! best, which this does not offer yet).

use super::Path;
use crate::agent::Agent;
use crate::error::{Error, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use nimbus_agent_api::VmRunState;
use uuid::Uuid;

pub async fn export(State(agent): State<Agent>, Path(id): Path<Uuid>) -> Result<Response> {
    let vm = agent.vm(id)?;
    let state = vm.status().state;
    if state != VmRunState::Stopped {
        return Err(Error::Conflict(format!(
            "VM {id} is {state:?}: stop it first (its disk is copied only while it is stopped)"
        )));
    }
    let dir = vm.dir();
    let tmp = dir.dir().join("export.qcow2.tmp");
    let _ = std::fs::remove_file(&tmp);
    let converted = nimbus_qemu::img::convert_onto(&dir.top_disk(), &tmp, None).await;
    let opened = match converted {
        Ok(()) => tokio::fs::File::open(&tmp)
            .await
            .map_err(Error::io("open", &tmp)),
        Err(e) => Err(e.into()),
    };
    // Unlinked at once: the open file stays readable and nothing is left behind.
    let _ = std::fs::remove_file(&tmp);
    let file = opened?;
    let len = file
        .metadata()
        .await
        .map_err(Error::io("stat", &tmp))?
        .len();
    tracing::info!(instance_id = %id, bytes = len, "disk exported");
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

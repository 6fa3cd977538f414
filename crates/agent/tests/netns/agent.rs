//! A real agent in a host namespace of a [`super::Topology`], on a runtime of its own, and a
//! stand-in controller that answers its registrations with the cloud network.

use super::{in_netns, Topology};
use nimbus_agent::AgentConfig;
use nimbus_agent_api::{AgentClient, NetworkConfig, RegisterResponse};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

/// The agents' API token.
pub const TOKEN: &str = "test-token";

/// An agent running in a host namespace, on a runtime of its own.
pub struct HostAgent {
    pub client: AgentClient,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl HostAgent {
    /// Starts the agent of host `i` on `state_dir`, registering with `controller`.
    pub fn start(t: &Topology, i: u8, state_dir: PathBuf, controller: &str) -> Self {
        let ip = t.host_ip(i);
        let url = format!("http://{ip}:7701");
        let config = AgentConfig {
            advertise_url: url.clone(),
            controller_url: Some(controller.to_string()),
            ..AgentConfig::in_process(
                &format!("host{i}"),
                SocketAddr::new(ip, 7701),
                state_dir,
                TOKEN,
            )
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = in_netns(&t.host_ns(i), move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(nimbus_agent::run(config, async {
                let _ = stopped.await;
            }))
        });
        Self {
            client: AgentClient::new(&url, TOKEN),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until the agent answers.
    pub async fn wait_serving(&self) {
        for _ in 0..150 {
            if self.client.list_vms().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the agent does not answer");
    }

    /// Stops the agent; its VMs' QEMU processes run on.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let ran = tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join");
            ran.expect("agent thread").expect("agent ran");
        }
    }
}

/// Answers every registration with the cloud network: VNI `vni`, every host a peer.
pub async fn stand_in_controller(bind: SocketAddr, network: NetworkConfig) -> String {
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/v1/internal/hosts/register",
        axum::routing::post(move || {
            let answer = RegisterResponse {
                network: Some(network.clone()),
            };
            async move { axum::Json(answer) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

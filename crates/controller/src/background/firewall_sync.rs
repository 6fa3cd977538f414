//! Security-group rules pushed to hosts: every [`SYNC_INTERVAL`] each up host's desired rules
//! ([`App::host_firewall`], computed from the store) are compared with what was last sent to
//! its agent, and sent again when they differ, when the last send failed, or every
//! [`RESEND_EVERY`] passes (an agent restarted meanwhile gets them back). A rule change, a
//! membership change or a new instance reaches its hosts within one interval; an instance
//! migrating to a host has its rules there before it resumes (see `host_firewall`).
//!
//! Hosts without host networking (`nimbus up --no-netns`) answer that nothing is enforced;
//! that is not an error.

use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use nimbus_agent_api::HostFirewall;
use nimbus_api::HostState;
use std::collections::HashMap;
use std::time::Duration;

/// How often the desired rules are compared with what the hosts have.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Unchanged rules are sent again every this many passes.
const RESEND_EVERY: u32 = 60;

/// The push of rules as a background task: one controller at a time (two would race to
/// send their own reading of the rules), remembering what it sent to each host.
#[derive(Default)]
pub struct FirewallSync {
    /// Host name -> the rules last sent and how many passes ago.
    sent: HashMap<String, (HostFirewall, u32)>,
}

#[async_trait::async_trait]
impl Task for FirewallSync {
    const NAME: &'static str = "firewall_sync";
    const RUN: Run = Run::OneController;

    fn interval(&self, _: &App) -> Duration {
        SYNC_INTERVAL
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        Ok(pass(app, &mut self.sent).await?)
    }

    /// Another controller sent rules meanwhile: send every host its rules again.
    fn acquired(&mut self) {
        self.sent.clear();
    }
}

/// One pass over the up hosts.
async fn pass(
    app: &App,
    sent: &mut HashMap<String, (HostFirewall, u32)>,
) -> Result<(), crate::app::AppError> {
    for host in app.store().list_hosts().await? {
        if crate::app::hosts::liveness(&host) != HostState::Up {
            continue;
        }
        let desired = app.host_firewall(&host.name).await?;
        let stale = match sent.get_mut(&host.name) {
            Some((last, age)) if *last == desired && *age < RESEND_EVERY => {
                *age += 1;
                false
            }
            _ => true,
        };
        if !stale {
            continue;
        }
        match app.agent(&host.agent_url).set_firewall(&desired).await {
            Ok(applied) => {
                tracing::debug!(host = %host.name, ports = applied.ports, enforced = applied.enforced, "security-group rules sent");
                sent.insert(host.name.clone(), (desired, 0));
            }
            Err(e) => {
                // The agent keeps its old rules (or none: its ports are closed); try again.
                tracing::warn!(host = %host.name, error = %e, "cannot send security-group rules");
                sent.remove(&host.name);
            }
        }
    }
    Ok(())
}

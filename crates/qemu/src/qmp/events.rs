//! Typed QMP events.

use serde_json::Value;

/// QEMU's timestamp of an event (host wall clock when QEMU emitted it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl QmpTimestamp {
    /// Microseconds since the Unix epoch.
    pub fn as_micros(&self) -> i64 {
        self.seconds
            .saturating_mul(1_000_000)
            .saturating_add(self.microseconds)
    }
}

/// One event with its timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub timestamp: QmpTimestamp,
    pub kind: EventKind,
}

/// The events nimbus acts on; everything else is [`EventKind::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The VM's CPUs stopped.
    Stop,
    /// The VM's CPUs resumed.
    Resume,
    /// The machine shut down; `guest` is true when the guest asked for it.
    Shutdown { guest: bool, reason: String },
    /// The machine was reset; `guest` is true when the guest asked for it.
    Reset { guest: bool, reason: String },
    /// A power-button press was delivered (system_powerdown).
    Powerdown,
    /// Migration changed status (`setup`, `active`, `completed`, `failed`, ...).
    Migration { status: String },
    /// Any other event: name and data.
    Other { name: String, data: Value },
}

impl QmpEvent {
    /// Parses a QMP message if it is an event.
    pub fn from_json(msg: &Value) -> Option<Self> {
        let name = msg.get("event")?.as_str()?;
        let ts = msg.get("timestamp");
        let num = |k: &str| {
            ts.and_then(|t| t.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let timestamp = QmpTimestamp {
            seconds: num("seconds"),
            microseconds: num("microseconds"),
        };
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let guest = data.get("guest").and_then(Value::as_bool).unwrap_or(false);
        let text = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let kind = match name {
            "STOP" => EventKind::Stop,
            "RESUME" => EventKind::Resume,
            "SHUTDOWN" => EventKind::Shutdown {
                guest,
                reason: text("reason"),
            },
            "RESET" => EventKind::Reset {
                guest,
                reason: text("reason"),
            },
            "POWERDOWN" => EventKind::Powerdown,
            "MIGRATION" => EventKind::Migration {
                status: text("status"),
            },
            _ => EventKind::Other {
                name: name.to_string(),
                data,
            },
        };
        Some(QmpEvent { timestamp, kind })
    }

    /// QEMU's name of the event.
    pub fn name(&self) -> &str {
        match &self.kind {
            EventKind::Stop => "STOP",
            EventKind::Resume => "RESUME",
            EventKind::Shutdown { .. } => "SHUTDOWN",
            EventKind::Reset { .. } => "RESET",
            EventKind::Powerdown => "POWERDOWN",
            EventKind::Migration { .. } => "MIGRATION",
            EventKind::Other { name, .. } => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_known_events() {
        let ts = json!({"seconds": 1700000000, "microseconds": 250});
        let ev = QmpEvent::from_json(&json!({
            "event": "SHUTDOWN", "timestamp": ts,
            "data": {"guest": true, "reason": "guest-shutdown"}
        }))
        .expect("event");
        assert_eq!(ev.timestamp.as_micros(), 1_700_000_000_000_250);
        assert_eq!(
            ev.kind,
            EventKind::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        let mig = QmpEvent::from_json(&json!({
            "event": "MIGRATION", "timestamp": ts, "data": {"status": "completed"}
        }))
        .expect("event");
        assert_eq!(
            mig.kind,
            EventKind::Migration {
                status: "completed".into()
            }
        );
        assert_eq!(mig.name(), "MIGRATION");
    }

    #[test]
    fn unknown_events_keep_name_and_data() {
        let ev = QmpEvent::from_json(&json!({
            "event": "BLOCK_JOB_READY", "timestamp": {"seconds": 1, "microseconds": 2},
            "data": {"device": "disk0"}
        }))
        .expect("event");
        assert_eq!(ev.name(), "BLOCK_JOB_READY");
        assert!(matches!(ev.kind, EventKind::Other { ref data, .. } if data["device"] == "disk0"));
    }

    #[test]
    fn replies_are_not_events() {
        assert_eq!(QmpEvent::from_json(&json!({"return": {}, "id": 1})), None);
    }
}

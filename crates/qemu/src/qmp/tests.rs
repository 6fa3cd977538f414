//! Protocol tests against a fake QMP server over a socket pair (the subject is the framing:
//! greeting, capabilities, ids, reply routing, events, timeouts, disconnects).

use super::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}}, "capabilities": ["oob"]}}"#;

/// Serves a fake QMP monitor: answers each request with what `answer` returns (in order);
/// an answer of `[null]` closes the connection.
fn fake_server(
    stream: UnixStream,
    answer: fn(&Value) -> Vec<Value>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        if write
            .write_all(format!("{GREETING}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&line).expect("client sent JSON");
            let msgs = answer(&req);
            if msgs == [Value::Null] {
                return; // the fake QEMU closes the monitor
            }
            for msg in msgs {
                if write
                    .write_all(format!("{msg}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

async fn client(answer: fn(&Value) -> Vec<Value>) -> Qmp {
    let (a, b) = UnixStream::pair().expect("socketpair");
    fake_server(b, answer);
    let (r, w) = a.into_split();
    Qmp::handshake(r, w, Duration::from_secs(2))
        .await
        .expect("handshake")
}

fn ok(req: &Value, ret: Value) -> Value {
    json!({"return": ret, "id": req["id"]})
}

fn standard(req: &Value) -> Vec<Value> {
    match req["execute"].as_str().unwrap_or("") {
        "qmp_capabilities" => vec![ok(req, json!({}))],
        "query-status" => vec![
            json!({"event": "RESUME", "timestamp": {"seconds": 5, "microseconds": 6}}),
            ok(
                req,
                json!({"running": true, "status": "running", "singlestep": false}),
            ),
        ],
        "system_powerdown" => vec![
            ok(req, json!({})),
            json!({"event": "POWERDOWN", "timestamp": {"seconds": 7, "microseconds": 0}}),
        ],
        "query-migrate" => vec![ok(
            req,
            json!({"status": "active", "total-time": 1200,
                   "ram": {"transferred": 100, "remaining": 50, "total": 256, "mbps": 1.5}}),
        )],
        "migrate-set-capabilities" => {
            let caps = &req["arguments"]["capabilities"];
            assert_eq!(
                caps[0],
                json!({"capability": "auto-converge", "state": true})
            );
            vec![ok(req, json!({}))]
        }
        "migrate-set-parameters" => {
            assert_eq!(
                req["arguments"],
                json!({"downtime-limit": 300, "max-bandwidth": 1000})
            );
            vec![ok(req, json!({}))]
        }
        "quit" => vec![],
        "stuck" => vec![],
        _ => vec![
            json!({"error": {"class": "CommandNotFound", "desc": "no such command"}, "id": req["id"]}),
        ],
    }
}

#[tokio::test]
async fn typed_commands_and_events() {
    let qmp = client(standard).await;
    let mut events = qmp.events();
    let status = qmp.query_status().await.expect("query-status");
    assert_eq!(
        status,
        StatusInfo {
            running: true,
            status: "running".into()
        }
    );
    let ev = events.recv().await.expect("event");
    assert_eq!(ev.kind, EventKind::Resume);
    assert_eq!(
        ev.timestamp,
        QmpTimestamp {
            seconds: 5,
            microseconds: 6
        }
    );
    qmp.system_powerdown().await.expect("powerdown");
    assert_eq!(
        events.recv().await.expect("event").kind,
        EventKind::Powerdown
    );

    let info = qmp.query_migrate().await.expect("query-migrate");
    assert_eq!(info.status.as_deref(), Some("active"));
    assert_eq!(info.total_time, Some(1200));
    assert_eq!(info.ram.as_ref().map(|r| r.remaining), Some(50));
    qmp.migrate_set_capabilities(&[("auto-converge", true)])
        .await
        .expect("caps");
    let params = MigrateParameters {
        downtime_limit: Some(300),
        max_bandwidth: Some(1000),
        ..Default::default()
    };
    qmp.migrate_set_parameters(&params).await.expect("params");
}

#[tokio::test]
async fn errors_carry_command_class_and_desc() {
    let qmp = client(standard).await;
    let err = qmp
        .execute("frobnicate", Some(json!({"x": 1})))
        .await
        .expect_err("must fail");
    match err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "frobnicate");
            assert_eq!(class, "CommandNotFound");
            assert_eq!(desc, "no such command");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn replies_are_routed_by_id_even_out_of_order() {
    // Answers nothing to "first"; when "second" arrives, answers both, second's reply first.
    fn answer(req: &Value) -> Vec<Value> {
        match req["execute"].as_str().unwrap_or("") {
            "qmp_capabilities" => vec![ok(req, json!({}))],
            "first" => vec![],
            _ => {
                let id = req["id"].as_u64().unwrap_or(0);
                vec![
                    json!({"return": "second", "id": id}),
                    json!({"return": "first", "id": id - 1}),
                ]
            }
        }
    }
    let qmp = client(answer).await;
    let q1 = qmp.clone();
    let first = tokio::spawn(async move { q1.execute("first", None).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = qmp.execute("second", None).await.expect("second");
    assert_eq!(second, json!("second"));
    assert_eq!(first.await.expect("join").expect("first"), json!("first"));
}

#[tokio::test]
async fn timeout_then_next_command_still_works() {
    let qmp = client(standard).await;
    let err = qmp
        .execute_with_timeout("stuck", None, Duration::from_millis(100))
        .await
        .expect_err("must fail");
    assert!(
        matches!(err, QmpError::Timeout { ref command, .. } if command == "stuck"),
        "{err:?}"
    );
    assert!(qmp.query_status().await.is_ok());
}

#[tokio::test]
async fn disconnect_fails_waiting_callers_and_quit_succeeds() {
    fn answer(req: &Value) -> Vec<Value> {
        match req["execute"].as_str().unwrap_or("") {
            "qmp_capabilities" => vec![ok(req, json!({}))],
            _ => vec![Value::Null],
        }
    }
    let qmp = client(answer).await;
    assert!(qmp.quit().await.is_ok());
    tokio::time::timeout(Duration::from_secs(2), qmp.closed())
        .await
        .expect("closed");
    assert!(qmp.is_closed());
    assert!(matches!(
        qmp.query_status().await,
        Err(QmpError::Disconnected)
    ));
}

#[tokio::test]
async fn rejects_a_non_qmp_greeting() {
    let (a, b) = UnixStream::pair().expect("socketpair");
    tokio::spawn(async move {
        let mut b = b;
        let _ = b.write_all(b"{\"hello\": 1}\n").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let (r, w) = a.into_split();
    let err = Qmp::handshake(r, w, Duration::from_secs(1))
        .await
        .expect_err("must fail");
    assert!(matches!(err, QmpError::Handshake(_)), "{err:?}");
}

#[tokio::test]
async fn oob_is_negotiated_and_yank_runs_out_of_band_past_a_stuck_command() {
    // Enables oob only when asked to; never answers "stuck"; answers yank only as exec-oob.
    fn answer(req: &Value) -> Vec<Value> {
        if req["execute"] == "qmp_capabilities" {
            if req["arguments"]["enable"] == json!(["oob"]) {
                return vec![ok(req, json!({}))];
            }
            return vec![
                json!({"error": {"class": "GenericError", "desc": "oob expected"}, "id": req["id"]}),
            ];
        }
        if req["exec-oob"] == "yank"
            && req["arguments"]["instances"] == json!([{"type": "migration"}])
        {
            return vec![ok(req, json!({}))];
        }
        vec![]
    }
    let qmp = client(answer).await;
    let q = qmp.clone();
    let stuck = tokio::spawn(async move {
        q.execute_with_timeout("stuck", None, Duration::from_secs(5))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    qmp.yank(json!({"type": "migration"}), Duration::from_secs(1))
        .await
        .expect("yank answered while the in-band command hangs");
    stuck.abort();
}

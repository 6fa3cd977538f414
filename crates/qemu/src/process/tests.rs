//! Process tests with the real QEMU (firmware only, no guest: a fraction of a second each).

use super::*;
use crate::config::{Accel, MachineSection};

fn config(paths: &VmPaths) -> QemuConfig {
    let machine = MachineSection {
        name: "proc-test".into(),
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mib: 64,
    };
    QemuConfig::standard(machine, paths)
}

#[tokio::test]
async fn launch_adopt_and_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = VmPaths::new(dir.path());
    let mut qemu =
        QemuProcess::spawn(&crate::qemu_binary(), &config(&paths), &paths).expect("spawn");
    qemu.wait_for_qmp(Duration::from_secs(20))
        .await
        .expect("qmp up");
    assert!(qemu.is_alive());
    assert!(!qemu.is_adopted());

    let qmp = Qmp::connect(&paths.qmp_sock(), Duration::from_secs(5))
        .await
        .expect("qmp");
    assert!(qmp.query_status().await.expect("status").running);
    drop(qmp);

    let mut adopted = QemuProcess::adopt(&paths).expect("adopt");
    assert_eq!(adopted.pid(), qemu.pid());
    assert!(adopted.is_adopted() && adopted.is_alive());

    // The adopted handle ends it; the launching handle sees the exit (and reaps it).
    let info = adopted.kill(Duration::from_secs(5)).await.expect("kill");
    assert_eq!(
        info,
        ExitInfo {
            code: None,
            signal: None
        }
    );
    let own = tokio::time::timeout(Duration::from_secs(5), qemu.wait_exit())
        .await
        .expect("exit seen");
    assert!(own.code.is_some() || own.signal.is_some(), "{own:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(procfs::read_stat(qemu.pid()).is_none(), "no zombie remains");
    assert!(QemuProcess::adopt(&paths).is_none());
}

#[tokio::test]
async fn early_exit_carries_qemu_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = VmPaths::new(dir.path());
    let mut cfg = config(&paths);
    cfg.machine.memory_mib = 0; // QEMU refuses this
    cfg.incoming = Some("bogus-uri:".into());
    let mut qemu = QemuProcess::spawn(&crate::qemu_binary(), &cfg, &paths).expect("spawn");
    let err = qemu
        .wait_for_qmp(Duration::from_secs(20))
        .await
        .expect_err("must fail");
    match err {
        ProcessError::ExitedEarly { exit, log_tail } => {
            assert_eq!(exit.code, Some(1), "{exit}");
            assert!(log_tail.contains("qemu-system"), "{log_tail}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn adopt_ignores_foreign_pid_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = VmPaths::new(dir.path());
    assert!(QemuProcess::adopt(&paths).is_none(), "no pid file");
    std::fs::write(paths.pid_file(), format!("{}\n", std::process::id())).expect("write");
    assert!(
        QemuProcess::adopt(&paths).is_none(),
        "the test runner is not QEMU"
    );
    std::fs::write(paths.pid_file(), "garbage").expect("write");
    assert!(QemuProcess::adopt(&paths).is_none());
}

#[test]
fn log_tail_keeps_last_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qemu.log");
    let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, text).expect("write");
    let tail = log_tail(&path);
    assert!(
        tail.starts_with("line 30\n") && tail.ends_with("line 49"),
        "{tail}"
    );
    assert_eq!(log_tail(&dir.path().join("missing")), "");
}

//! The chunker's threads yield the CPU to the VMs.
//!
//! While QEMU writes a memory image, the agent cuts, hashes and compresses it on two threads
//! of its own. QEMU's migration thread is the snapshot's critical path, and QEMU's threads
//! sit in the VM's cgroup, which the scheduler weighs as one task against each of the agent's
//! threads at the agent's level (cgroup v1 `cpu.shares`, v2 `cpu.weight`, both 1024/100 per
//! vCPU against a task's 1024/100). On a host with two cores the chunker's two threads thus
//! took about two thirds of the CPU from QEMU and stretched its write, and with it the
//! snapshot. At nice 10 (a weight of 110 against QEMU's 1024) they run on what QEMU leaves,
//! and catch up on the image's last chunks once it is done; where cores are free nothing
//! changes.

/// The nice value of the chunker's threads.
const NICE: i32 = 10;

/// Lowers the calling thread's priority to [`NICE`]. Only for a thread that ends with its
/// work: raising it back needs a privilege. Failing only costs speed, so it is logged.
pub fn yield_to_vms() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
        tracing::debug!(error = %e, "cannot lower the chunker's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("own priority");
        let other = std::thread::spawn(|| {
            yield_to_vms();
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("priority")
        })
        .join()
        .expect("thread");
        if own <= NICE {
            assert_eq!(other, NICE, "the chunker's thread runs at nice {NICE}");
        }
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("own priority");
        assert_eq!(after, own, "the caller's priority must not change");
    }
}

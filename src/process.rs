//! Process groups of task commands: killed on timeout and shutdown, and, after a crash of
//! orch itself, found again and killed before the task is retried, so a retried attempt never
//! runs beside the one it replaces.

/// A process group that dies with this value: dropping it (timeout, shutdown) kills every
/// process in the group.
#[derive(Debug)]
pub struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    pub fn new(leader_pid: Option<u32>) -> ProcessGroup {
        ProcessGroup(leader_pid.and_then(|id| i32::try_from(id).ok()))
    }

    pub fn kill(&self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// When a process started, in clock ticks since boot (field 22 of `/proc/PID/stat`); with the
/// pid it identifies a process across pid reuse.
pub fn start_ticks(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it don't.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills what is left of a task's process group after its orch process died.
///
/// A pid is not reused while any process still has it as its group id, so signalling the group
/// reaches only the orphans, unless the leader's pid now names a different process (its start
/// time differs), in which case the group is long gone and nothing is signalled.
pub fn kill_orphaned_group(pgid: u32, leader_start_ticks: Option<i64>) {
    let Ok(group) = i32::try_from(pgid) else {
        return;
    };
    if let Some(now) = start_ticks(pgid)
        && Some(now) != leader_start_ticks
    {
        return;
    }
    kill_group(group);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_identify_this_process() {
        let me = std::process::id();
        let first = start_ticks(me).expect("our own /proc entry");
        assert_eq!(start_ticks(me), Some(first));
    }
}

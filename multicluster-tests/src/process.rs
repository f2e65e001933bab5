//! Child processes the harness owns (etcd, apiservers, controller managers, pods).
//!
//! Each runs in its own process group so a kill reaches anything it forked, logs to a
//! file in the harness directory, and is registered with the harness's [`Cleanup`]
//! so a signal handler can kill it even when no destructor runs. The children also
//! get `PR_SET_PDEATHSIG`, so they die with the test process if it is killed hard.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cleanup::Cleanup;
use crate::error::{Error, Result};

/// A running child; killed (with its process group) on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    cleanup: Cleanup,
}

impl Proc {
    /// Starts `cmd` in a new process group, stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        name: impl Into<String>,
        mut cmd: Command,
        log: &Path,
        cleanup: &Cleanup,
    ) -> Result<Self> {
        let name = name.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("opening log {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("cloning log {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(Error::io(format!("starting {name}")))?;
        cleanup.add_process_group(child.id());
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
            cleanup: cleanup.clone(),
        })
    }

    /// Starts `cmd` like [`spawn`](Self::spawn) for a tool outside any harness
    /// (a benchmark): its own clean-up record, so a SIGINT/SIGTERM handler still
    /// kills the child's process group when no destructor runs.
    pub fn spawn_alone(name: impl Into<String>, cmd: Command, log: &Path) -> Result<Self> {
        Self::spawn(name, cmd, log, &Cleanup::register())
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log tail if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: log_tail(&self.log),
            }),
            Err(e) => Err(Error::io(format!("polling {}", self.name))(e)),
        }
    }

    /// The last lines of this process's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Kills the whole process group and reaps the child.
    pub(crate) fn kill(&mut self) {
        let pid = self.child.id();
        // ESRCH only means the group is already gone.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        self.cleanup.remove_process_group(pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it exits, so a
/// test process killed with SIGKILL (where neither destructors nor signal handlers
/// run) still leaves no apiservers or pods behind. The spawning thread matters:
/// callers spawn from long-lived threads (the test thread or a runtime worker),
/// never from short-lived blocking-pool threads.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: `pre_exec` runs between fork and exec, where only async-signal-safe
    // calls are allowed; `prctl(PR_SET_PDEATHSIG)` is a single system call that
    // neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

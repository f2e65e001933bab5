//! What a harness must undo, and the process-wide signal handler that undoes it.
//!
//! Every harness records its process groups, network namespaces, root-namespace
//! links and directories in a [`Cleanup`] as it creates them. `Drop` runs it; so
//! does a SIGINT/SIGTERM handler (a dedicated thread) which then exits the process,
//! because destructors never run when a signal kills a process. Panics unwind and
//! reach `Drop`. Running a clean-up twice is harmless.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::procstat;

/// Shared record of one harness's resources.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cleanup(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    process_groups: BTreeSet<u32>,
    netns: Vec<String>,
    root_links: Vec<String>,
    dirs: Vec<PathBuf>,
}

/// How long a clean-up waits for the processes it killed to exit.
const EXIT_WAIT: Duration = Duration::from_secs(5);

static REGISTRY: Mutex<Vec<Weak<Mutex<State>>>> = Mutex::new(Vec::new());
static SIGNAL_THREAD: Once = Once::new();

impl Cleanup {
    /// A new record, reachable from the signal handler until dropped.
    pub(crate) fn register() -> Self {
        SIGNAL_THREAD.call_once(spawn_signal_thread);
        let cleanup = Self::default();
        let mut registry = lock(&REGISTRY);
        registry.retain(|w| w.strong_count() > 0);
        registry.push(Arc::downgrade(&cleanup.0));
        cleanup
    }

    pub(crate) fn add_process_group(&self, pgid: u32) {
        self.state().process_groups.insert(pgid);
    }

    pub(crate) fn remove_process_group(&self, pgid: u32) {
        self.state().process_groups.remove(&pgid);
    }

    pub(crate) fn add_netns(&self, name: &str) {
        self.state().netns.push(name.to_owned());
    }

    pub(crate) fn add_root_link(&self, name: &str) {
        self.state().root_links.push(name.to_owned());
    }

    pub(crate) fn add_dir(&self, dir: PathBuf) {
        self.state().dirs.push(dir);
    }

    /// Kills every recorded process group and waits (up to [`EXIT_WAIT`]) until
    /// their processes have exited, then deletes links, namespaces and
    /// directories. Namespaces go after processes: a process inside keeps one alive.
    pub(crate) fn run(&self) {
        let state = std::mem::take(&mut *self.state());
        for pgid in &state.process_groups {
            let _ = killpg(Pid::from_raw(*pgid as i32), Signal::SIGKILL);
        }
        // A killed process takes a moment to exit (an apiserver unmapping
        // gigabytes); whoever runs after a clean-up must not find it.
        let groups: Vec<u32> = state.process_groups.iter().copied().collect();
        let deadline = Instant::now() + EXIT_WAIT;
        while !procstat::running_in_groups(&groups).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for link in &state.root_links {
            quiet(&["link", "del", link]);
        }
        for ns in state.netns.iter().rev() {
            quiet(&["netns", "del", ns]);
        }
        for dir in &state.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }
}

/// Runs a clean-up when dropped unless disarmed: protects work in progress.
#[derive(Debug)]
pub(crate) struct CleanupGuard(Option<Cleanup>);

impl CleanupGuard {
    pub(crate) fn new(cleanup: &Cleanup) -> Self {
        Self(Some(cleanup.clone()))
    }

    /// The work finished; its owner now cleans up.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Some(cleanup) = self.0.take() {
            cleanup.run();
        }
    }
}

/// Runs `ip ARGS`, ignoring failure: clean-up deletes what may already be gone.
fn quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A poisoned lock only means another thread panicked mid-update; the data is still
/// the best record of what to clean up.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_all() {
    let live: Vec<_> = lock(&REGISTRY).iter().filter_map(Weak::upgrade).collect();
    for state in live {
        Cleanup(state).run();
    }
}

fn spawn_signal_thread() {
    let spawned = std::thread::Builder::new()
        .name("harness-signals".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let code = rt.block_on(wait_for_signal());
            if let Some(code) = code {
                eprintln!("meshlink harness: signal received, cleaning up");
                run_all();
                eprintln!("meshlink harness: clean-up done");
                std::process::exit(code);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no signal handler: clean-up runs only on drop");
    }
}

/// Waits for SIGINT or SIGTERM and returns the conventional exit code.
async fn wait_for_signal() -> Option<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok()?;
    let mut term = signal(SignalKind::terminate()).ok()?;
    tokio::select! {
        _ = int.recv() => Some(130),
        _ = term.recv() => Some(143),
    }
}

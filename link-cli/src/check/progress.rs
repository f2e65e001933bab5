//! What `check --wait` shows while it waits: on a terminal, a spinner line on
//! stderr redrawn in place (cleared when done); otherwise one plain line each time
//! the set of failing checks changes, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK: Duration = Duration::from_millis(100);

/// Progress of one `check --wait`.
pub struct Progress {
    tty: bool,
    deadline: Instant,
    frame: usize,
    last: Vec<String>,
    drawn: bool,
}

impl Progress {
    /// Spinner when stderr is a terminal, plain lines otherwise.
    pub fn new(deadline: Instant) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            deadline,
            frame: 0,
            last: Vec::new(),
            drawn: false,
        }
    }

    /// Shows that `failing` checks are being waited on, for about a second.
    pub async fn wait_a_second(&mut self, failing: &[&str]) {
        if !self.tty {
            if self.last != failing {
                eprintln!("waiting: {} check(s) failing", failing.len());
                self.last = failing.iter().map(|s| (*s).to_owned()).collect();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        for _ in 0..10 {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let line = spinner_line(self.frame, failing, left);
            let mut err = std::io::stderr().lock();
            // \r and erase-line redraw in place; a failed write only loses the spinner.
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
            self.frame = self.frame.wrapping_add(1);
            tokio::time::sleep(TICK).await;
        }
    }

    /// Clears the spinner line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// One spinner frame: `⠹ waiting for 2 failing check(s): a, b (41s left)`.
pub fn spinner_line(frame: usize, failing: &[&str], left: Duration) -> String {
    let spinner = FRAMES[frame % FRAMES.len()];
    format!(
        "{spinner} waiting for {} failing check(s): {} ({}s left)",
        failing.len(),
        failing.join(", "),
        left.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinner_frames_match_golden() {
        let failing = ["link east: gateway", "link east: mirror controller"];
        let lines: Vec<String> = (0..3)
            .map(|f| spinner_line(f, &failing, Duration::from_millis(41_900 - 1000 * f as u64)))
            .collect();
        crate::golden::check("check-spinner.txt", &(lines.join("\n") + "\n"));
    }
}

//! systemd integration: readiness, status and watchdog notifications (`Type=notify`,
//! `WatchdogSec=` in `deploy/fer-sensor.service`). Outside systemd (no `NOTIFY_SOCKET`) every
//! call does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, info};

/// Tells systemd the sensor is up, and keeps telling it the frame loop is alive: a loop that
/// wedges (a model that never returns, a driver call that blocks) stops the pings, and systemd
/// kills and restarts the service.
pub struct Watchdog {
    /// Ping at least this often: half of `WatchdogSec=`, as sd_watchdog_enabled(3) advises.
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them.
    pub fn from_env() -> Self {
        let every = interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        if let Some(every) = every {
            info!("systemd watchdog on: pinging every {every:?}");
        }
        Self {
            every,
            last: Instant::now(),
        }
    }

    /// READY=1 with a status line: the models are loaded and frames are about to flow.
    pub fn ready(&mut self, status: &str) {
        notify(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.last = Instant::now();
    }

    /// WATCHDOG=1 when half the watchdog interval has passed since the last ping.
    pub fn feed(&mut self) {
        if let Some(every) = self.every
            && self.last.elapsed() >= every
        {
            notify(&[NotifyState::Watchdog]);
            self.last = Instant::now();
        }
    }

    /// STATUS=…, shown by `systemctl status fer-sensor`.
    pub fn status(&self, line: &str) {
        notify(&[NotifyState::Status(line)]);
    }

    /// STOPPING=1: the loop is ending, pins are going idle.
    pub fn stopping(&self) {
        notify(&[NotifyState::Stopping]);
    }
}

/// Half the watchdog interval, if the watchdog is meant for this process: systemd names its main
/// process, which is fer-sensor itself or, in the unit's `sh -c 'rpicam-vid … | fer-sensor …'`
/// form (`NotifyAccess=all`), the shell that started it. (sd_notify's own check accepts only the
/// first.)
fn interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        let pid: u32 = pid.parse().ok()?;
        if pid != std::process::id() && pid != std::os::unix::process::parent_id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// A failed notification is not worth stopping the sensor for: systemd notices on its own.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_or_our_shells_and_pinged_at_half_its_interval() {
        let me = std::process::id().to_string();
        let parent = std::os::unix::process::parent_id().to_string();
        let half = Some(Duration::from_secs(15));
        assert_eq!(interval(Some("30000000"), None), half);
        assert_eq!(interval(Some("30000000"), Some(&me)), half);
        assert_eq!(interval(Some("30000000"), Some(&parent)), half);
        assert_eq!(
            interval(Some("30000000"), Some("1")),
            None,
            "another process's watchdog"
        );
        assert_eq!(interval(None, Some(&me)), None);
        assert_eq!(interval(Some("0"), None), None);
        assert_eq!(interval(Some("soon"), None), None);
    }
}

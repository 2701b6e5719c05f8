//! Threads' scheduler statistics (Linux), for the stop phase's report line.

/// A thread's scheduler statistics (Linux `schedstat`): time on a CPU and time runnable but
/// waiting for one. On a machine whose cores are busy with other work the second one says how
/// much of the downtime was the scheduler's, not the migration's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sched {
    /// On a CPU, ns.
    pub(crate) run_ns: u64,
    /// Runnable, waiting for a CPU, ns.
    pub(crate) wait_ns: u64,
}

impl Sched {
    /// Read `path` (`/proc/.../schedstat`); zero where it is missing.
    pub(crate) fn read(path: &std::path::Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut f = text
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0));
        Self {
            run_ns: f.next().unwrap_or(0),
            wait_ns: f.next().unwrap_or(0),
        }
    }

    /// The calling thread's.
    pub(crate) fn this_thread() -> Self {
        Self::read(std::path::Path::new("/proc/thread-self/schedstat"))
    }

    /// The calling thread's `schedstat` file by its process and thread ids, readable from other
    /// threads.
    pub(crate) fn this_thread_path() -> Option<std::path::PathBuf> {
        let ids = std::fs::read_link("/proc/thread-self").ok()?;
        Some(std::path::Path::new("/proc").join(ids).join("schedstat"))
    }

    pub(crate) fn add(self, o: Self) -> Self {
        Self {
            run_ns: self.run_ns + o.run_ns,
            wait_ns: self.wait_ns + o.wait_ns,
        }
    }

    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            run_ns: self.run_ns.saturating_sub(before.run_ns),
            wait_ns: self.wait_ns.saturating_sub(before.wait_ns),
        }
    }
}

//! Child processes under test: started with their output captured to a file, waited
//! for until ready, and stopped with SIGTERM or killed with SIGKILL.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, sending its stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log file");
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc { name: name.to_owned(), child: Some(child), log: log.to_owned() }
    }

    /// Waits until `GET url` answers 200, failing with the process log if it exits or
    /// takes longer than `timeout`.
    pub async fn wait_ready(&mut self, url: &str, timeout: Duration) {
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(url).timeout(Duration::from_millis(500)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({status}) before becoming ready:\n{}", self.name, self.log_tail());
            }
            if start.elapsed() > timeout {
                panic!("{} not ready at {url} after {timeout:?}:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The exit status, once the process has exited on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to clean up, as in a crash or OOM kill.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for exit (SIGKILL after). Returns the exit code.
    pub fn terminate(&mut self, grace: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

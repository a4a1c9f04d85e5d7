//! Child processes of tests, and what a test needs before it can do its work.
//!
//! Every process a test starts is held by a [`Proc`], which kills and reaps it when the test ends, however it
//! ends: a failed assertion unwinds through the drop. A test that cannot do its work fails with the reason and
//! how to fix it ([`require_root`], [`require_tool`]); tests that need root are also `#[ignore]`d, so a plain
//! `cargo test` reports them as ignored instead of running them, and the README's test command runs them.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Proc(pub Option<Child>);

impl Proc {
    /// Starts a command, failing the test when it cannot be started.
    pub fn spawn(command: &mut Command) -> Proc {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Proc(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .unwrap_or_else(|| panic!("the process was already taken"))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (`TERM`, `INT`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        signal(self.id(), name);
    }

    /// Waits for the process to exit by itself and collects what it wrote to its piped standard output and
    /// error (the command decides when it ends, with `--duration` or a signal).
    pub fn output(mut self) -> std::process::Output {
        self.0
            .take()
            .unwrap_or_else(|| panic!("the process was already taken"))
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for a child: {e}"))
    }

    /// Waits for the process to exit by itself, at most `limit`; its exit status.
    pub fn wait_for_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child()
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for a child: {e}"))
            {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not exit within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal to a process with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill -{name} {pid}: {e}"));
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Whether a process still exists (a zombie counts: it was not reaped).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process is still running: it exists and is not a zombie (an orphan's zombie waits for whichever
/// init adopted it, which the test does not control).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may itself hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether a program can be started at all (its exit status does not matter).
fn has(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Fails the test unless it runs as root with iproute2 (network namespaces, veth pairs, raw sockets).
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, veth pairs, AF_PACKET): run the README's test command as root"
    );
    require_tool("ip", "iproute2");
}

/// Fails the test unless `tool` can be run, naming the Debian package that has it.
pub fn require_tool(tool: &str, package: &str) {
    assert!(
        has(tool),
        "this test needs `{tool}`: apt-get install {package} (the README's test command installs it)"
    );
}

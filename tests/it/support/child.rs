//! A principal-reconciler process held at an exact instant: started with the test-only hook
//! `PRINCIPAL_RECONCILER_TEST_PAUSE=<phase>`, it announces `paused at <phase>` on stderr and waits
//! there until signalled (SIGINT/SIGTERM let it go on and stop cleanly; SIGKILL ends it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub struct Paused {
    pub child: Child,
    lines: Receiver<String>,
    pub stderr: Vec<String>,
}

/// Starts `principal-reconciler --config CONFIG --no-progress ARGS` and waits (up to two minutes)
/// until it is paused at `phase`.
pub fn spawn_paused(config: &Path, args: &[&str], phase: &str) -> Paused {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("principal-reconciler"))
        .arg("--config")
        .arg(config)
        .arg("--no-progress")
        .args(args)
        .env("PRINCIPAL_RECONCILER_TEST_PAUSE", phase)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn principal-reconciler");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut p = Paused {
        child,
        lines: rx,
        stderr: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match p.lines.recv_timeout(Duration::from_millis(50)) {
            Ok(l) => {
                let hit = l.contains(&format!("paused at {phase}"));
                p.stderr.push(l);
                if hit {
                    return p;
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = p.child.try_wait() {
                    panic!(
                        "{args:?} ended ({status}) before pausing at {phase}; stderr: {:?}",
                        p.stderr
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{args:?} did not pause at {phase} within two minutes; stderr: {:?}",
                    p.stderr
                );
            }
        }
    }
}

impl Paused {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: a crash at this very instant.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        assert!(status.code().is_none(), "killed, not exited: {status}");
    }

    /// Sends `sig` and waits for the exit: (exit code, stdout, stderr).
    pub fn signal(mut self, sig: i32) -> (Option<i32>, String, String) {
        // SAFETY: kill by the pid of our own child.
        unsafe { libc::kill(self.pid(), sig) };
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr.push(l);
        }
        (status.code(), out, self.stderr.join("\n"))
    }
}

/// Starts `apply` and SIGKILLs it as soon as the state database's `journal_table` (`journal`
/// or `pg_journal`) records a step done, or after `polls` polls of 2 ms: a crash mid-run.
pub fn kill_apply_after_first_step(
    config: &Path,
    state_db: &Path,
    journal_table: &str,
    polls: u32,
) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("principal-reconciler"))
        .arg("--config")
        .arg(config)
        .args(["--no-progress", "-q", "apply"])
        .spawn()
        .expect("spawn principal-reconciler apply");
    let sql = format!("SELECT COUNT(*) FROM {journal_table} WHERE state = 'done'");
    for _ in 0..polls {
        std::thread::sleep(Duration::from_millis(2));
        let done: i64 = rusqlite::Connection::open(state_db)
            .and_then(|c| c.query_row(&sql, [], |r| r.get(0)))
            .unwrap_or(0);
        if done > 0 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The next value of a xorshift generator: random instants the same in every run.
pub fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Starts `principal-reconciler --config CONFIG --no-progress -q COMMAND` and SIGKILLs it after
/// `delay`; true when the kill hit a running process (false: it had finished already).
pub fn kill_after(config: &Path, command: &str, delay: Duration) -> bool {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("principal-reconciler"))
        .arg("--config")
        .arg(config)
        .args(["--no-progress", "-q", command])
        .spawn()
        .expect("spawn principal-reconciler");
    std::thread::sleep(delay);
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap().code().is_none()
}

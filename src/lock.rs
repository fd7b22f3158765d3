//! One writer at a time: every command that writes (the store, the state folder, the reports,
//! the directory or the server's databases) holds an exclusive `flock(2)` for its whole run.
//!
//! - `<state>/lock`: a file in the state folder; the holder writes its pid, command line and start
//!   time into it, so a refused second run can say who holds it.
//! - the store root folder itself (a `flock` on the folder's descriptor, nothing written into the
//!   store), so two runs with different state folders on one store also exclude each other.
//! - a rehearsal's folder, the same way.
//!
//! A second writer is refused at once (exit 3). The kernel releases a `flock` when its holder's
//! process ends, however it ends (kill -9 included), so a crashed holder's lock is simply taken
//! over: nothing to clean up, no stale lock to break by hand.

use crate::error::{Error, Result};
use crate::state::{create_private_dir, now_rfc3339};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name in the state folder.
pub const LOCK_FILE: &str = "lock";

/// Held locks; released when dropped (or when the process ends).
#[derive(Debug, Default)]
pub struct RunLock {
    files: Vec<(PathBuf, File)>,
}

impl RunLock {
    /// The paths locked, for messages and tests.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }
}

/// The command line of this process, as the holder's record shows it.
fn command_line() -> String {
    let mut args = std::env::args();
    let _ = args.next();
    let rest: Vec<String> = args.collect();
    format!("principal-reconciler {}", rest.join(" "))
}

/// Takes the lock without waiting; `Ok(false)` when someone else holds it.
fn try_flock(f: &File) -> std::io::Result<bool> {
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

const ADVICE: &str = "wait for it to finish; if it is stuck, stop it (Ctrl-C, or kill its pid: an interrupted apply or rollback resumes where it stopped). Nothing was changed";

impl RunLock {
    /// Locks the state folder (creating it, mode 0700) and records this process as the holder.
    pub fn state(&mut self, state_dir: &Path) -> Result<()> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(LOCK_FILE);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io("cannot open the lock file", &path, e))?;
        if !try_flock(&f).map_err(|e| Error::io("cannot lock", &path, e))? {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let who = describe_holder(&holder);
            return Err(Error::runtime(format!(
                "another principal-reconciler run is using the state folder {}: {who}; {ADVICE}",
                state_dir.display()
            )));
        }
        let record = serde_json::json!({
            "pid": std::process::id(),
            "command": command_line(),
            "since": now_rfc3339(),
        });
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = writeln!(f, "{record}");
        self.files.push((path, f));
        Ok(())
    }

    /// Locks a folder itself (the store root, a rehearsal folder), writing nothing into it.
    /// A folder that does not exist is not locked (the command reports it).
    pub fn folder(&mut self, dir: &Path, what: &str) -> Result<()> {
        let Ok(f) = File::open(dir) else {
            return Ok(());
        };
        if !f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Ok(());
        }
        if !try_flock(&f).map_err(|e| Error::io("cannot lock", dir, e))? {
            let who = holder_of(&f)
                .map(|(pid, cmd)| format!("pid {pid} (`{cmd}`)"))
                .unwrap_or_else(|| "another process".to_string());
            return Err(Error::runtime(format!(
                "{what} {} is in use by another principal-reconciler run: {who} (with another state folder or configuration); {ADVICE}",
                dir.display()
            )));
        }
        self.files.push((dir.to_path_buf(), f));
        Ok(())
    }
}

/// `pid 123 (`principal-reconciler apply`), since 2024-…` from the holder's record.
fn describe_holder(record: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(record.trim()) {
        Ok(v) => {
            let pid = v["pid"].as_u64().unwrap_or(0);
            let alive = pid > 0 && process_alive(pid as i32);
            format!(
                "pid {pid} (`{}`), since {}{}",
                v["command"].as_str().unwrap_or("?"),
                v["since"].as_str().unwrap_or("?"),
                if alive {
                    ""
                } else {
                    " (its process is gone but its lock is still held: a child of it may hold it)"
                }
            )
        }
        Err(_) => "a process that has not yet said who it is".to_string(),
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Who holds a `flock` on this file (Linux: `/proc/locks`), with its command line.
#[allow(clippy::unnecessary_cast)] // major/minor are not u32 everywhere
fn holder_of(f: &File) -> Option<(u32, String)> {
    let m = f.metadata().ok()?;
    let dev = m.dev() as libc::dev_t;
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let ino = m.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let own = std::process::id();
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF"
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 6 || parts[1] != "FLOCK" {
            continue;
        }
        let Ok(pid) = parts[4].parse::<u32>() else {
            continue;
        };
        let id: Vec<&str> = parts[5].split(':').collect();
        if id.len() != 3 {
            continue;
        }
        let same = u32::from_str_radix(id[0], 16).ok() == Some(maj as u32)
            && u32::from_str_radix(id[1], 16).ok() == Some(min as u32)
            && id[2].parse::<u64>().ok() == Some(ino);
        if same && pid != own {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            return Some((pid, cmd));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_and_a_released_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut first = RunLock::default();
        first.state(&state).unwrap();
        first.folder(dir.path(), "the store").unwrap();
        // flock locks belong to the open file: a second open in this process conflicts too.
        let mut second = RunLock::default();
        let e = second.state(&state).unwrap_err();
        assert!(
            e.message.contains(&format!("pid {}", std::process::id())),
            "{}",
            e.message
        );
        assert!(e.message.contains("since"), "{}", e.message);
        assert_eq!(e.exit_status(), crate::error::ExitStatus::Runtime);
        let e = second.folder(dir.path(), "the store").unwrap_err();
        assert!(e.message.contains("the store"), "{}", e.message);
        drop(first);
        second.state(&state).unwrap();
        second.folder(dir.path(), "the store").unwrap();
    }
}

//! A microVM run's directory, `<state root>/vm/<id>/` (0700): the channel
//! socket, the generated /etc files, and `lock`, which the client holds
//! locked (`flock`) for as long as it runs and which records the client's
//! and the backend's pid and start time.
//!
//! A run directory whose lock nobody holds belongs to a client that is gone
//! (`kill -9`): [`sweep_stale_runs`] (called by `amphi gc`) kills its backend
//! if it is still there (it should not be: the backend gets
//! `PR_SET_PDEATHSIG`) and removes the directory.
//!
//! The directory is made under a temporary name (`.new-<id>`) and renamed
//! into place once its lock is held, so the sweep never sees a live run
//! without its lock.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A directory without a lock (a run of an older amphi, or one that died
/// while it was being made) is stale after this long.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);
const LOCK: &str = "lock";
const NEW_PREFIX: &str = ".new-";

/// A process, named so that a reused pid is not mistaken for it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot).
    pub start: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start: start_time(pid)?,
        })
    }

    /// The process still runs (and is not a zombie).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !is_zombie(self.pid)
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything.
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

fn start_time(pid: i32) -> Option<u64> {
    // After the name: state is field 3, starttime field 22.
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) == Some("Z"))
}

/// What the lock file records.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub client: Option<ProcId>,
    pub backend: Option<ProcId>,
}

/// A live run's directory: removed (under the lock) on drop.
pub struct RunDir {
    path: PathBuf,
    lock: File,
    record: Record,
}

fn flock(f: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock takes an fd (`f`, open for the call) and flags; no memory.
    if unsafe { libc::flock(f.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn mkdir_private(p: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(p)
}

impl RunDir {
    /// Makes `<state_root>/vm/<id>/` with its lock held. `vm/` itself may
    /// be removed once empty ([`remove_empty_root`]): it is made again if
    /// it went between the two steps.
    pub fn create(state_root: &Path, id: &str) -> Result<RunDir, String> {
        let vm = state_root.join("vm");
        let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        let make_vm = || match mkdir_private(&vm) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&vm)
                .map_err(|e| err(&vm, e)),
            Err(e) => Err(err(&vm, e)),
        };
        make_vm()?;
        let tmp = vm.join(format!("{NEW_PREFIX}{id}"));
        match mkdir_private(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                make_vm()?;
                mkdir_private(&tmp).map_err(|e| err(&tmp, e))?;
            }
            r => r.map_err(|e| err(&tmp, e))?,
        }
        let lock_path = tmp.join(LOCK);
        let made = (|| {
            let lock = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&lock_path)
                .map_err(|e| err(&lock_path, e))?;
            flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(|e| err(&lock_path, e))?;
            let path = vm.join(id);
            let mut d = RunDir {
                path: path.clone(),
                lock,
                record: Record {
                    client: ProcId::of(std::process::id() as i32),
                    backend: None,
                },
            };
            d.write_record()?;
            fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
            Ok(d)
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        made
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self) -> Result<(), String> {
        let j = serde_json::to_vec(&self.record).unwrap_or_default();
        let r = (|| {
            self.lock.set_len(0)?;
            self.lock.rewind()?;
            self.lock.write_all(&j)?;
            self.lock.sync_data()
        })();
        r.map_err(|e| format!("{}/{LOCK}: {e}", self.path.display()))
    }

    /// Records the backend's process, for a sweep after the client died.
    pub fn record_backend(&mut self, pid: i32) {
        self.record.backend = ProcId::of(pid);
        if let Err(e) = self.write_record() {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Serialize)]
pub struct Swept {
    /// Run directories removed.
    pub run_dirs: Vec<String>,
    /// Backend processes (pids) killed because their client was gone.
    pub backends_killed: Vec<i32>,
}

fn older_than(p: &Path, d: Duration) -> bool {
    fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= d)
}

/// Kills a backend whose client is gone, and waits (a little) until it is.
fn kill_orphan(p: ProcId) -> bool {
    if !p.alive() {
        return false;
    }
    // SAFETY: a signal to a process we identified by pid and start time.
    unsafe { libc::kill(p.pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Removes `<state_root>/vm/` if it is empty (after an OCI `delete`: the
/// OCI root then holds containers only). A run being made meanwhile makes
/// it again.
pub fn remove_empty_root(state_root: &Path) {
    let _ = fs::remove_dir(state_root.join("vm"));
}

/// Removes the run directories under `<state_root>/vm/` whose client is
/// gone, killing a backend that outlived its client. Live runs (lock held)
/// are left alone.
pub fn sweep_stale_runs(state_root: &Path) -> Result<Swept, String> {
    let vm = state_root.join("vm");
    let mut swept = Swept::default();
    let entries = match fs::read_dir(&vm) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(format!("{}: {e}", vm.display())),
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let lock_path = path.join(LOCK);
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path);
        let stale = match &lock {
            Ok(f) => match flock(f, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => false,
                Err(e) => return Err(format!("{}: {e}", lock_path.display())),
            },
            // Being made (`.new-`), or from an older amphi: stale once old.
            Err(_) => older_than(&path, UNLOCKED_GRACE),
        };
        if !stale || (name.starts_with(NEW_PREFIX) && !older_than(&path, UNLOCKED_GRACE)) {
            continue;
        }
        if let Ok(f) = &lock {
            let mut s = String::new();
            let _ = f.take(4096).read_to_string(&mut s);
            let rec: Record = serde_json::from_str(&s).unwrap_or_default();
            if let Some(b) = rec.backend {
                if kill_orphan(b) {
                    swept.backends_killed.push(b.pid);
                }
            }
        }
        // The jailed monitor's cgroup, named after the run.
        if let Err(e) = super::jail::remove_cgroup(&name) {
            tracing::warn!("{e}");
        }
        fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        swept.run_dirs.push(name);
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_run_is_kept_and_a_dead_one_swept() {
        let root = tempfile::tempdir().unwrap();
        let live = RunDir::create(root.path(), "live0123").unwrap();
        assert!(live.path().join(LOCK).is_file());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(live.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // A dead client: its lock is not held (a child process made it and
        // exited), and its "backend" (a real process) still runs.
        let mut backend = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let dead = root.path().join("vm/dead0123");
        fs::create_dir(&dead).unwrap();
        let rec = Record {
            client: Some(ProcId { pid: 1, start: 1 }),
            backend: ProcId::of(backend.id() as i32),
        };
        fs::write(dead.join(LOCK), serde_json::to_vec(&rec).unwrap()).unwrap();
        fs::write(dead.join("chan.sock"), b"").unwrap();

        // A record naming a process whose start time differs (a reused
        // pid) is not killed.
        let other = root.path().join("vm/other012");
        fs::create_dir(&other).unwrap();
        let me = ProcId::of(std::process::id() as i32).unwrap();
        let rec = Record {
            client: None,
            backend: Some(ProcId {
                pid: me.pid,
                start: me.start + 1,
            }),
        };
        fs::write(other.join(LOCK), serde_json::to_vec(&rec).unwrap()).unwrap();

        let swept = sweep_stale_runs(root.path()).unwrap();
        let mut dirs = swept.run_dirs.clone();
        dirs.sort();
        assert_eq!(dirs, ["dead0123", "other012"]);
        assert_eq!(swept.backends_killed, [backend.id() as i32]);
        let st = backend.wait().unwrap();
        assert!(!st.success());
        assert!(live.path().is_dir(), "the live run is left alone");
        assert!(!dead.exists() && !other.exists());
        drop(live);
        assert!(!root.path().join("vm/live0123").exists());
        assert!(sweep_stale_runs(root.path()).unwrap().run_dirs.is_empty());
    }

    #[test]
    fn a_fresh_unlocked_dir_is_left_for_a_while() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("vm/.new-abc")).unwrap();
        fs::create_dir_all(root.path().join("vm/oldstyle")).unwrap();
        assert!(sweep_stale_runs(root.path()).unwrap().run_dirs.is_empty());
        assert!(root.path().join("vm/oldstyle").is_dir());
    }
}

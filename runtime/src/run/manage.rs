//! docker-style management of `amphi run` containers: `ps`, `stop`, `rm`,
//! `logs`, and name resolution for the runtime commands.

use super::records::{self, Life, Record};
use super::RunError;
use crate::container::cgroups::Cgroup;
use crate::container::state::State;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The runtime id for `arg`: an OCI container id with state, or an
/// `amphi run` container's name, id or id prefix.
pub fn resolve_id(store_root: &Path, state_root: &Path, arg: &str) -> String {
    if State::dir(state_root, arg).join("state.json").exists() {
        return arg.to_string();
    }
    records::find(store_root, arg)
        .map(|r| r.id)
        .unwrap_or_else(|_| arg.to_string())
}

/// `amphi ps` (docker style).
pub fn ps(store_root: &Path, state_root: &Path, all: bool, quiet: bool) -> String {
    let mut rows = vec![[
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "ISOLATION",
        "PORTS",
        "NAMES",
    ]
    .map(String::from)];
    let mut ids = String::new();
    for r in records::list(store_root) {
        let running = matches!(
            r.life(state_root),
            Life::Up(_) | Life::VmUp { .. } | Life::Stale { running: Some(_) }
        );
        if !all && !running {
            continue;
        }
        let status = r.status(state_root);
        ids.push_str(&r.id[..12]);
        ids.push('\n');
        let mut cmd = r.command.join(" ");
        if cmd.len() > 30 {
            cmd.truncate(27);
            cmd.push_str("...");
        }
        rows.push([
            r.id[..12].to_string(),
            r.image.clone(),
            format!("{cmd:?}"),
            r.created[..19].replace('T', " "),
            status,
            r.isolation(),
            r.ports.join(", "),
            r.name.clone(),
        ]);
    }
    if quiet {
        return ids;
    }
    let w: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{v:<w$}", w = w[i]))
                .collect();
            cells.join("   ").trim_end().to_string() + "\n"
        })
        .collect()
}

fn wait_gone(st: &State, state_root: &Path, t: Duration) -> bool {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if !st.alive() && !State::dir(state_root, &st.id).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !st.alive()
}

/// `amphi stop`: the image's stop signal (default TERM), then KILL.
pub fn stop(
    store_root: &Path,
    state_root: &Path,
    arg: &str,
    secs: u64,
) -> Result<String, RunError> {
    let r = records::find(store_root, arg)?;
    let sig = crate::sys::signal::parse_signal(r.stop_signal.as_deref().unwrap_or("TERM"))
        .map_err(RunError::Failed)?;
    if let Life::VmUp { monitor, vmm } = r.life(state_root) {
        // The monitor forwards the signal to the workload in the guest.
        // SAFETY: signalling the container's monitor (checked by start time).
        unsafe { libc::kill(monitor.pid, sig) };
        if !wait_ended(monitor, Duration::from_secs(secs)) {
            kill_vm(store_root, &r, vmm);
            wait_ended(monitor, Duration::from_secs(10));
        }
        return Ok(r.name);
    }
    let Some(st) = r.running(state_root) else {
        return Ok(r.name);
    };
    // SAFETY: signalling the container's process.
    unsafe { libc::kill(st.pid, sig) };
    if !wait_gone(&st, state_root, Duration::from_secs(secs)) {
        // SAFETY: kill takes no pointers; the pid is the container's, as
        // above.
        unsafe { libc::kill(st.pid, libc::SIGKILL) };
        wait_gone(&st, state_root, Duration::from_secs(10));
    }
    Ok(r.name)
}

/// Waits up to `t` for a monitor to end; whether it has.
fn wait_ended(monitor: records::Proc, t: Duration) -> bool {
    let deadline = Instant::now() + t;
    while monitor.alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Kills a microVM container's VMM, after leaving the note that makes its
/// monitor record a SIGKILL (137) rather than a failed VM.
fn kill_vm(store_root: &Path, r: &Record, vmm: records::Proc) {
    let _ = std::fs::write(
        records::dir(store_root, &r.id).join(records::KILL_REQUESTED),
        b"",
    );
    if vmm.alive() {
        // SAFETY: killing the container's VMM (checked by start time).
        unsafe { libc::kill(vmm.pid, libc::SIGKILL) };
    }
}

/// `amphi kill` of a microVM container (by name or id): the signal goes to
/// the monitor, which forwards it to the workload in the guest; KILL, which
/// cannot be forwarded, kills the VMM (recorded as 137). None when `arg`
/// is no running microVM container.
pub fn kill_vm_container(
    store_root: &Path,
    state_root: &Path,
    arg: &str,
    signal: &str,
) -> Option<Result<(), RunError>> {
    let r = records::find(store_root, arg).ok()?;
    r.vm.as_ref()?;
    let Life::VmUp { monitor, vmm } = r.life(state_root) else {
        return Some(Err(RunError::Usage(format!(
            "container {} is not running",
            r.name
        ))));
    };
    Some(
        crate::sys::signal::parse_signal(signal)
            .map_err(RunError::Usage)
            .map(|sig| {
                if sig == libc::SIGKILL {
                    kill_vm(store_root, &r, vmm);
                } else {
                    // SAFETY: signalling the container's monitor.
                    unsafe { libc::kill(monitor.pid, sig) };
                }
            }),
    )
}

/// `amphi rm`: remove a stopped or stale container (with force, kill a
/// running one first): its record, writable layer, runtime state and every
/// cgroup it had.
pub fn rm(
    store_root: &Path,
    state_root: &Path,
    arg: &str,
    force: bool,
) -> Result<String, RunError> {
    let r: Record = records::find(store_root, arg)?;
    match r.life(state_root) {
        Life::Up(st) => {
            if !force {
                return Err(RunError::Usage(format!(
                    "container {} is running: stop it first or use rm -f",
                    r.name
                )));
            }
            kill_all(&st.cgroup, Some(&st));
            // Its monitor records the exit and cleans the runtime state.
            wait_gone(&st, state_root, Duration::from_secs(10));
        }
        Life::VmUp { monitor, vmm } => {
            if !force {
                return Err(RunError::Usage(format!(
                    "container {} is running: stop it first or use rm -f",
                    r.name
                )));
            }
            kill_vm(store_root, &r, vmm);
            wait_ended(monitor, Duration::from_secs(10));
        }
        Life::Created if !force => {
            return Err(RunError::Usage(format!(
                "container {} is being started: wait, or use rm -f",
                r.name
            )))
        }
        Life::Created => {
            // A microVM still booting: its VMM dies with its monitor.
            if let Some(m) = r.monitor.filter(|m| m.alive() && r.vm.is_some()) {
                // SAFETY: killing the container's monitor (checked by start time).
                unsafe { libc::kill(m.pid, libc::SIGKILL) };
                wait_ended(m, Duration::from_secs(10));
            }
        }
        Life::Exited | Life::Stale { .. } => {}
    }
    // A microVM's run directory is its monitor's to remove (`gc` sweeps
    // the ones a killed monitor left).
    if r.vm.is_none() {
        remove_leftovers(state_root, &r.id)?;
    }
    let d = records::dir(store_root, &r.id);
    crate::image::store::remove_path(&d)
        .map_err(|e| RunError::step(format_args!("removing {}", d.display()), e))?;
    Ok(r.name)
}

/// SIGKILLs the container's process and everything in its cgroup.
fn kill_all(cgroup: &Cgroup, st: Option<&State>) -> usize {
    let mut n = 0;
    // The init first: in its own pid namespace, its death takes the rest.
    if let Some(st) = st.filter(|s| s.alive()) {
        // SAFETY: signalling the container's process (checked by start time).
        unsafe { libc::kill(st.pid, libc::SIGKILL) };
        n += 1;
    }
    for p in cgroup.pids() {
        // SAFETY: killing the container's processes.
        unsafe { libc::kill(p, libc::SIGKILL) };
        n += 1;
    }
    n
}

/// Kills what is left of container `id` and removes its runtime state
/// and its cgroups (of the state, or amphi's default `amphi/<id>` when the
/// state is gone). Each failure names what could not be removed.
pub fn remove_leftovers(state_root: &Path, id: &str) -> Result<(), RunError> {
    let st = State::load(state_root, id).ok();
    let cgroup = match &st {
        Some(s) => s.cgroup.clone(),
        None => Cgroup::new(None, id).map_err(RunError::cause)?,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill_all(&cgroup, st.as_ref()) > 0 {
        if Instant::now() > deadline {
            return Err(RunError::Failed(format!(
                "container {id}: its processes survive SIGKILL (pids {:?})",
                cgroup.pids()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cgroup.remove().map_err(|e| {
        let dirs: Vec<String> = cgroup
            .dirs()
            .iter()
            .filter(|d| d.exists())
            .map(|d| d.display().to_string())
            .collect();
        RunError::step(
            format_args!("container {id}: removing its cgroups ({})", dirs.join(", ")),
            e,
        )
    })?;
    let d = State::dir(state_root, id);
    crate::image::store::remove_path(&d)
        .map_err(|e| RunError::step(format_args!("container {id}"), e))
}

/// What `amphi gc` did to containers.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcContainers {
    /// Stale containers removed (names).
    pub removed: Vec<String>,
    /// Containers that could not be removed, with the reason.
    pub failed: Vec<String>,
}

/// `amphi gc`, for containers: removes every stale container (one whose
/// client or monitor was killed before it ended: see [`records`]) with
/// its leftovers: processes, cgroups, runtime state, writable layer and
/// record. Also removes the runtime state a killed monitor left behind
/// after it had recorded the exit.
pub fn gc(store_root: &Path, state_root: &Path) -> GcContainers {
    let mut out = GcContainers::default();
    for r in records::list(store_root) {
        match r.life(state_root) {
            Life::Stale { .. } => {
                // A microVM's: its VMM died with its monitor; the run
                // directory is swept with the other stale runs.
                let leftovers = match r.vm {
                    Some(_) => Ok(()),
                    None => remove_leftovers(state_root, &r.id),
                };
                let res = leftovers.and_then(|()| {
                    let d = records::dir(store_root, &r.id);
                    crate::image::store::remove_path(&d).map_err(RunError::cause)
                });
                match res {
                    Ok(()) => out.removed.push(r.name),
                    Err(e) => out.failed.push(format!("{}: {e}", r.name)),
                }
            }
            Life::Exited
                if !r.monitor.is_some_and(|m| m.alive())
                    && State::dir(state_root, &r.id).exists() =>
            {
                if let Err(e) = remove_leftovers(state_root, &r.id) {
                    out.failed.push(format!("{}: {e}", r.name));
                }
            }
            _ => {}
        }
    }
    out
}

/// `amphi logs`: the output of a detached container.
pub fn logs(store_root: &Path, state_root: &Path, arg: &str, follow: bool) -> Result<(), RunError> {
    let r = records::find(store_root, arg)?;
    let p = records::dir(store_root, &r.id).join("log");
    let mut f = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(_) if !r.detached => {
            return Err(RunError::Usage(format!(
            "container {} ran in the foreground: its output went to the terminal, no log was kept",
            r.name
        )))
        }
        Err(e) => return Err(RunError::io(p.display(), e)),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| RunError::io("container log", e))?;
        if n > 0 {
            out.write_all(&buf[..n])
                .map_err(|e| RunError::io("container log", e))?;
            continue;
        }
        out.flush().map_err(|e| RunError::io("container log", e))?;
        let running = match r.life(state_root) {
            Life::Up(_) | Life::VmUp { .. } => true,
            Life::Created => r.vm.is_some(),
            _ => false,
        };
        if !follow || !running {
            // One last read after the container stopped.
            let _ = f.stream_position();
            let n = f.read(&mut buf).unwrap_or(0);
            out.write_all(&buf[..n])
                .map_err(|e| RunError::io("container log", e))?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

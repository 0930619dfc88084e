//! `amphi run -d` of a microVM container. The record comes first (its id,
//! `--name`, the guest kernel); then a monitor is forked, as for a native
//! detached run: its own session, the container's log as its stdio. The
//! monitor owns the VM (the backend dies with it), forwards the signals it
//! gets to the workload in the guest (`amphi stop`, `amphi kill`), records
//! the VMM's pid once the workload runs, then how the run ended: the exit
//! status, or the error (a guest panic comes with its console's tail) in
//! the log. The caller prints the id once the workload runs, or the error
//! if it never did (and then nothing is left).

use crate::dispatch::{ResolvedImage, VmPlan};
use crate::run::records::{self, Proc, Record};
use crate::run::{detach, RunError, RunRequest};
use crate::vm::VmOptions;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

/// Runs the microVM detached; the caller's exit status (0 once started).
pub fn run(
    req: RunRequest,
    resolved: ResolvedImage,
    vm: VmPlan,
    opts: VmOptions,
) -> Result<i32, RunError> {
    let store_root = req.store_root.clone();
    let record = crate::run::new_vm_record(&req, &resolved.config, vm.kernel.release())?;
    let dir = records::dir(&store_root, &record.id);
    let side = detach::fork_monitor(&dir.join("log")).inspect_err(|_| {
        let _ = crate::image::store::remove_path(&dir);
    })?;
    match side {
        detach::Side::Caller(rx) => {
            detach::wait_started(rx)?;
            println!("{}", record.id);
            Ok(0)
        }
        detach::Side::Monitor(tx) => {
            monitor(req, resolved, vm, opts, record, tx);
            Ok(0)
        }
    }
}

/// The monitor's part: runs the VM, records its VMM and its end.
fn monitor(
    req: RunRequest,
    resolved: ResolvedImage,
    vm: VmPlan,
    mut opts: VmOptions,
    mut record: Record,
    tx: OwnedFd,
) {
    let store_root = req.store_root.clone();
    let dir = records::dir(&store_root, &record.id);
    record.monitor = Some(Proc::current());
    if let Err(e) = record.save(&store_root) {
        detach::report(tx, Err(&e));
        let _ = crate::image::store::remove_path(&dir);
        return;
    }
    let record = Arc::new(Mutex::new(record));
    let report = Arc::new(Mutex::new(Some(tx)));
    let (started_tx, started_rx) = mpsc::channel::<u32>();
    opts.started = Some(started_tx);
    opts.exec = true;
    let oom = Arc::new(std::sync::atomic::AtomicBool::new(false));
    opts.oom_killed = Some(oom.clone());
    opts.id = Some(lock(&record).id.clone());
    let watcher = {
        let (record, report, store_root) = (record.clone(), report.clone(), store_root.clone());
        std::thread::spawn(move || {
            // The sender goes with the run: no pid means it never started.
            let Ok(pid) = started_rx.recv() else { return };
            let mut r = lock(&record);
            if let Some(v) = r.vm.as_mut() {
                v.vmm = Some(Proc {
                    pid: pid as i32,
                    start_time: crate::container::state::start_time(pid as i32).unwrap_or(0),
                });
            }
            let saved = r.save(&store_root);
            if let Some(tx) = lock(&report).take() {
                detach::report(tx, saved.as_ref().map(|_| ()));
            }
        })
    };
    let result = crate::vm::run(req, resolved, vm, opts);
    let _ = watcher.join();
    let never_started = lock(&report).is_some();
    let code = match &result {
        Ok(code) => *code,
        // `amphi stop`/`kill`/`rm -f` killed the VMM: a SIGKILL's status.
        Err(_) if dir.join(records::KILL_REQUESTED).exists() => 128 + libc::SIGKILL,
        Err(e) => {
            eprintln!("amphi: error: {e}");
            e.failure().exit_status()
        }
    };
    if never_started {
        // The caller reports the error; a run that never started leaves
        // nothing, and is gone before the caller hears of it (it may look
        // at once: `ps -a` must not show it).
        let _ = crate::image::store::remove_path(&dir);
        if let Some(tx) = lock(&report).take() {
            detach::report(tx, result.as_ref().map(|_| ()));
        }
        return;
    }
    let oom = oom.load(std::sync::atomic::Ordering::SeqCst);
    finish(&lock(&record), (code, oom), &store_root, &dir);
}

/// Records the end (or, with `--rm`, removes the container).
fn finish(record: &Record, (code, oom): (i32, bool), store_root: &Path, dir: &Path) {
    if record.rm {
        let _ = crate::image::store::remove_path(dir);
        return;
    }
    let mut r = record.clone();
    r.exit_code = Some(code);
    r.oom_killed = oom;
    r.finished = Some(crate::container::state::now_rfc3339());
    if let Err(e) = r.save(store_root) {
        eprintln!("amphi: error: recording the end of {}: {e}", r.name);
    }
    let _ = std::fs::remove_file(dir.join(records::KILL_REQUESTED));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

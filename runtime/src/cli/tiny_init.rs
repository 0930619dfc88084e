//! `amphi run --init`: amphi itself as the container's PID 1 (bind-mounted
//! read-only at /dev/.amphi-init). It starts the workload as its child,
//! forwards signals to it, reaps every orphan that the kernel re-parents to
//! PID 1, and exits with the workload's status.

fn sigset_all() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is a valid value; sigfillset writes only
    // the local set it is given.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut s);
        s
    }
}

/// Runs `args` under a reaping init; returns the exit status to use, or
/// the message for why the workload could not be started (status 125).
pub fn main(args: &[String]) -> Result<i32, String> {
    if args.is_empty() {
        return Err("amphi init: no command".into());
    }
    // Before the fork, so the child has nothing left to refuse.
    let cargs = crate::sys::cstr::args(args).map_err(|e| format!("amphi init: {e}"))?;
    let all = sigset_all();
    // SAFETY: sigset_t is a plain C bit set; all zeroes is the empty set.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: blocking signals in a single-threaded process.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old) };
    // SAFETY: single-threaded; the child only execs.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!(
            "amphi init: fork: {}",
            std::io::Error::last_os_error()
        ));
    }
    if child == 0 {
        // SAFETY: restoring the mask, then exec with valid C strings.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            // Own process group, so terminal signals reach the workload.
            libc::setpgid(0, 0);
        }
        let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: NULL-terminated argv of valid strings.
        unsafe { libc::execvp(argv[0], argv.as_ptr()) };
        let e = std::io::Error::last_os_error();
        // The forked child cannot return (that would run a second init):
        // it says why on its stderr, the workload's, and leaves.
        eprintln!("amphi init: exec {}: {e}", args[0]);
        // SAFETY: _exit takes an int and never returns; nothing of the parent's
        // state must be unwound or flushed in the forked child.
        unsafe {
            libc::_exit(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            })
        };
    }
    loop {
        // SAFETY: siginfo_t is a plain C struct; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for any blocked signal.
        let sig = unsafe { libc::sigwaitinfo(&all, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: forwarding to the workload.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        // Reap everything that is done; end with the workload.
        if let Some(status) = crate::sys::exit::reap_all(child) {
            return Ok(status);
        }
    }
}

//! `amphi-lab watch`: the bench's timer in level 1. Starts a VMM, times its
//! guest's first line, reads the VMM's memory use once the guest settled,
//! and stops it.

use crate::entry::{monotonic_now, FirstEntry, TRACEFS};
use crate::markers::Seen;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{kill_process, Pid, Signal};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What to run and watch for (`amphi-lab watch`'s arguments).
pub struct Watch {
    /// Starts the report line, e.g. "amphi run=2".
    pub label: String,
    /// The guest's first line, timed.
    pub marker: String,
    /// How long after the marker the memory is read.
    pub settle_ms: f64,
    /// A mapping at least this large is guest RAM.
    pub guest_kb: u64,
    /// Stop the command if the marker has not come by then.
    pub timeout_ms: f64,
    /// The command and its arguments.
    pub cmd: Vec<String>,
}

/// How long a stopped command has between SIGTERM and SIGKILL.
const KILL_AFTER_MS: f64 = 5000.0;

/// Sums over `/proc/PID/smaps` (kB): all mappings, and apart the guest
/// RAM's (the mappings of at least the guest's size).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss: u64,
    pub pss: u64,
    pub private_dirty: u64,
    pub anon: u64,
    pub guest_maps: u64,
    pub guest_rss: u64,
    pub guest_private_dirty: u64,
    pub guest_anon: u64,
}

/// The smaps of process `pid` and of its descendants, one after the
/// other: a jailed `amphi vmm` is a supervisor whose child (in its own pid
/// namespace) holds the VM, and both count.
fn tree_smaps(pid: u32) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The parent pid is the second field after the ")" that ends the name.
            let ppid = stat
                .rfind(')')
                .and_then(|at| stat[at + 1..].split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(parent) {
                if let Ok(more) = std::fs::read_to_string(format!("/proc/{p}/smaps")) {
                    text.push_str(&more);
                }
                parents.push(p);
            }
        }
    }
    Ok(text)
}

/// Adds up a smaps file. A line that does not start with a capital is a
/// mapping's header; the fields that follow it belong to that mapping.
pub fn parse_smaps(text: &str, guest_kb: u64) -> Mem {
    let mut m = Mem::default();
    let mut guest = false;
    for line in text.lines() {
        if !line.starts_with(|c: char| c.is_ascii_uppercase()) {
            guest = false;
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(kb) = rest
            .trim()
            .strip_suffix("kB")
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        match key {
            "Size" => {
                guest = kb >= guest_kb;
                m.guest_maps += u64::from(guest);
            }
            "Rss" => {
                m.rss += kb;
                m.guest_rss += if guest { kb } else { 0 };
            }
            "Pss" => m.pss += kb,
            "Private_Dirty" => {
                m.private_dirty += kb;
                m.guest_private_dirty += if guest { kb } else { 0 };
            }
            "Anonymous" => {
                m.anon += kb;
                m.guest_anon += if guest { kb } else { 0 };
            }
            _ => {}
        }
    }
    m
}

/// The report line (without its leading newline). `entry_ms`, when the
/// first guest entry was asked for: launch to it, if it came.
pub fn report(
    label: &str,
    init_ms: Option<f64>,
    entry_ms: Option<Option<f64>>,
    mem: Option<&Mem>,
    status: &str,
) -> String {
    let mut line = format!("AMPHI-L1-BENCH {label}");
    match init_ms {
        Some(ms) => {
            let _ = write!(line, " init-ms={ms:.1}");
        }
        None => line.push_str(" init-ms=none"),
    }
    match entry_ms {
        Some(Some(ms)) => {
            let _ = write!(line, " entry-ms={ms:.1}");
        }
        Some(None) => line.push_str(" entry-ms=none"),
        None => {}
    }
    if let Some(m) = mem {
        let _ = write!(
            line,
            " rss-kb={} pss-kb={} private-dirty-kb={} anon-kb={} guest-maps={} \
             guest-rss-kb={} guest-private-dirty-kb={} guest-anon-kb={}",
            m.rss,
            m.pss,
            m.private_dirty,
            m.anon,
            m.guest_maps,
            m.guest_rss,
            m.guest_private_dirty,
            m.guest_anon
        );
    }
    let _ = write!(line, " {status}");
    line
}

fn status_text(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit={code}"),
        (None, Some(signal)) => format!("signal={signal}"),
        (None, None) => "exit=none".into(),
    }
}

/// The variable that asks amphi vmm for its startup report.
const TIMING_ENV: &str = "AMPHI_VMM_TIMING";
/// The variable that asks for the time to the guest's first instruction
/// (see [`crate::entry`]).
const ENTRY_ENV: &str = "AMPHI_LAB_FIRST_ENTRY";

/// Now, as seconds since the epoch with microseconds (what amphi vmm takes
/// as the launch time in `AMPHI_VMM_TIMING`).
fn launch_time() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:.6}", now.as_secs_f64())
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Runs the watch; the exit status is 0 only if the marker came and the
/// memory was read.
pub fn run(w: &Watch) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = w.cmd.split_first() else {
        anyhow::bail!("watch: no command to run");
    };
    let first_entry = match std::env::var_os(ENTRY_ENV) {
        Some(_) => Some(FirstEntry::arm(std::path::Path::new(TRACEFS))?),
        None => None,
    };
    let t0 = Instant::now();
    let launch_mono = monotonic_now();
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::piped());
    // amphi vmm's startup report (AMPHI_VMM_TIMING) counts from a launch
    // time it is given: this one, so that it includes the exec.
    if std::env::var_os(TIMING_ENV).is_some() {
        command.env(TIMING_ENV, launch_time());
    }
    let spawned = command.spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // As a shell would: the command did not start, status 127.
            eprintln!("amphi-lab: exec {program}: {e}");
            println!("\n{}", report(&w.label, None, None, None, "exit=127"));
            return Ok(ExitCode::FAILURE);
        }
    };
    let (marked, mem) = follow(w, &mut child, t0)?;
    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => anyhow::bail!("waiting for {program}: {e}"),
        }
    };
    let init_ms = marked.map(|at| at.duration_since(t0).as_secs_f64() * 1e3);
    let entry_ms = match &first_entry {
        Some(fe) => Some(
            fe.read()?
                .map(|at| (at - launch_mono) * 1e3)
                .filter(|ms| *ms >= 0.0),
        ),
        None => None,
    };
    drop(first_entry);
    println!(
        "\n{}",
        report(
            &w.label,
            init_ms,
            entry_ms,
            mem.as_ref(),
            &status_text(&status)
        )
    );
    Ok(if marked.is_some() && mem.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Copies the child's stdout to ours until EOF, noting when the marker came,
/// reading the memory `settle_ms` later, and stopping the child after that
/// (or at the timeout without the marker).
fn follow(
    w: &Watch,
    child: &mut Child,
    t0: Instant,
) -> anyhow::Result<(Option<Instant>, Option<Mem>)> {
    let Some(mut pipe) = child.stdout.take() else {
        anyhow::bail!("watch: the command's stdout is not a pipe");
    };
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| anyhow::anyhow!("watch: pid {} out of range", child.id()))?;
    let smaps = format!("/proc/{pid}/smaps", pid = child.id());
    let mut seen = Seen::default();
    let mut marked: Option<Instant> = None;
    let mut mem: Option<Mem> = None;
    let mut smaps_failed = false;
    let mut killed: Option<f64> = None;
    let mut chunk = [0u8; 4096];
    let mut stdout = std::io::stdout();
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    loop {
        let now = ms_since(t0);
        if let (Some(at), None) = (marked, &mem) {
            if now >= at.duration_since(t0).as_secs_f64() * 1e3 + w.settle_ms {
                match tree_smaps(child.id()) {
                    Ok(text) => mem = Some(parse_smaps(&text, w.guest_kb)),
                    Err(e) if !smaps_failed => {
                        eprintln!("amphi-lab: reading {smaps} failed: {e}");
                        smaps_failed = true;
                    }
                    Err(_) => {}
                }
            }
        }
        if killed.is_none() && (mem.is_some() || (marked.is_none() && now >= w.timeout_ms)) {
            let _ = kill_process(pid, Signal::TERM);
            killed = Some(now);
        }
        if killed.is_some_and(|at| now >= at + KILL_AFTER_MS) {
            let _ = kill_process(pid, Signal::KILL);
        }
        let mut fds = [PollFd::new(&pipe, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => anyhow::bail!("watch: poll: {e}"),
        }
        let n = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let at = Instant::now();
        let _ = stdout.write_all(&chunk[..n]);
        let _ = stdout.flush();
        if marked.is_none() {
            seen.add(&chunk[..n]);
            if seen.find(w.marker.as_bytes()) {
                marked = Some(at);
            }
        }
    }
    Ok((marked, mem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SMAPS: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/qemu
Size:                328 kB
KernelPageSize:        4 kB
Rss:                 300 kB
Pss:                 150 kB
Pss_Dirty:             8 kB
Shared_Clean:        280 kB
Private_Dirty:        20 kB
Anonymous:            12 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               40000 kB
Pss:               40000 kB
Private_Dirty:     40000 kB
Anonymous:         40000 kB
VmFlags: rd wr mr mw me ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0   [vsyscall]
Size:                  4 kB
Rss:                   0 kB
";

    #[test]
    fn smaps_sums_and_the_guest_apart() {
        let m = parse_smaps(SMAPS, 256 * 1024);
        assert_eq!(
            m,
            Mem {
                rss: 40300,
                pss: 40150,
                private_dirty: 40020,
                anon: 40012,
                guest_maps: 1,
                guest_rss: 40000,
                guest_private_dirty: 40000,
                guest_anon: 40000,
            }
        );
        // A guest larger than every mapping: none is guest RAM.
        let m = parse_smaps(SMAPS, 512 * 1024);
        assert_eq!((m.guest_maps, m.guest_rss, m.rss), (0, 0, 40300));
    }

    #[test]
    fn report_line() {
        let m = Mem {
            rss: 1,
            pss: 2,
            private_dirty: 3,
            anon: 4,
            guest_maps: 5,
            guest_rss: 6,
            guest_private_dirty: 7,
            guest_anon: 8,
        };
        assert_eq!(
            report("amphi run=1", Some(12.345), None, Some(&m), "signal=15"),
            "AMPHI-L1-BENCH amphi run=1 init-ms=12.3 rss-kb=1 pss-kb=2 private-dirty-kb=3 \
             anon-kb=4 guest-maps=5 guest-rss-kb=6 guest-private-dirty-kb=7 guest-anon-kb=8 \
             signal=15"
        );
        assert_eq!(
            report("qemu run=2", None, None, None, "exit=1"),
            "AMPHI-L1-BENCH qemu run=2 init-ms=none exit=1"
        );
        assert_eq!(
            report(
                "qemu run=3",
                Some(900.0),
                Some(Some(180.04)),
                None,
                "exit=0"
            ),
            "AMPHI-L1-BENCH qemu run=3 init-ms=900.0 entry-ms=180.0 exit=0"
        );
        assert_eq!(
            report("qemu run=4", None, Some(None), None, "exit=1"),
            "AMPHI-L1-BENCH qemu run=4 init-ms=none entry-ms=none exit=1"
        );
    }

    fn watch(marker: &str, script: &str, timeout_ms: f64) -> Watch {
        Watch {
            label: "test run=1".into(),
            marker: marker.into(),
            settle_ms: 50.0,
            guest_kb: 1 << 40,
            timeout_ms,
            cmd: ["sh", "-c", script].map(String::from).to_vec(),
        }
    }

    #[test]
    fn times_the_marker_reads_memory_and_stops_the_command() {
        let w = watch(
            "READY",
            "echo starting; sleep 0.2; echo READY; exec sleep 30",
            20_000.0,
        );
        let t0 = Instant::now();
        let mut child = Command::new("sh")
            .args(&w.cmd[1..])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (marked, mem) = follow(&w, &mut child, t0).unwrap();
        let status = child.wait().unwrap();
        let marked = marked.unwrap().duration_since(t0);
        assert!(marked >= Duration::from_millis(200), "{marked:?}");
        let mem = mem.unwrap();
        assert!(mem.rss > 0, "{mem:?}");
        assert_eq!(mem.guest_maps, 0);
        // Stopped by SIGTERM right after the memory was read.
        assert_eq!(status.signal(), Some(15), "{status:?}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn without_the_marker_the_command_is_stopped_at_the_timeout() {
        let w = watch("NEVER", "echo hello; exec sleep 30", 300.0);
        let t0 = Instant::now();
        let mut child = Command::new("sh")
            .args(&w.cmd[1..])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (marked, mem) = follow(&w, &mut child, t0).unwrap();
        let status = child.wait().unwrap();
        assert!(marked.is_none() && mem.is_none());
        assert_eq!(status.signal(), Some(15), "{status:?}");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_command_that_cannot_start_fails() {
        let mut w = watch("X", "", 1000.0);
        w.cmd = vec!["/nonexistent/vmm".into()];
        assert_eq!(run(&w).unwrap(), ExitCode::FAILURE);
    }
}

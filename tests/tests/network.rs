//! `--network` and `-p` for native containers, end to end with busybox:
//! a private network namespace connected by pasta (outbound traffic to a
//! server this test starts on the host's 127.0.0.1, reached through the
//! gateway address pasta maps to the host), published ports served by a
//! detached busybox httpd, `--network none` and a policy's `network =
//! "none"`, bad `-p` values, a missing pasta, and no pasta left behind
//! after any of it (kill -9 of the client or of the workload included).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{processes_mentioning, Amphi};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMG: &str = "localhost/demo/busybox:latest";

struct Env {
    a: Amphi,
    state: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let a = Amphi::new();
        a.load_test_image("busybox", IMG);
        Env {
            a,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.a.cmd(args);
        c.env("AMPHI_STATE", self.state.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        c.stdin(Stdio::null());
        amphi_tests::run_cmd(&mut c)
    }

    /// `amphi run --rm FLAGS IMG CMD...`: (status, stdout, stderr).
    fn rm(&self, flags: &[&str], cmd: &[&str]) -> (i32, String, String) {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.push(IMG);
        args.extend_from_slice(cmd);
        let out = self.run(&args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// No pasta of this test's runs is left (its environment names this
    /// test's store and state root), within a few seconds.
    fn assert_no_pasta(&self, after: &str) {
        let ours = [
            self.a.root().display().to_string(),
            self.state.path().display().to_string(),
        ];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<String> = processes_mentioning(&ours)
                .into_iter()
                .filter(|p| p.contains("pasta"))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {after}: pasta left behind: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The host's IPv4 default gateway (pasta gives the namespace the same,
/// and maps it to the host's own addresses).
fn gateway() -> Ipv4Addr {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap();
    for l in routes.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) == Some(&"00000000") {
            let g = u32::from_str_radix(f[2], 16).unwrap();
            return Ipv4Addr::from(g.to_le_bytes());
        }
    }
    panic!("this host has no IPv4 default route: pasta needs one to copy into the namespace");
}

/// A TCP server on the host's 127.0.0.1 that answers each connection with
/// `reply`; returns its port.
fn serve_once(reply: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(reply.as_bytes());
        }
    });
    port
}

/// The default network is private: the container has its own `eth0`
/// with the host's address and routes, reaches a server on the host, and
/// its resolv.conf names a resolver; nothing is left after. (`nc -w`:
/// Debian 12's pasta sometimes does not pass on the close of a connection
/// the server ends right after its reply; the bytes always arrive.)
#[test]
fn a_private_network_reaches_out() {
    let e = Env::new();
    let port = serve_once("pong-from-host\n");
    let gw = gateway();
    let script = format!(
        "ls /sys/class/net | tr '\\n' ' '; echo; timeout 10 nc -w 5 {gw} {port} </dev/null; grep -c nameserver /etc/resolv.conf"
    );
    let (code, out, err) = e.rm(&[], &["sh", "-c", &script]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].split_whitespace().any(|n| n != "lo"),
        "an interface besides lo: {out}"
    );
    assert_eq!(lines.get(1), Some(&"pong-from-host"), "{out}\n{err}");
    assert_ne!(
        lines.get(2),
        Some(&"0"),
        "a resolver in /etc/resolv.conf: {out}"
    );
    e.assert_no_pasta("a private run");
}

/// `--network none` is loopback only and cannot connect anywhere.
#[test]
fn network_none_cannot_connect() {
    let e = Env::new();
    let port = serve_once("must-not-arrive\n");
    let gw = gateway();
    let script = format!(
        "ls /sys/class/net; nc -w 2 {gw} {port} </dev/null || echo refused; nc -w 2 127.0.0.1 {port} </dev/null || echo refused"
    );
    let (code, out, err) = e.rm(&["--network", "none"], &["sh", "-c", &script]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("must-not-arrive"), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["lo", "refused", "refused"],
        "{out}"
    );
    e.assert_no_pasta("--network none");
}

/// A published port: busybox httpd, detached, serves a file through
/// `-p 127.0.0.1:PORT:80`; `ps` shows the port; the port in use is refused
/// before anything starts; after `rm -f` no pasta is left.
#[test]
fn published_ports_serve_and_are_cleaned_up() {
    let e = Env::new();
    let www = tempfile::tempdir().unwrap();
    let body: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(www.path().join("index.html"), &body).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{port}:80");
    let vol = format!("{}:/www:ro", www.path().display());
    let out = e.run(&[
        "run", "-d", "--name", "web", "-p", &publish, "-v", &vol, IMG, "httpd", "-f", "-p", "80",
        "-h", "/www",
    ]);
    assert!(out.status.success(), "{out:?}");
    let got = amphi_tests::curl_until_served(
        &format!("http://127.0.0.1:{port}/index.html"),
        Duration::from_secs(20),
    );
    assert_eq!(got, body, "the bytes served through the published port");
    let ps = String::from_utf8_lossy(&e.run(&["ps"]).stdout).into_owned();
    assert!(
        ps.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "ps shows the published port:\n{ps}"
    );
    // The port is taken now: a second run is refused before it starts.
    let (code, _, err) = e.rm(&["-p", &publish], &["true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains(&port.to_string()) && err.contains("in use"),
        "{err}"
    );
    assert!(e.run(&["rm", "-f", "web"]).status.success());
    e.assert_no_pasta("rm -f of a container with a published port");
    let refused = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(refused.is_err(), "the port is still served after rm -f");
}

/// The run report (`$AMPHI_RUN_REPORT`) names the network and the
/// published ports, docker's way.
#[test]
fn the_run_report_names_the_network_and_ports() {
    let e = Env::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let publish = format!("127.0.0.1:{port}:80/udp");
    for (flags, network, ports) in [
        (
            vec!["-p", publish.as_str()],
            "private",
            vec![format!("127.0.0.1:{port}->80/udp")],
        ),
        (vec!["--network", "none"], "none", vec![]),
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&[IMG, "true"]);
        let mut c = e.cmd(&args);
        c.env("AMPHI_RUN_REPORT", &report).stdin(Stdio::null());
        let out = amphi_tests::run_cmd(&mut c);
        assert!(out.status.success(), "{out:?}");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["network"], network, "{r}");
        let got: Vec<String> = r["ports"]
            .as_array()
            .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_eq!(got, ports, "{r}");
        std::fs::remove_file(&report).unwrap();
    }
    e.assert_no_pasta("runs with a report");
}

/// Bad `-p` values name the flag and the value; `-p` with a network that
/// is not private is refused; a missing pasta, with an explicit `--network
/// private`, names its package.
#[test]
fn bad_network_flags_are_refused_clearly() {
    let e = Env::new();
    for (bad, says) in [
        ("80", "host port"),
        ("8080:99999", "out of range"),
        ("8080:80/sctp", "unknown protocol"),
        ("nope:80", "not a port number"),
    ] {
        let (code, _, err) = e.rm(&["-p", bad], &["true"]);
        assert_eq!(code, 125, "-p {bad}: {err}");
        assert!(
            err.contains("-p") && err.contains(bad) && err.contains(says),
            "-p {bad}: {err}"
        );
    }
    let (code, _, err) = e.rm(&["--network", "none", "-p", "8080:80"], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("-p") && err.contains("none"), "{err}");
    let mut c = e.cmd(&["run", "--rm", "--network", "private", IMG, "true"]);
    c.env("AMPHI_PASTA", "/nonexistent/pasta")
        .stdin(Stdio::null());
    let out = amphi_tests::run_cmd(&mut c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("passt") && err.contains("/nonexistent/pasta"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(e.state.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "state left after a refused run: {left:?}");
    e.assert_no_pasta("refused runs");
}

/// A policy rule with `network = "none"` lowers the default and refuses a
/// `--network private` that asks for more; `explain` says so.
#[test]
fn a_policy_can_take_the_network_away() {
    let e = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[trust]]\nmatch = \"localhost/demo/*\"\nisolation = \"container\"\nnetwork = \"none\"\n",
    )
    .unwrap();
    let p = policy.display().to_string();
    let (code, out, err) = e.rm(&["--policy", &p], &["ls", "/sys/class/net"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "lo\n", "the policy's none: loopback only");
    let (code, _, err) = e.rm(&["--policy", &p, "--network", "private"], &["true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("--network private") && err.contains("[[trust]] rule 1"),
        "{err}"
    );
    let explain = e.a.ok(&["explain", "--policy", &p, IMG]);
    assert!(explain.contains("network: none"), "{explain}");
    e.assert_no_pasta("policy runs");
}

/// kill -9 of the client, or of the workload: pasta goes with them.
#[test]
fn pasta_does_not_outlive_a_killed_run() {
    let e = Env::new();
    let mut client = e
        .cmd(&["run", "--rm", IMG, "sh", "-c", "echo up; sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 3];
    client
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    client.kill().unwrap();
    client.wait().unwrap();
    e.assert_no_pasta("kill -9 of the client");

    let mut client = e
        .cmd(&[
            "run",
            "--rm",
            IMG,
            "sh",
            "-c",
            "echo $$ >/dev/null; echo up; exec sleep 1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    // The workload: the client's child that runs sleep (once it has
    // executed it).
    let cpid = client.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let workload = loop {
        let kids = std::fs::read_to_string(format!("/proc/{cpid}/task/{cpid}/children")).unwrap();
        let found = kids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            });
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no workload among {kids}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill(2) on the workload's pid.
    unsafe { libc::kill(workload, libc::SIGKILL) };
    let st = client.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    e.assert_no_pasta("kill -9 of the workload");
}

/// `amphi run FLAGS IMG ls /sys/class/net` with `env` set, run by `wrap`
/// (e.g. `unshare -n`, a network namespace with only loopback and no
/// route): (status, stdout, stderr).
fn run_with(e: &Env, wrap: &[&str], env: &[(&str, &str)], flags: &[&str]) -> (i32, String, String) {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[IMG, "ls", "/sys/class/net"]);
    let inner = e.cmd(&args);
    let mut c = match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(inner.get_program()).args(inner.get_args());
            for (k, v) in inner.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        }
        None => inner,
    };
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    let out = amphi_tests::run_cmd(&mut c);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where the host cannot give a private network (pasta missing, or no
/// IPv4 default route: amphi itself run in a network namespace with only
/// loopback), the default falls back to `none` with one warning that says
/// why and names the package; an explicit `--network private`, or `-p`,
/// fails with the clear error instead; nothing is left behind.
#[test]
fn the_default_network_falls_back_to_none_where_there_is_none() {
    let e = Env::new();
    let missing = [("AMPHI_PASTA", "/nonexistent/pasta")];
    let (code, out, err) = run_with(&e, &[], &missing, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "lo\n", "the fallback is loopback only: {err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("warning") && l.contains("network"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning line about the network: {err}"
    );
    assert!(
        warnings[0].contains("--network none")
            && warnings[0].contains("/nonexistent/pasta")
            && warnings[0].contains("apt-get install passt"),
        "{err}"
    );
    let (code, _, err) = run_with(&e, &[], &missing, &["--network", "private"]);
    assert_eq!(code, 125, "an explicit --network private fails: {err}");
    assert!(err.contains("/nonexistent/pasta"), "{err}");
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{free}:80");
    let (code, _, err) = run_with(&e, &[], &missing, &["-p", &publish]);
    assert_eq!(code, 125, "-p needs the private network: {err}");
    assert!(err.contains("/nonexistent/pasta"), "{err}");

    if !amphi_tests::have("unshare") {
        amphi_tests::skip("no unshare(1): the no-route fallback is NOT tested");
        return;
    }
    let no_route = ["unshare", "--net"];
    let (code, out, err) = run_with(&e, &no_route, &[], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "lo\n", "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("warning") && l.contains("no IPv4 default route")),
        "{err}"
    );
    let (code, _, err) = run_with(&e, &no_route, &[], &["--network", "private"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("no IPv4 default route") && err.contains("--network private"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(e.state.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "state left after the runs: {left:?}");
    e.assert_no_pasta("fallback runs");
}

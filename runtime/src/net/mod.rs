//! A workload's network: the `--network` modes, published ports
//! (`-p/--publish`, docker's syntax), and pasta, the user-mode network
//! stack (Debian's `passt` package) that connects a private network
//! namespace to the host's network without a bridge, iptables or a veth.
//!
//! `private` (the default): amphi makes a new network namespace (held by a
//! descriptor, never bound to a file), starts pasta on it (`--config-net`:
//! the host's address, routes and MTU on `eth0`, `lo` up; outbound TCP, UDP
//! and ICMP leave through host sockets; published ports are host sockets
//! pasta listens on), waits until the namespace has its default route, and
//! the container joins it (`linux.namespaces[].path`). pasta runs in the
//! foreground as amphi's child with SIGKILL on amphi's death, and is
//! killed when the container ends: nothing outlives the run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `--network` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The workload's own network namespace, connected by pasta (outbound
    /// traffic, DNS, published ports): the default.
    Private,
    /// A network namespace with only loopback.
    None,
    /// The host's network namespace (native runs only).
    Host,
}

impl Network {
    pub fn name(self) -> &'static str {
        match self {
            Network::Private => "private",
            Network::None => "none",
            Network::Host => "host",
        }
    }

    /// How much network it gives: none < private < host.
    pub fn rank(self) -> u8 {
        match self {
            Network::None => 0,
            Network::Private => 1,
            Network::Host => 2,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "private" | "bridge" | "pasta" => Ok(Network::Private),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => Err(format!(
                "unknown network {s:?} (expected private, none or host)"
            )),
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// One `-p [IP:]HOSTPORT:CTRPORT[/tcp|/udp]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Publish {
    /// The host address to listen on (None: every address, as docker).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

fn port(s: &str, what: &str, whole: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!(
            "-p {whole:?}: {what} {p} is out of range (1-65535)"
        )),
        Err(_) => Err(format!("-p {whole:?}: {what} {s:?} is not a port number")),
    }
}

impl Publish {
    /// Parses docker's `[IP:]HOSTPORT:CTRPORT[/tcp|/udp]` (an IPv6 address
    /// in brackets).
    pub fn parse(s: &str) -> Result<Publish, String> {
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "-p {s:?}: unknown protocol {other:?} (expected tcp or udp)"
                ))
            }
            None => (s, Proto::Tcp),
        };
        let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
            let (ip, rest) = r
                .split_once("]:")
                .ok_or_else(|| format!("-p {s:?}: expected [IPv6]:HOSTPORT:CTRPORT"))?;
            (Some(ip), rest)
        } else {
            match spec.matches(':').count() {
                1 => (None, spec),
                2 => {
                    let (ip, rest) = spec.split_once(':').unwrap_or_default();
                    (Some(ip), rest)
                }
                0 => {
                    return Err(format!(
                        "-p {s:?}: give the host port too: [IP:]HOSTPORT:CTRPORT[/tcp|/udp]"
                    ))
                }
                _ => {
                    return Err(format!(
                        "-p {s:?}: expected [IP:]HOSTPORT:CTRPORT[/tcp|/udp] (an IPv6 address goes in brackets)"
                    ))
                }
            }
        };
        let host_ip = match ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| format!("-p {s:?}: {ip:?} is not an IP address"))?,
            ),
        };
        let (h, c) = rest
            .split_once(':')
            .ok_or_else(|| format!("-p {s:?}: expected [IP:]HOSTPORT:CTRPORT"))?;
        Ok(Publish {
            host_ip,
            host_port: port(h, "host port", s)?,
            container_port: port(c, "container port", s)?,
            proto,
        })
    }

    fn proto_name(&self) -> &'static str {
        match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The address pasta listens on.
    fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.host_port,
        )
    }

    /// pasta's spec for it: `[ADDR/]HOSTPORT:CTRPORT`.
    fn pasta_spec(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}/{}:{}", self.host_port, self.container_port),
            None => format!("{}:{}", self.host_port, self.container_port),
        }
    }
}

impl std::fmt::Display for Publish {
    /// docker's way: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}->{}/{}",
            self.host_addr(),
            self.container_port,
            self.proto_name()
        )
    }
}

/// Every published port is free on the host: a clear error before
/// anything starts, rather than pasta failing to listen later.
pub fn check_free(ports: &[Publish]) -> Result<(), String> {
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.host_port == p.host_port && q.proto == p.proto)
        {
            return Err(format!(
                "-p {p}: host port {} is published twice",
                p.host_port
            ));
        }
        let addr = p.host_addr();
        let r = match p.proto {
            Proto::Tcp => TcpListener::bind(addr).map(drop),
            Proto::Udp => UdpSocket::bind(addr).map(drop),
        };
        if let Err(e) = r {
            return Err(format!(
                "-p {p}: cannot listen on {addr}/{}: {e}{}",
                p.proto_name(),
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another program uses that port)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// `$AMPHI_PASTA`, else `pasta` from PATH; an error that names the package.
pub fn pasta_binary() -> Result<PathBuf, String> {
    tool("AMPHI_PASTA", "pasta")
}

/// `$AMPHI_PASST`, else `passt` from PATH.
pub fn passt_binary() -> Result<PathBuf, String> {
    tool("AMPHI_PASST", "passt")
}

fn tool(var: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "${var} names {}, which does not exist: {name} comes with Debian's passt package (apt-get install passt, or run scripts/setup)",
                p.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} is not installed: --network private needs it (apt-get install passt, or run scripts/setup; or --network none)")
        })
}

/// Why a private network cannot be had on this host, if it cannot: the
/// helper it needs (pasta for a native run, passt for a microVM) is
/// missing, or the host has no IPv4 default route (both copy the host's
/// address and routes, and refuse to start without one). The default
/// network falls back to `none` with this as the reason.
pub fn unavailable(vm: bool) -> Option<String> {
    let helper = if vm { passt_binary() } else { pasta_binary() };
    if let Err(e) = helper {
        return Some(e);
    }
    if default_route().is_none() {
        return Some("this host has no IPv4 default route".into());
    }
    None
}

/// The resolver addresses of the host's /etc/resolv.conf.
fn host_nameservers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// Where a private namespace sends DNS when the host's resolver is on its
/// own loopback (systemd-resolved's 127.0.0.53): pasta forwards what is
/// sent here to the host's resolver.
const DNS_FORWARD: &str = "169.254.1.1";

/// The /etc/resolv.conf of a private network: the host's, unless its
/// resolvers are on the host's loopback (unreachable from the namespace),
/// then pasta's forwarder.
pub fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if host_nameservers().iter().any(|a| a.is_loopback()) {
        let rest: String = host
            .lines()
            .filter(|l| !l.trim_start().starts_with("nameserver"))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("nameserver {DNS_FORWARD}\n{rest}")
    } else {
        host
    }
}

/// What pasta and passt both forward: the published ports into the
/// namespace or guest (one `-t`/`-u` each: an address in a spec applies
/// to all of it, so specs with addresses cannot share one option; else
/// `none`: both refuse `none` next to ports), and DNS to the host's
/// resolver when it is on the host's loopback.
fn forwarding_args(ports: &[Publish]) -> Vec<String> {
    let mut a = Vec::new();
    for (flag, proto) in [("-t", Proto::Tcp), ("-u", Proto::Udp)] {
        let specs: Vec<String> = ports
            .iter()
            .filter(|p| p.proto == proto)
            .map(Publish::pasta_spec)
            .collect();
        if specs.is_empty() {
            a.push(flag.into());
            a.push("none".into());
        }
        for spec in specs {
            a.push(flag.into());
            a.push(spec);
        }
    }
    if host_nameservers().iter().any(|a| a.is_loopback()) {
        a.push("--dns-forward".into());
        a.push(DNS_FORWARD.into());
    }
    a
}

/// pasta's arguments for a namespace it finds at `/proc/self/fd/<fd>`.
fn pasta_args(netns_fd: i32, ports: &[Publish]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--foreground",
        "--quiet",
        // Debian 12's pasta drops to nobody before it joins the namespace,
        // and then cannot: it stays root, in its own sandbox (it keeps
        // only CAP_NET_BIND_SERVICE and CAP_SYS_ADMIN, seccomp, its own
        // mount namespace).
        "--runas",
        "0:0",
        "--config-net",
        // pasta would watch the namespace's path and quit when it thinks
        // it is gone (a /proc/self/fd path is not a bound namespace file):
        // amphi ends it with the container.
        "--no-netns-quit",
        // No automatic forwarding from the namespace to the host (-T/-U
        // would let the workload reach ports bound on the host's loopback
        // through its own loopback).
        "-T",
        "none",
        "-U",
        "none",
    ]
    .map(String::from)
    .to_vec();
    a.extend(forwarding_args(ports));
    a.push("--netns".into());
    a.push(format!("/proc/self/fd/{netns_fd}"));
    a
}

/// A private network: its namespace (a descriptor) and the pasta serving
/// it, killed on drop.
pub struct Attached {
    pub netns: OwnedFd,
    pasta: Child,
    pub ports: Vec<Publish>,
    /// The end of what pasta wrote on stderr.
    said: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Makes the helper `cmd` starts die with amphi (SIGKILL on the death of
/// the spawning thread's process, checked against a parent already gone)
/// and inherit descriptor `fd` by its number.
fn dies_with_us(cmd: &mut Command, fd: i32) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: async-signal-safe calls only between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            crate::sys::signal::die_with_parent(parent)?;
            crate::sys::io::keep_on_exec(fd)
        });
    }
}

/// How much of a helper's stderr is kept.
const SAID_KEEP: usize = 8 * 1024;

/// Reads `from` to its end in a thread of its own, keeping the last
/// [`SAID_KEEP`] bytes: a helper that logs a lot (pasta's "Failed to send
/// to syslog" for each message) never blocks on a full pipe.
fn drain(from: Option<std::process::ChildStderr>) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Some(mut from) = from {
        let k = kept.clone();
        std::thread::spawn(move || {
            // Signals are the caller's (it forwards them from its main
            // thread): never this thread's default action.
            // SAFETY: a full set, installed as this thread's mask.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut from, &mut buf) {
                if n == 0 {
                    break;
                }
                let mut g = k.lock().unwrap_or_else(|p| p.into_inner());
                g.extend_from_slice(&buf[..n]);
                let over = g.len().saturating_sub(SAID_KEEP);
                g.drain(..over);
            }
        });
    }
    kept
}

impl Attached {
    /// A new network namespace with pasta connected and configured.
    pub fn start(ports: &[Publish]) -> Result<Attached, String> {
        let bin = pasta_binary()?;
        need_default_route()?;
        let netns = new_netns()?;
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(&bin);
        cmd.args(pasta_args(fd, ports))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        dies_with_us(&mut cmd, fd);
        let mut pasta = cmd
            .spawn()
            .map_err(|e| format!("starting pasta ({}): {e}", bin.display()))?;
        let said = drain(pasta.stderr.take());
        let mut a = Attached {
            netns,
            pasta,
            ports: ports.to_vec(),
            said,
        };
        a.wait_configured()?;
        Ok(a)
    }

    /// Waits until the namespace has its default route (pasta has
    /// configured it), or pasta has ended (an error with what it said).
    fn wait_configured(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if has_default_route(&self.netns)? {
                return Ok(());
            }
            if let Ok(Some(st)) = self.pasta.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let said =
                    String::from_utf8_lossy(&self.said.lock().unwrap_or_else(|p| p.into_inner()))
                        .into_owned();
                let said: Vec<&str> = said.lines().filter(|l| !l.contains("to syslog")).collect();
                return Err(format!(
                    "pasta ended before the network was up ({st}): {}",
                    said.join("; ")
                ));
            }
            if Instant::now() > deadline {
                return Err("pasta did not configure the network within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The path the container joins the namespace by: the descriptor as
    /// the container's process (a clone of this one) has it.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.netns.as_raw_fd()))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.pasta.kill();
        let _ = self.pasta.wait();
    }
}

/// A new network namespace, made by a thread of its own and held by a
/// descriptor (the thread ends; the namespace lives while the descriptor
/// or a process in it does).
fn new_netns() -> Result<OwnedFd, String> {
    std::thread::spawn(|| -> Result<OwnedFd, String> {
        // SAFETY: unshare on this thread only (it ends right after).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {} (a private network needs root)",
                std::io::Error::last_os_error()
            ));
        }
        let f = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("/proc/thread-self/ns/net: {e}"))?;
        Ok(OwnedFd::from(f))
    })
    .join()
    .map_err(|_| "the thread making the network namespace panicked".to_string())?
}

/// Whether the namespace `ns` has an IPv4 default route (read from a
/// thread that joins it and ends).
fn has_default_route(ns: &OwnedFd) -> Result<bool, String> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a descriptor that
            // outlives the scope.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "joining the new network namespace: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
            Ok(routes
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(1) == Some("00000000")))
        })
        .join()
        .map_err(|_| "the thread reading the routes panicked".to_string())?
    })
}

pub use crate::proto::channel::GuestNet as GuestAddress;

/// The host's IPv4 default route: (interface, gateway).
fn default_route() -> Option<(String, Ipv4Addr)> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| {
            let g = u32::from_str_radix(f.get(2)?, 16).ok()?;
            Some((f[0].to_string(), Ipv4Addr::from(g.to_le_bytes())))
        })?
    })
}

/// pasta and passt copy the host's default route, and refuse to start
/// without one: a clear error first.
fn need_default_route() -> Result<(), String> {
    match default_route() {
        Some(_) => Ok(()),
        None => Err("this host has no IPv4 default route, and --network private needs one (or --network none)".into()),
    }
}

/// The guest's address: the host's on its default route's interface.
pub fn guest_address() -> Result<GuestAddress, String> {
    let (ifname, gateway) = default_route()
        .ok_or("this host has no IPv4 default route for a microVM's network to copy")?;
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we read it only
    // while it is alive, each entry's pointers checked for null.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return Err(format!("getifaddrs: {}", std::io::Error::last_os_error()));
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let a = &*cur;
            cur = a.ifa_next;
            if a.ifa_addr.is_null() || a.ifa_netmask.is_null() {
                continue;
            }
            if i32::from((*a.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(a.ifa_name).to_string_lossy();
            if name != ifname {
                continue;
            }
            let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
            let mask = &*(a.ifa_netmask as *const libc::sockaddr_in);
            found = Some((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8,
            ));
            break;
        }
        libc::freeifaddrs(addrs);
        let (address, prefix) =
            found.ok_or_else(|| format!("{ifname} (the default route's) has no IPv4 address"))?;
        Ok(GuestAddress {
            address,
            prefix,
            gateway,
            mtu: 1500,
        })
    }
}

/// A microVM's passt: serves the backend's end of a socket pair; killed on
/// drop.
pub struct Passt {
    child: Child,
    /// The backend's end (inherited by QEMU or `amphi vmm`).
    pub backend_end: Option<OwnedFd>,
}

impl Passt {
    /// Starts passt for a VM, with `ports` published to the guest.
    pub fn start(ports: &[Publish]) -> Result<Passt, String> {
        let bin = passt_binary()?;
        need_default_route()?;
        let (ours, backend) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let fd = ours.as_raw_fd();
        let mut args: Vec<String> = vec![
            "--foreground".into(),
            "--quiet".into(),
            "--ipv4-only".into(),
            "--fd".into(),
            fd.to_string(),
        ];
        args.extend(forwarding_args(ports));
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        dies_with_us(&mut cmd, fd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting passt ({}): {e}", bin.display()))?;
        drop(ours);
        Ok(Passt {
            child,
            backend_end: Some(backend),
        })
    }

    /// The backend's descriptor number (-1 once handed over).
    pub fn backend_fd(&self) -> i32 {
        self.backend_end.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_follows_dockers_syntax_and_defaults() {
        let p = Publish::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.proto),
            (None, 8080, 80, Proto::Tcp)
        );
        assert_eq!(p.to_string(), "0.0.0.0:8080->80/tcp");
        assert_eq!(p.pasta_spec(), "8080:80");
        let p = Publish::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.pasta_spec(), "127.0.0.1/5353:53");
        let p = Publish::parse("[::1]:8443:443/tcp").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        for (bad, says) in [
            ("80", "give the host port"),
            ("0:80", "out of range"),
            ("8080:70000", "out of range"),
            ("x:80", "not a port number"),
            ("8080:80/sctp", "unknown protocol"),
            ("300.1.1.1:8080:80", "not an IP address"),
            ("a:b:c:d", "expected"),
        ] {
            let e = Publish::parse(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused_by_name() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Publish::parse(&format!("127.0.0.1:{port}:80")).unwrap();
        let e = check_free(std::slice::from_ref(&p)).unwrap_err();
        assert!(e.contains(&port.to_string()) && e.contains("in use"), "{e}");
        drop(l);
        assert!(check_free(std::slice::from_ref(&p)).is_ok());
        assert!(check_free(&[p.clone(), p]).unwrap_err().contains("twice"));
    }

    #[test]
    fn pasta_forwards_only_what_is_published() {
        let ports = [Publish::parse("127.0.0.1:8080:80").unwrap()];
        let a = pasta_args(7, &ports);
        let joined = a.join(" ");
        assert!(
            joined.contains("-T none -U none -t 127.0.0.1/8080:80 -u none"),
            "{joined}"
        );
        let two = [
            Publish::parse("127.0.0.1:8080:80").unwrap(),
            Publish::parse("127.0.0.1:8443:443").unwrap(),
            Publish::parse("53:53/udp").unwrap(),
        ];
        let joined2 = pasta_args(7, &two).join(" ");
        assert!(
            joined2.contains("-t 127.0.0.1/8080:80 -t 127.0.0.1/8443:443 -u 53:53"),
            "one option per port: {joined2}"
        );
        let none = pasta_args(7, &[]).join(" ");
        assert!(none.contains("-T none -U none -t none -u none"), "{none}");
        assert!(joined.ends_with("--netns /proc/self/fd/7"), "{joined}");
        assert!(joined.contains("--foreground"));
    }

    #[test]
    fn modes_parse_and_rank() {
        assert_eq!("private".parse::<Network>().unwrap(), Network::Private);
        assert!("bridgez".parse::<Network>().is_err());
        assert!(Network::None.rank() < Network::Private.rank());
    }
}

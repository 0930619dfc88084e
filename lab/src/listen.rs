//! `amphi-lab listen`: the host end of amphi's virtio-console in the virtio
//! check. Level 2 says it is ready, level 1 answers with the token; level 2
//! sends its report and a whole disk and says it is done, level 1
//! acknowledges.

use crate::markers::Seen;
use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Listens on `sock`, copies the one connection to `out` until EOF, and
/// answers each `(marker, reply)` in turn. Prints `AMPHI-L1-LISTEN bytes=N
/// replies=N`.
pub fn run(sock: &Path, out: &Path, pairs: &[(String, String)]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(out)
        .with_context(|| format!("{}", out.display()))?;
    match std::fs::remove_file(sock) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old socket {}", sock.display()))
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(sock).with_context(|| format!("listening on {}", sock.display()))?;
    let (mut conn, _) = listener
        .accept()
        .with_context(|| format!("accepting a connection on {}", sock.display()))?;
    drop(listener);
    let (bytes, replies) = relay(&mut conn, &mut file, pairs, out)?;
    file.sync_all()
        .with_context(|| format!("syncing {}", out.display()))?;
    println!("AMPHI-L1-LISTEN bytes={bytes} replies={replies}");
    Ok(())
}

/// Copies `conn` to `file` until EOF (or a read error, which ends the
/// connection as EOF does), sending the replies; returns the bytes
/// received and the replies sent.
fn relay(
    conn: &mut UnixStream,
    file: &mut File,
    pairs: &[(String, String)],
    out: &Path,
) -> anyhow::Result<(usize, usize)> {
    let mut seen = Seen::default();
    let mut next = 0;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("amphi-lab: reading the connection: {e}");
                break;
            }
        };
        file.write_all(&chunk[..n])
            .with_context(|| format!("{}", out.display()))?;
        seen.add(&chunk[..n]);
        while let Some((marker, reply)) = pairs.get(next) {
            if !seen.find(marker.as_bytes()) {
                break;
            }
            let mut line = reply.clone().into_bytes();
            line.push(b'\n');
            if let Err(e) = conn.write_all(&line) {
                eprintln!("amphi-lab: sending {reply} failed: {e}");
            }
            next += 1;
        }
    }
    Ok((seen.len(), next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn answers_the_markers_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let out = dir.path().join("console.out");
        // A stale socket file is replaced.
        std::fs::write(&sock, "stale").unwrap();
        let server = {
            let (sock, out) = (sock.clone(), out.clone());
            std::thread::spawn(move || {
                let pairs = [
                    ("READY".to_string(), "token123".to_string()),
                    ("END".to_string(), "BYE".to_string()),
                ];
                run(&sock, &out, &pairs).unwrap();
            })
        };
        let mut conn = loop {
            match UnixStream::connect(&sock) {
                Ok(c) => break c,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        conn.write_all(b"hello REA").unwrap();
        conn.write_all(b"DY\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "token123\n");
        let data = vec![7u8; 200_000];
        conn.write_all(&data).unwrap();
        conn.write_all(b"END").unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "BYE\n");
        drop(conn);
        drop(reader);
        server.join().unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), 12 + 200_000 + 3);
        assert!(got.starts_with(b"hello READY\n"));
        assert!(got.ends_with(b"END"));
    }
}

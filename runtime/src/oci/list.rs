//! `list`: the containers of the state root, as runc lists them (a table
//! `ID PID STATUS BUNDLE CREATED OWNER`, `-q` for the IDs, or JSON).

use super::Result;
use crate::container::state::{State, Status};
use std::path::Path;

/// One container as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub pid: i32,
    pub status: &'static str,
    pub bundle: String,
    pub rootfs: String,
    pub created: String,
    pub owner: String,
}

/// The containers of `root`, sorted by ID (entries that are not
/// containers, or whose state cannot be read, are left out).
fn entries(root: &Path) -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = rd
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            if !e.path().join("state.json").is_file() {
                return None;
            }
            let st = State::load(root, &id).ok()?;
            let status = st.status(root);
            let uid = std::os::unix::fs::MetadataExt::uid(&e.metadata().ok()?);
            Some(Entry {
                pid: if status == Status::Stopped { 0 } else { st.pid },
                status: status.as_str(),
                bundle: st.bundle.display().to_string(),
                rootfs: st.rootfs.display().to_string(),
                created: st.created.clone(),
                owner: owner_name(uid),
                id,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The user name of `uid` from the host's /etc/passwd, else `#UID` (as runc).
fn owner_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("#{uid}"))
}

/// runc's table: each column but the last as wide as its widest cell plus
/// 3, and at least 12 (Go's tabwriter with runc's settings).
pub fn table(rows: &[Entry]) -> String {
    let mut lines: Vec<[String; 6]> =
        vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
    for r in rows {
        lines.push([
            r.id.clone(),
            r.pid.to_string(),
            r.status.to_string(),
            r.bundle.clone(),
            r.created.clone(),
            r.owner.clone(),
        ]);
    }
    let mut widths = [0usize; 5];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l.iter()) {
            *w = (*w).max((c.chars().count() + 3).max(12));
        }
    }
    let mut out = String::new();
    for l in &lines {
        for (c, w) in l.iter().zip(widths.iter()) {
            out.push_str(&format!("{c:<w$}"));
        }
        out.push_str(&l[5]);
        out.push('\n');
    }
    out
}

/// `list`: the table, the IDs alone (`quiet`) or JSON (`null` when there
/// are none, as runc prints it).
pub fn list(root: &Path, format: &str, quiet: bool) -> Result<String> {
    let rows = entries(root);
    if quiet {
        return Ok(rows.iter().map(|r| format!("{}\n", r.id)).collect());
    }
    match format {
        "table" => Ok(table(&rows)),
        "json" => {
            if rows.is_empty() {
                return Ok("null\n".into());
            }
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "ociVersion": "1.2.0", "id": r.id, "pid": r.pid, "status": r.status,
                        "bundle": r.bundle, "rootfs": r.rootfs, "created": r.created, "owner": r.owner,
                    })
                })
                .collect();
            Ok(format!("{}\n", serde_json::Value::from(v)))
        }
        f => Err(format!("list --format {f:?}: expected table or json").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_as_runc() {
        let e = Entry {
            id: "t4".into(),
            pid: 8549,
            status: "running",
            bundle: "/tmp/vb-runc".into(),
            rootfs: "/tmp/vb-runc/rootfs".into(),
            created: "2026-12-04T19:48:25.847886084Z".into(),
            owner: "root".into(),
        };
        // What runc 1.1 printed for the same container.
        assert_eq!(
            table(&[e]),
            "ID          PID         STATUS      BUNDLE         CREATED                          OWNER\n\
             t4          8549        running     /tmp/vb-runc   2026-12-04T19:48:25.847886084Z   root\n"
        );
        assert_eq!(
            table(&[]),
            "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"
        );
    }
}

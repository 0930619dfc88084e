//! `/etc/passwd` and `/etc/group` of the container, read after pivot_root
//! (so paths resolve inside the container).

/// A resolved user: ids, home and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub groups: Vec<u32>,
}

/// A user or group the container's files do not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("bad uid in /etc/passwd for {0}")]
    BadUid(String),
    #[error("bad gid in /etc/passwd for {0}")]
    BadGid(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

/// Resolves docker's `-u` syntax (`NAME`, `UID`, `NAME:GROUP`, `UID:GID`)
/// against passwd and group contents.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == u);
    let (uid, mut gid, home, name) = match (u.parse::<u32>(), by_name) {
        (_, Some(f)) => (
            f[2].parse::<u32>()
                .map_err(|_| UserError::BadUid(u.into()))?,
            f[3].parse::<u32>()
                .map_err(|_| UserError::BadGid(u.into()))?,
            f[5].to_string(),
            Some(f[0]),
        ),
        (Ok(uid), None) => match entries.iter().find(|f| f[2].parse::<u32>() == Ok(uid)) {
            Some(f) => (uid, f[3].parse().unwrap_or(0), f[5].to_string(), Some(f[0])),
            None => (uid, 0, "/".to_string(), None),
        },
        (Err(_), None) => return Err(UserError::UnknownUser(u.into())),
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| UserError::UnknownGroup(g.into()))?,
        };
    }
    let mut extra = Vec::new();
    if let Some(name) = name {
        for f in &groups {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(id) = f[2].parse::<u32>() {
                    if id != gid && !extra.contains(&id) {
                        extra.push(id);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        home: if home.is_empty() { "/".into() } else { home },
        groups: extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\namphi:x:1000:1000::/home/amphi:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:amphi\namphi:x:1000:\nstaff:x:50:root,amphi\n";

    #[test]
    fn resolves_names_ids_and_groups() {
        let u = resolve("amphi", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/amphi"));
        assert_eq!(u.groups, vec![10, 50]);
        let u = resolve("1000:50", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = resolve("amphi:wheel", PASSWD, GROUP).unwrap();
        assert_eq!(u.gid, 10);
        let u = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("nobody-here", PASSWD, GROUP)
                .unwrap_err()
                .to_string(),
            "unable to find user nobody-here: no matching entries in passwd file"
        );
        assert_eq!(
            resolve("amphi:nogroup", PASSWD, GROUP).unwrap_err(),
            UserError::UnknownGroup("nogroup".into())
        );
    }
}

//! Capabilities: docker's default set, and applying a spec's sets.

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::LinuxCapabilities;
use std::str::FromStr;

/// docker's default capability set.
pub const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A capability name or set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    /// A set the kernel refuses (capset: EPERM).
    #[error("process.capabilities.{set} holds {} outside the {of} set: {source}", caps.join(", "))]
    OutsideSet {
        set: &'static str,
        caps: Vec<String>,
        of: &'static str,
        source: std::io::Error,
    },
    #[error("reading bounding set: {0}")]
    ReadBounding(#[source] caps::errors::CapsError),
    #[error("dropping {cap} from the bounding set: {source}")]
    DropBounding {
        cap: Capability,
        source: caps::errors::CapsError,
    },
    #[error("setting {set} caps: {source}")]
    Set {
        set: &'static str,
        source: caps::errors::CapsError,
    },
}

/// Parses a capability name, with or without the `CAP_` prefix, any case.
pub fn parse(name: &str) -> Result<String, CapsError> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if full == "CAP_ALL" {
        return Ok(full);
    }
    Capability::from_str(&full)
        .map(|c| c.to_string())
        .map_err(|_| CapsError::Unknown(name.into()))
}

/// All capabilities this kernel knows.
pub fn all_names() -> Vec<String> {
    caps::runtime::procfs_all_supported(None)
        .unwrap_or_else(|_| caps::all())
        .into_iter()
        .map(|c| c.to_string())
        .collect()
}

fn to_set(names: &Option<oci_spec::runtime::Capabilities>, allowed: &CapsHashSet) -> CapsHashSet {
    names
        .iter()
        .flatten()
        .filter_map(|c| {
            let s = serde_json::to_value(c).ok()?;
            Capability::from_str(s.as_str()?).ok()
        })
        // A cap outside our own bounding set cannot be granted (on these
        // hosts CAP_SYS_RESOURCE is such a cap): leave it out silently,
        // as runc does.
        .filter(|c| allowed.contains(c))
        .collect()
}

/// The names of a spec's capability set.
fn set_names(set: &Option<oci_spec::runtime::Capabilities>) -> std::collections::BTreeSet<String> {
    set.iter()
        .flatten()
        .filter_map(|c| Some(serde_json::to_value(c).ok()?.as_str()?.to_string()))
        .collect()
}

/// The capability sets the kernel refuses to give (capset: EPERM), as runc
/// fails on them: an effective capability that is not permitted, or an
/// inheritable one outside the bounding set. A permitted or ambient one
/// outside the bounding set is not an error (runc neither): exec drops it.
/// Checked against the spec's own sets, so that a capability the runtime
/// itself lacks stays a silent omission (see `to_set`).
pub fn check_sets(spec: Option<&LinuxCapabilities>) -> Result<(), CapsError> {
    let Some(spec) = spec else {
        return Ok(());
    };
    let permitted = set_names(spec.permitted());
    let bounding = set_names(spec.bounding());
    let refused = |set, held: std::collections::BTreeSet<String>, within, of| {
        let outside: Vec<String> = held.difference(within).cloned().collect();
        if outside.is_empty() {
            Ok(())
        } else {
            Err(CapsError::OutsideSet {
                set,
                caps: outside,
                of,
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            })
        }
    };
    refused(
        "effective",
        set_names(spec.effective()),
        &permitted,
        "permitted",
    )?;
    refused(
        "inheritable",
        set_names(spec.inheritable()),
        &bounding,
        "bounding",
    )
}

/// Step 1, still as root: shrink the bounding set.
pub fn drop_bounding(spec: Option<&LinuxCapabilities>) -> Result<(), CapsError> {
    check_sets(spec)?;
    let have = caps::read(None, CapSet::Bounding).map_err(CapsError::ReadBounding)?;
    let keep = to_set(&spec.and_then(|s| s.bounding().clone()), &have);
    for c in have.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *c)
            .map_err(|source| CapsError::DropBounding { cap: *c, source })?;
    }
    Ok(())
}

/// Step 2, after the uid switch: effective, permitted, inheritable, ambient.
pub fn apply_sets(spec: Option<&LinuxCapabilities>) -> Result<(), CapsError> {
    let bounding = caps::read(None, CapSet::Bounding).map_err(CapsError::ReadBounding)?;
    let get = |f: fn(&LinuxCapabilities) -> &Option<oci_spec::runtime::Capabilities>| {
        to_set(&spec.and_then(|s| f(s).clone()), &bounding)
    };
    let permitted = get(|s| s.permitted());
    let effective: CapsHashSet = get(|s| s.effective())
        .intersection(&permitted)
        .copied()
        .collect();
    let inheritable = get(|s| s.inheritable());
    let ambient: CapsHashSet = get(|s| s.ambient())
        .into_iter()
        .filter(|c| permitted.contains(c) && inheritable.contains(c))
        .collect();
    // Shrink effective first: capset refuses an effective set larger than
    // the permitted one.
    caps::set(None, CapSet::Effective, &effective).map_err(|source| CapsError::Set {
        set: "effective",
        source,
    })?;
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(|source| CapsError::Set {
        set: "inheritable",
        source,
    })?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(|source| CapsError::Set {
        set: "permitted",
        source,
    })?;
    // Always set: amphi may itself have inherited ambient capabilities.
    caps::set(None, CapSet::Ambient, &ambient).map_err(|source| CapsError::Set {
        set: "ambient",
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_kernel_refuses() {
        let caps = |e: &[&str], p: &[&str], i: &[&str], b: &[&str]| -> LinuxCapabilities {
            serde_json::from_value(serde_json::json!({
                "effective": e, "permitted": p, "inheritable": i, "bounding": b,
                "ambient": ["CAP_SYS_ADMIN"],
            }))
            .unwrap()
        };
        let ok = caps(
            &["CAP_KILL"],
            &["CAP_KILL", "CAP_SYS_ADMIN"],
            &["CAP_KILL"],
            &["CAP_KILL"],
        );
        check_sets(Some(&ok)).unwrap();
        check_sets(None).unwrap();
        let e = check_sets(Some(&caps(
            &["CAP_KILL", "CAP_SYS_ADMIN"],
            &["CAP_KILL"],
            &[],
            &[],
        )))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "process.capabilities.effective holds CAP_SYS_ADMIN outside the permitted set: {}",
                std::io::Error::from_raw_os_error(libc::EPERM)
            )
        );
        assert_eq!(super::super::sync::errno_of(&e), Some(libc::EPERM));
        let e = check_sets(Some(&caps(
            &[],
            &[],
            &["CAP_KILL", "CAP_NET_ADMIN"],
            &["CAP_KILL"],
        )))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("inheritable holds CAP_NET_ADMIN outside the bounding set"),
            "{e}"
        );
    }

    #[test]
    fn names() {
        assert_eq!(parse("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(parse("CAP_CHOWN").unwrap(), "CAP_CHOWN");
        assert_eq!(
            parse("CAP_FLY").unwrap_err().to_string(),
            "unknown capability \"CAP_FLY\""
        );
        for c in DOCKER_DEFAULT {
            parse(c).unwrap();
        }
    }
}

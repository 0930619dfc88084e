//! overlayfs mount options, built in one place: the layer list, the upper
//! and work directories, and the features amphi turns off.
//!
//! overlayfs splits its options on ',' and `lowerdir` on ':', and takes a
//! '\' before any character as that character; so each path is written
//! with '\', ':' and ',' escaped by a '\' (in mount(2) data and in
//! fsconfig(2) values alike).

use std::path::{Path, PathBuf};

/// The mount data of one page: the kernel reads no more.
pub const MAX_OPTIONS: usize = 4096;

/// The features turned off on every overlay amphi mounts: no inode index,
/// no redirects and no metadata-only copy-up, so that a layer is plain
/// files and only the files it holds.
const FEATURES_OFF: &str = "index=off,redirect_dir=off,metacopy=off";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OverlayError {
    #[error("{}: not UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("{layers} layers are too many for one overlay mount option string ({bytes} bytes)")]
    TooLong { layers: usize, bytes: usize },
}

/// `p` as overlayfs reads a path in its options.
pub fn escape(p: &Path) -> Result<String, OverlayError> {
    let s = p
        .to_str()
        .ok_or_else(|| OverlayError::NotUtf8(p.to_path_buf()))?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// The `lowerdir` value: `lowers`, top first, each escaped.
pub fn lowerdir<P: AsRef<Path>>(lowers: &[P]) -> Result<String, OverlayError> {
    let parts = lowers
        .iter()
        .map(|p| escape(p.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(":"))
}

/// The lower directories of a [`lowerdir`] value, top first: its inverse.
pub fn split_lowerdir(value: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ':' => out.push(PathBuf::from(std::mem::take(&mut cur))),
            c => cur.push(c),
        }
    }
    out.push(PathBuf::from(cur));
    out
}

/// The mount data for an overlay of `lowers` (top first) and, when it is
/// writable, `upper_work` (the upper and the work directory).
pub fn options<P: AsRef<Path>>(
    lowers: &[P],
    upper_work: Option<(&Path, &Path)>,
) -> Result<String, OverlayError> {
    let mut opts = format!("lowerdir={}", lowerdir(lowers)?);
    if let Some((upper, work)) = upper_work {
        opts += &format!(",upperdir={},workdir={}", escape(upper)?, escape(work)?);
    }
    opts += ",";
    opts += FEATURES_OFF;
    if opts.len() >= MAX_OPTIONS {
        return Err(OverlayError::TooLong {
            layers: lowers.len(),
            bytes: opts.len(),
        });
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn paths_are_escaped_for_overlayfs() {
        assert_eq!(escape(Path::new("/a/b")).unwrap(), "/a/b");
        assert_eq!(
            escape(Path::new(r"/x:y,z\w")).unwrap(),
            r"/x\:y\,z\\w".to_string()
        );
        let bad = Path::new(OsStr::from_bytes(b"/s\xff"));
        assert_eq!(escape(bad), Err(OverlayError::NotUtf8(bad.to_path_buf())));
        assert_eq!(
            escape(bad).unwrap_err().to_string(),
            "/s\u{fffd}: not UTF-8"
        );
    }

    #[test]
    fn options_name_the_layers_top_first_and_turn_features_off() {
        assert_eq!(
            options(&["top", "/bottom"], None).unwrap(),
            "lowerdir=top:/bottom,index=off,redirect_dir=off,metacopy=off"
        );
        assert_eq!(
            options(
                &[Path::new("/l:1"), Path::new("/l,2")],
                Some((Path::new("/u"), Path::new(r"/w\")))
            )
            .unwrap(),
            r"lowerdir=/l\:1:/l\,2,upperdir=/u,workdir=/w\\,index=off,redirect_dir=off,metacopy=off"
        );
    }

    #[test]
    fn lowerdir_round_trips() {
        let lowers = [r"/a:b", r"/c,d\", "/e", r"/\:"].map(PathBuf::from);
        let v = lowerdir(&lowers).unwrap();
        assert_eq!(v, r"/a\:b:/c\,d\\:/e:/\\\:");
        assert_eq!(split_lowerdir(&v), lowers);
        assert_eq!(split_lowerdir("/one"), [PathBuf::from("/one")]);
    }

    #[test]
    fn options_longer_than_a_page_are_refused() {
        let lowers: Vec<String> = (0..60).map(|i| format!("/{i:0>70}")).collect();
        assert_eq!(
            options(&lowers, None),
            Err(OverlayError::TooLong {
                layers: 60,
                bytes: 60 * 72 - 1 + "lowerdir=".len() + 1 + FEATURES_OFF.len()
            })
        );
        assert!(options(&lowers[..50], None).is_ok());
    }
}

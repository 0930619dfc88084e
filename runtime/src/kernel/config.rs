//! Kernel `.config` files: parsing, and the copy a kernel carries inside
//! itself when built with `CONFIG_IKCONFIG` (`IKCFG_ST`, gzip data, `IKCFG_ED`).

use std::collections::HashMap;
use std::io::Read;

/// A kernel config: `CONFIG_X` -> "y", "m" or the value (strings unquoted).
/// Options that are "not set" are absent.
pub type KernelConfig = HashMap<String, String>;

/// Why a config file was refused: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSyntax {
    pub line: usize,
    pub reason: String,
}

/// Parses a kernel `.config`. Blank lines and `#` comments (including
/// `# CONFIG_X is not set`) are allowed; every other line must be
/// `CONFIG_NAME=value`, and there must be at least one option.
pub fn parse(text: &[u8]) -> Result<KernelConfig, ConfigSyntax> {
    let text = std::str::from_utf8(text).map_err(|e| {
        let line = text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        ConfigSyntax {
            line,
            reason: "not UTF-8 text".into(),
        }
    })?;
    let mut out = KernelConfig::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| ConfigSyntax {
            line: i + 1,
            reason: reason.to_string(),
        };
        let Some((name, value)) = line.split_once('=') else {
            return Err(bad("expected CONFIG_NAME=value"));
        };
        if !is_option_name(name) {
            return Err(bad("expected CONFIG_NAME=value"));
        }
        let value = match value.strip_prefix('"') {
            Some(rest) => rest
                .strip_suffix('"')
                .ok_or_else(|| bad("unterminated string value"))?
                .replace("\\\"", "\"")
                .replace("\\\\", "\\"),
            None => value.to_string(),
        };
        out.insert(name.to_string(), value);
    }
    if out.is_empty() {
        return Err(ConfigSyntax {
            line: 0,
            reason: "no CONFIG_ options in it".into(),
        });
    }
    Ok(out)
}

/// `CONFIG_` followed by upper-case letters, digits and underscores.
pub fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// "PVH" or "CONFIG_PVH" -> "CONFIG_PVH".
pub fn option_name(name: &str) -> String {
    if name.starts_with("CONFIG_") {
        name.to_string()
    } else {
        format!("CONFIG_{name}")
    }
}

/// The config text a kernel image embeds (`CONFIG_IKCONFIG=y`), if any.
pub fn extract_ikconfig(image: &[u8]) -> Option<Vec<u8>> {
    const START: &[u8] = b"IKCFG_ST";
    let mut from = 0;
    // The marker also appears in code that looks for it; take the first one
    // followed by gzip data that decompresses to a config.
    while let Some(pos) = find(&image[from..], START) {
        let data = &image[from + pos + START.len()..];
        if data.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            let mut gz = flate2::read::GzDecoder::new(data);
            if gz.read_to_end(&mut out).is_ok() && parse(&out).is_ok() {
                return Some(out);
            }
        }
        from += pos + 1;
    }
    None
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_a_config() {
        let c = parse(
            b"#\n# Automatically generated file\n#\nCONFIG_CC_VERSION_TEXT=\"gcc (Debian 14.2.0) 14.2.0\"\n\
              CONFIG_64BIT=y\nCONFIG_NR_CPUS=64\n# CONFIG_MODULES is not set\nCONFIG_VIRTIO_BLK=m\n\n",
        )
        .unwrap();
        assert_eq!(c["CONFIG_64BIT"], "y");
        assert_eq!(c["CONFIG_VIRTIO_BLK"], "m");
        assert_eq!(c["CONFIG_NR_CPUS"], "64");
        assert_eq!(c["CONFIG_CC_VERSION_TEXT"], "gcc (Debian 14.2.0) 14.2.0");
        assert!(!c.contains_key("CONFIG_MODULES"));
    }

    #[test]
    fn refuses_what_is_not_a_config() {
        assert_eq!(parse(b"hello world\n").unwrap_err().line, 1);
        assert_eq!(parse(b"CONFIG_A=y\nlowercase_x=y\n").unwrap_err().line, 2);
        assert_eq!(parse(b"CONFIG_A=y\nCONFIG_S=\"open\n").unwrap_err().line, 2);
        assert_eq!(parse(b"# only comments\n\n").unwrap_err().line, 0);
        assert_eq!(parse(b"").unwrap_err().line, 0);
        let e = parse(b"CONFIG_A=y\n\xff\xfe\n").unwrap_err();
        assert_eq!((e.line, e.reason.as_str()), (2, "not UTF-8 text"));
        assert!(parse(b"CONFIG_=y\n").is_err());
    }

    #[test]
    fn names() {
        assert!(is_option_name("CONFIG_PVM_GUEST"));
        assert!(!is_option_name("CONFIG_pvm"));
        assert!(!is_option_name("PVM_GUEST"));
        assert_eq!(option_name("PVH"), "CONFIG_PVH");
        assert_eq!(option_name("CONFIG_PVH"), "CONFIG_PVH");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn extracts_an_embedded_config() {
        let cfg = b"CONFIG_IKCONFIG=y\nCONFIG_PVM_GUEST=y\n";
        let mut image = b"\x7fELF....code mentions IKCFG_ST here....".to_vec();
        image.extend_from_slice(b"IKCFG_ST");
        image.extend_from_slice(&gzip(cfg));
        image.extend_from_slice(b"IKCFG_ED trailing");
        assert_eq!(extract_ikconfig(&image).unwrap(), cfg);
        assert_eq!(extract_ikconfig(b"no marker here"), None);
        // A marker followed by something that is not gzip.
        assert_eq!(extract_ikconfig(b"IKCFG_ST\x1f\x8bgarbage"), None);
    }

    #[test]
    fn finds() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aaab", b"ab"), Some(2));
        assert_eq!(find(b"xyz", b"z"), Some(2));
    }
}

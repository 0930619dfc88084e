//! Kernel versions: `major.minor.patch`, as `make kernelversion` and `uname -r` start.

use super::KernelError;
use std::fmt;
use std::str::FromStr;

/// A kernel version such as 6.12.57. Ordered numerically (6.1 < 6.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses the leading `X.Y[.Z]` of a version or release string: "6.12.57",
    /// "6.1", "6.12.57-amd64", "6.1.0-rc3+". A missing patch level is 0.
    pub fn parse(s: &str) -> Result<Self, KernelError> {
        let bad = || KernelError::BadVersion(s.to_string());
        let head = s
            .trim()
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .unwrap_or("");
        let mut parts = head.split('.');
        let mut num = |required: bool| -> Result<u32, KernelError> {
            match parts.next() {
                Some(p) if !p.is_empty() => p.parse().map_err(|_| bad()),
                Some(_) => Err(bad()),
                None if required => Err(bad()),
                None => Ok(0),
            }
        };
        let v = KernelVersion::new(num(true)?, num(true)?, num(false)?);
        // Anything after the patch level must not be a fourth number ("6.1.2.3").
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }

    /// The series, "6.12": what a Debian `linux-source-<series>` package is named by.
    pub fn series(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl FromStr for KernelVersion {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, KernelError> {
        KernelVersion::parse(s)
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl serde::Serialize for KernelVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KernelVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KernelVersion::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_and_releases() {
        assert_eq!(
            KernelVersion::parse("6.12.57").unwrap(),
            KernelVersion::new(6, 12, 57)
        );
        assert_eq!(
            KernelVersion::parse("6.1").unwrap(),
            KernelVersion::new(6, 1, 0)
        );
        assert_eq!(
            KernelVersion::parse("6.12.57-amd64").unwrap(),
            KernelVersion::new(6, 12, 57)
        );
        assert_eq!(
            KernelVersion::parse("6.1.0-rc3+").unwrap(),
            KernelVersion::new(6, 1, 0)
        );
        assert_eq!(
            KernelVersion::parse(" 6.12.57\n").unwrap(),
            KernelVersion::new(6, 12, 57)
        );
        for bad in ["", "6", "six.1", "6.", "6..1", "6.1.2.3", "-6.1", "v6.1"] {
            assert!(KernelVersion::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn orders_numerically_and_displays() {
        let a = KernelVersion::parse("6.1.150").unwrap();
        let b = KernelVersion::parse("6.12.1").unwrap();
        assert!(a < b);
        assert!(KernelVersion::new(6, 12, 9) < KernelVersion::new(6, 12, 10));
        assert_eq!(b.to_string(), "6.12.1");
        assert_eq!(b.series(), "6.12");
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"6.12.1\"");
        assert_eq!(serde_json::from_str::<KernelVersion>(&json).unwrap(), b);
    }
}

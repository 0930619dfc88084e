//! Kernel version constraints: `>=6.1, <6.2`, `<6.13`, `=6.12`.
//!
//! Comma-separated comparators, all of which must hold. Operators: `>=`,
//! `>`, `<=`, `<`, `=` (also `==`); a bare version means `=`. Versions are
//! `X`, `X.Y` or `X.Y.Z`, and a partial version stands for every version it
//! is a prefix of (as in Cargo): `=6.12` is any 6.12.z, `<=6.12` includes
//! 6.12.57, `>6.1` starts at 6.2.0, `<6.13` ends before 6.13.0.

use crate::kernel::KernelVersion;
use std::cmp::Ordering;
use std::fmt;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

/// `X`, `X.Y` or `X.Y.Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialVersion {
    pub major: u32,
    pub minor: Option<u32>,
    pub patch: Option<u32>,
}

impl PartialVersion {
    /// Compares `v` with this prefix: Equal when `v` starts with it.
    fn cmp_prefix(&self, v: &KernelVersion) -> Ordering {
        v.major
            .cmp(&self.major)
            .then_with(|| self.minor.map_or(Ordering::Equal, |m| v.minor.cmp(&m)))
            .then_with(|| self.patch.map_or(Ordering::Equal, |p| v.patch.cmp(&p)))
    }

    fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > 3 {
            return Err(format!("{s:?} is not a version (X, X.Y or X.Y.Z)"));
        }
        let mut nums = Vec::with_capacity(3);
        for p in &parts {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?} is not a version (X, X.Y or X.Y.Z)"));
            }
            nums.push(
                p.parse::<u32>()
                    .map_err(|_| format!("{s:?}: number too large"))?,
            );
        }
        Ok(PartialVersion {
            major: nums[0],
            minor: nums.get(1).copied(),
            patch: nums.get(2).copied(),
        })
    }
}

impl fmt::Display for PartialVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.major)?;
        if let Some(m) = self.minor {
            write!(f, ".{m}")?;
        }
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        Ok(())
    }
}

/// One `OP VERSION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparator {
    pub op: Op,
    pub version: PartialVersion,
}

impl Comparator {
    /// Whether `v` satisfies this comparator.
    pub fn matches(&self, v: &KernelVersion) -> bool {
        let c = self.version.cmp_prefix(v);
        match self.op {
            Op::Eq => c == Ordering::Equal,
            Op::Gt => c == Ordering::Greater,
            Op::Ge => c != Ordering::Less,
            Op::Lt => c == Ordering::Less,
            Op::Le => c != Ordering::Greater,
        }
    }
}

impl fmt::Display for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op.as_str(), self.version)
    }
}

/// A version constraint: every comparator must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConstraint {
    pub comparators: Vec<Comparator>,
}

impl VersionConstraint {
    /// Parses `>=6.1, <6.2`. The error says what is wrong (without the key).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut comparators = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err("empty comparator (expected e.g. \">=6.1, <6.13\")".into());
            }
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("==", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| item.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, item));
            let rest = rest.trim();
            if rest.is_empty() {
                return Err(format!("{item:?} has no version after the operator"));
            }
            let version = PartialVersion::parse(rest).map_err(|e| {
                format!("{e}; comparators are >=, >, <=, <, = or == followed by a version")
            })?;
            comparators.push(Comparator { op, version });
        }
        Ok(VersionConstraint { comparators })
    }

    /// Whether `v` satisfies every comparator.
    pub fn matches(&self, v: &KernelVersion) -> bool {
        self.comparators.iter().all(|c| c.matches(v))
    }

    /// Whether some version of the series `major.minor` satisfies it.
    pub fn allows_series(&self, major: u32, minor: u32) -> bool {
        let mut patches = vec![0, u32::MAX];
        for c in &self.comparators {
            if let Some(p) = c.version.patch {
                patches.extend([p.saturating_sub(1), p, p.saturating_add(1)]);
            }
        }
        patches
            .into_iter()
            .any(|p| self.matches(&KernelVersion::new(major, minor, p)))
    }

    /// The first of `series` ("6.12", "6.1", ...) that the constraint allows.
    pub fn first_allowed_series<'a>(&self, series: &[&'a str]) -> Option<&'a str> {
        series
            .iter()
            .copied()
            .find(|s| KernelVersion::parse(s).is_ok_and(|v| self.allows_series(v.major, v.minor)))
    }
}

impl fmt::Display for VersionConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.comparators.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for VersionConstraint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VersionConstraint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VersionConstraint::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KernelVersion {
        KernelVersion::parse(s).unwrap()
    }

    #[test]
    fn matches_table() {
        let cases: &[(&str, &str, bool)] = &[
            (">=6.1, <6.2", "6.1.0", true),
            (">=6.1, <6.2", "6.1.150", true),
            (">=6.1, <6.2", "6.2.0", false),
            (">=6.1, <6.2", "6.0.99", false),
            ("<6.13", "6.12.57", true),
            ("<6.13", "6.13.0", false),
            ("<6.13", "6.18.3", false),
            ("=6.12", "6.12.0", true),
            ("=6.12", "6.12.57", true),
            ("=6.12", "6.1.0", false),
            ("==6.12", "6.12.9", true),
            ("6.12", "6.12.9", true),
            ("=6", "6.18.3", true),
            ("=6.12.57", "6.12.57", true),
            ("=6.12.57", "6.12.58", false),
            (">=5.15", "6.1.0", true),
            (">=5.15", "5.14.21", false),
            (">6.1", "6.1.150", false),
            (">6.1", "6.2.0", true),
            (">6.1.5", "6.1.6", true),
            ("<=6.12", "6.12.57", true),
            ("<=6.12", "6.13.0", false),
            (">=6", "6.0.0", true),
            ("<6", "5.99.0", true),
            ("<6", "6.0.0", false),
        ];
        for (c, ver, want) in cases {
            let parsed = VersionConstraint::parse(c).unwrap();
            assert_eq!(parsed.matches(&v(ver)), *want, "{c} vs {ver}");
        }
    }

    #[test]
    fn parses_and_displays() {
        let c = VersionConstraint::parse(" >= 6.1 ,<6.2").unwrap();
        assert_eq!(c.to_string(), ">=6.1, <6.2");
        assert_eq!(
            VersionConstraint::parse("==6.12").unwrap().to_string(),
            "=6.12"
        );
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            "\">=6.1, <6.2\"".to_string()
        );
        for bad in [
            "",
            ",",
            ">=6.1,",
            ">=",
            ">=six",
            "~6.1",
            ">=6.1.2.3",
            ">=v6.1",
            "6.",
            "6..1",
            "=>6.1",
            ">=6.1 <6.2",
            "99999999999",
        ] {
            assert!(VersionConstraint::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn series_suggestions() {
        let series = ["6.12", "6.1"];
        let first = |c: &str| {
            VersionConstraint::parse(c)
                .unwrap()
                .first_allowed_series(&series)
        };
        assert_eq!(first(">=6.1, <6.2"), Some("6.1"));
        assert_eq!(first("<6.13"), Some("6.12"));
        assert_eq!(first(">=5.15"), Some("6.12"));
        assert_eq!(first("=6.12"), Some("6.12"));
        assert_eq!(first(">=6.12.50"), Some("6.12"));
        assert_eq!(first(">=6.12.3, <6.12.5"), Some("6.12"));
        assert_eq!(first(">=6.13"), None);
        assert_eq!(first("<6.1"), None);
    }
}

//! Process arguments and environment entries as C strings for exec. A C
//! string ends at its first NUL byte, so an argument or a variable holding
//! one (from an image config, a bundle or a `--process` file) would reach
//! the program cut short or empty: it is refused instead, naming the
//! argument's index or the variable's name.

use std::ffi::CString;

/// An argument or environment entry that cannot be passed to exec.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NulByte {
    #[error("process argument {index} ({value:?}) contains a NUL byte")]
    Argument { index: usize, value: String },
    #[error("environment variable {name:?} (entry {index}) contains a NUL byte")]
    Environment { index: usize, name: String },
}

impl NulByte {
    /// The index of the argument or environment entry.
    pub fn index(&self) -> usize {
        match self {
            NulByte::Argument { index, .. } | NulByte::Environment { index, .. } => *index,
        }
    }
}

/// Checks that no argument contains a NUL byte.
pub fn check_args(args: &[String]) -> Result<(), NulByte> {
    match args.iter().position(|a| a.contains('\0')) {
        Some(index) => Err(argument_error(index, &args[index])),
        None => Ok(()),
    }
}

/// Checks that no `NAME=value` entry contains a NUL byte.
pub fn check_env(env: &[String]) -> Result<(), NulByte> {
    match env.iter().position(|e| e.contains('\0')) {
        Some(index) => Err(environment_error(index, &env[index])),
        None => Ok(()),
    }
}

/// The arguments as C strings, or the first one holding a NUL byte.
pub fn args(args: &[String]) -> Result<Vec<CString>, NulByte> {
    args.iter()
        .enumerate()
        .map(|(i, a)| CString::new(a.as_str()).map_err(|_| argument_error(i, a)))
        .collect()
}

/// The environment as C strings, or the first entry holding a NUL byte.
pub fn env(env: &[String]) -> Result<Vec<CString>, NulByte> {
    env.iter()
        .enumerate()
        .map(|(i, e)| CString::new(e.as_str()).map_err(|_| environment_error(i, e)))
        .collect()
}

fn argument_error(index: usize, value: &str) -> NulByte {
    NulByte::Argument {
        index,
        value: value.to_string(),
    }
}

/// Names the variable by what comes before the first `=` (the whole entry
/// when there is none).
fn environment_error(index: usize, entry: &str) -> NulByte {
    let name = entry.split_once('=').map_or(entry, |(n, _)| n);
    NulByte::Environment {
        index,
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn converts_clean_arguments_and_environment() {
        let a = args(&strings(&["/bin/echo", "a b", ""])).unwrap();
        assert_eq!(
            a,
            vec![c"/bin/echo".to_owned(), c"a b".to_owned(), c"".to_owned()]
        );
        let e = env(&strings(&["PATH=/bin", "EMPTY="])).unwrap();
        assert_eq!(e, vec![c"PATH=/bin".to_owned(), c"EMPTY=".to_owned()]);
    }

    #[test]
    fn refuses_a_nul_byte_in_an_argument_naming_its_index() {
        let err = args(&strings(&["/bin/echo", "ok", "a\0b"])).unwrap_err();
        assert_eq!(
            err,
            NulByte::Argument {
                index: 2,
                value: "a\0b".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#"process argument 2 ("a\0b") contains a NUL byte"#
        );
        // Also at the very start or end.
        assert!(matches!(
            check_args(&strings(&["\0x"])),
            Err(NulByte::Argument { index: 0, .. })
        ));
        assert!(matches!(
            check_args(&strings(&["x", "x\0"])),
            Err(NulByte::Argument { index: 1, .. })
        ));
    }

    #[test]
    fn refuses_a_nul_byte_in_the_environment_naming_the_variable() {
        let err = env(&strings(&["PATH=/bin", "SECRET=a\0b"])).unwrap_err();
        assert_eq!(
            err,
            NulByte::Environment {
                index: 1,
                name: "SECRET".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#"environment variable "SECRET" (entry 1) contains a NUL byte"#
        );
        // A NUL in the name itself, or an entry without `=`.
        assert_eq!(
            check_env(&strings(&["A\0B=1"])).unwrap_err().to_string(),
            r#"environment variable "A\0B" (entry 0) contains a NUL byte"#
        );
        assert!(matches!(
            check_env(&strings(&["OK=1", "JUNK\0"])),
            Err(NulByte::Environment { index: 1, .. })
        ));
    }
}

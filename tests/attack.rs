//! `amphi-attack`: what a hostile workload tries from inside a container,
//! one attack a subcommand, each printing what the attacker got (`ok`, or
//! the errno's name). Built static with the workspace and copied into test
//! images by the escape tests.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::ffi::CString;

fn errno_name(e: i32) -> String {
    match e {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ENXIO => "ENXIO".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::EROFS => "EROFS".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EINVAL => "EINVAL".into(),
        e => format!("errno {e}"),
    }
}

fn last() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let out = match arg(0).as_str() {
        // io_uring_setup(4, &params): the seccomp profile should refuse it.
        "io-uring" => {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup with a zeroed params struct of the
            // kernel's size.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
            if fd >= 0 {
                "ok".to_string()
            } else {
                last()
            }
        }
        // open PATH r|w|rw
        "open" => {
            let flags = match arg(2).as_str() {
                "w" => libc::O_WRONLY,
                "rw" => libc::O_RDWR,
                _ => libc::O_RDONLY,
            };
            let p = CString::new(arg(1)).unwrap();
            // SAFETY: open with a valid C string.
            let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if fd >= 0 {
                "ok".to_string()
            } else {
                last()
            }
        }
        // mknod PATH b|c MAJOR MINOR
        "mknod" => {
            let kind = if arg(2) == "b" {
                libc::S_IFBLK
            } else {
                libc::S_IFCHR
            };
            let (maj, min) = (arg(3).parse().unwrap_or(0), arg(4).parse().unwrap_or(0));
            let p = CString::new(arg(1)).unwrap();
            // SAFETY: mknod with a valid C string.
            if unsafe { libc::mknod(p.as_ptr(), kind | 0o600, libc::makedev(maj, min)) } == 0 {
                "ok".to_string()
            } else {
                last()
            }
        }
        other => {
            eprintln!("amphi-attack: unknown attack {other:?} (io-uring, open, mknod)");
            std::process::exit(2);
        }
    };
    println!("{out}");
}

use clap::Parser;

fn main() {
    // PID 1 of a microVM: the guest init (no command line to parse).
    if amphi::guest::is_guest_init() {
        amphi::guest::main();
    }
    // A container's setup stage: a container process that executed
    // amphi's sealed binary (container::setup, container::sealed).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some((fd, go)) = amphi::container::setup::setup_stage_args(&args) {
        amphi::container::setup::setup_stage_main(fd, go);
    }
    let cli = match amphi::cli::Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            // A command line amphi cannot parse still names the caller's
            // console socket: hang it up, so the caller is not left waiting.
            if e.kind() != clap::error::ErrorKind::DisplayHelp
                && e.kind() != clap::error::ErrorKind::DisplayVersion
            {
                let sock = amphi::cli::console_socket_arg(&args);
                amphi::oci::hang_up(sock.as_deref());
            }
            e.exit()
        }
    };
    let level = if cli.debug {
        "debug"
    } else {
        cli.log_level.as_str()
    };
    amphi::cli::init_logging(level, &cli.log_format);
    match amphi::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("amphi: error: {e:#}");
            std::process::exit(amphi::cli::EXIT_AMPHI);
        }
    }
}

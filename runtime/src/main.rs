use clap::Parser;

fn main() {
    // PID 1 of a microVM: the guest init (no command line to parse).
    if amphi::guest::is_guest_init() {
        amphi::guest::main();
    }
    // A container's setup stage: a container process that executed
    // amphi's sealed binary (container::init, container::sealed).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some((fd, go)) = amphi::container::init::setup_stage_args(&args) {
        amphi::container::init::setup_stage_main(fd, go);
    }
    let cli = amphi::cli::Cli::parse_from(args);
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

use clap::Parser;

fn main() {
    // PID 1 of a microVM: the guest init (no command line to parse).
    if amphi::guest::is_guest_init() {
        amphi::guest::main();
    }
    let cli = amphi::cli::Cli::parse();
    // Commands that start container processes do so from a sealed copy of
    // the binary (container::sealed): re-executed from it here, first.
    if cli.command.starts_containers() {
        if let Err(e) = amphi::container::sealed::ensure() {
            eprintln!("amphi: error: {e}");
            std::process::exit(amphi::cli::EXIT_AMPHI);
        }
    }
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

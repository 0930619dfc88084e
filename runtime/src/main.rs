use clap::Parser;

fn main() {
    let cli = amphi::cli::Cli::parse();
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

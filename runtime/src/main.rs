use clap::Parser;

fn main() {
    let cli = amphi::cli::Cli::parse();
    amphi::cli::init_logging(&cli.log_level, &cli.log_format);
    match amphi::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("amphi: error: {e:#}");
            std::process::exit(amphi::cli::EXIT_AMPHI);
        }
    }
}

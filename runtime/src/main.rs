use clap::Parser;

fn main() {
    let cli = amphi::cli::Cli::parse();
    amphi::cli::init_logging(&cli.log_level, &cli.log_format);
    if let Err(e) = amphi::cli::run(cli) {
        eprintln!("amphi: error: {e:#}");
        std::process::exit(amphi::cli::EXIT_AMPHI);
    }
}

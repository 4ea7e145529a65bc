use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use lb::cli::{Cli, Command};
use lb::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    lb::init_logging();
    if let Some(Command::Demo { listen }) = cli.command {
        return match lb::demo::run(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        };
    }
    let Some(path) = cli.server.conf.clone() else {
        return fail("no configuration file: give one with -c FILE (or try `lb demo`)");
    };
    let config = match Config::load(Path::new(&path)) {
        Ok(config) => config,
        Err(e) => return fail(&format!("{path}: {e}")),
    };
    if cli.server.test {
        println!("lb: configuration file {path} is valid");
        return ExitCode::SUCCESS;
    }
    if !cli.server.upgrade {
        if let Err(e) = lb::server::check_listen(&config.lb.listen) {
            return fail(&e.to_string());
        }
    }
    lb::server::build(cli.server, config).run_forever()
}

fn fail(message: &str) -> ExitCode {
    eprintln!("lb: {message}");
    ExitCode::FAILURE
}

//! parse → logging → run → exit code. Nothing else.

use mpsync::cli::Cli;

fn main() {
    mpsync::supervise::signals::catch_early();
    let exit = match Cli::parse_args() {
        Ok(cli) => {
            mpsync::logging::init(cli.log_format, cli.verbose, cli.quiet);
            cli.into_config().and_then(mpsync::run::run)
        }
        Err(err) => Err(err),
    };
    let exit = match exit {
        Ok(exit) => exit,
        Err(err) => {
            mpsync::logging::flush();
            mpsync::logging::print_error(&err.to_string());
            err.exit()
        }
    };
    mpsync::logging::flush();
    mpsync::exit::exit_process(exit);
}

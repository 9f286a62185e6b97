//! The `keyferry` command, built in this package for the end-to-end tests
//! (tests/end_to_end): cargo builds a package's own binaries before its
//! integration tests, and no other package's.

fn main() -> std::process::ExitCode {
    keyferry_cli::main()
}

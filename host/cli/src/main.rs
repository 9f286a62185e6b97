//! The `keyferry` command: a TLS server and client whose handshakes run in
//! this trusted process and whose data plane runs in a WebAssembly sandbox.
//! The program is [`keyferry_cli::main`].

fn main() -> std::process::ExitCode {
    keyferry_cli::main()
}

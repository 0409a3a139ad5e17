//! The `cdrvault` binary; the command line lives in [`cdrvault::cli`].

fn main() -> std::process::ExitCode {
    cdrvault::cli::main()
}

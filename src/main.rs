//! The `imagelock` binary: parse the command line, hand over to the library.

fn main() -> std::process::ExitCode {
    imagelock::cli::main()
}

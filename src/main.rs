fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(principal_reconciler::cli::main())
}

pub fn run(_once: bool) -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}

//! `weft-proxy`: the sidecar. See `weft_proxy::run`.

fn main() -> std::process::ExitCode {
    weft_proxy::run::main()
}

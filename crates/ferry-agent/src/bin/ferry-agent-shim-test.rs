//! A stand-in for the `ferry` binary's hidden `ferry __shim <run-dir>` subcommand, so the agent crate's tests run
//! real supervisors. It must never do anything the real subcommand does not.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [command, run_dir] if command == "__shim" => std::process::exit(ferry_agent::shim_main(run_dir.as_ref())),
        _ => {
            eprintln!("usage: ferry-agent-shim-test __shim <run-dir>");
            std::process::exit(2);
        }
    }
}

//! A stand-in for the `ferry` binary's hidden `ferry __shim <run-dir>` and `ferry __isolate <run-dir>` subcommands,
//! so the agent crate's tests run real supervisors and real isolated jobs. It must never do anything the real
//! subcommands do not.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [command, run_dir] if command == "__shim" => std::process::exit(ferry_agent::shim_main(run_dir.as_ref())),
        [command, run_dir] if command == "__isolate" => {
            std::process::exit(ferry_agent::isolate::main(run_dir.as_ref()))
        }
        _ => {
            eprintln!("usage: ferry-agent-shim-test __shim|__isolate <run-dir>");
            std::process::exit(2);
        }
    }
}

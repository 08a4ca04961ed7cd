//! The start-up script a cloud machine runs at its first boot (its user data): it starts `ferry agent`, which joins
//! the server as the node the machine was launched to be, with a join token made for that node alone.

/// Quotes `text` for a POSIX shell: single quotes, with each single quote closed, escaped and reopened.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The script of `node` in `pool`, joining `server` with `join` (the join token, with the server's certificate
/// authority's fingerprint after `#` when the server has its own). `bootstrap` runs first (installing Ferry, say).
pub fn script(server: &str, node: &str, pool: &str, join: &str, bootstrap: &str) -> String {
    let mut out = String::from("#!/bin/sh\n");
    out.push_str(&format!(
        "# Written by the Ferry server: this machine joins pool {pool} as node {node}. The join token below works for\n\
         # this node only, and only until the pool's start-up timeout unless the agent has joined by then.\n"
    ));
    out.push_str("set -eu\n");
    if !bootstrap.trim().is_empty() {
        out.push_str("# The pool's bootstrap:\n");
        out.push_str(bootstrap.trim_end());
        out.push('\n');
    }
    out.push_str(
        "# Jobs run as users other than root: keep them from reading this script, and its token, from the instance\n\
         # metadata service.\n\
         if command -v iptables >/dev/null 2>&1; then\n\
         \x20   iptables -I OUTPUT -d 169.254.169.254 -m owner ! --uid-owner 0 -j DROP || true\n\
         fi\n\
         export FERRY_HOME=\"${FERRY_HOME:-/var/lib/ferry}\"\n",
    );
    out.push_str(&format!("export FERRY_JOIN_TOKEN={}\n", quote(join)));
    out.push_str(&format!(
        "exec ferry --server {} agent --single-use-token --name {} --pool {}\n",
        quote(server),
        quote(node),
        quote(pool)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_starts_the_agent_as_its_node_with_everything_quoted() {
        let script =
            script("http://10.0.0.1:7750", "aws-spot-3", "aws-spot", "ferry_abc", "apt-get install -y ferry\n");
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("\napt-get install -y ferry\n# Jobs run"));
        assert!(script.contains("export FERRY_JOIN_TOKEN='ferry_abc'\n"));
        assert!(script
            .ends_with("exec ferry --server 'http://10.0.0.1:7750' agent --single-use-token --name 'aws-spot-3' --pool 'aws-spot'\n"));
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_script_runs_in_a_real_shell_and_hands_the_agent_its_arguments() {
        // `ferry` here is a stand-in that prints what it was given; the PATH leaves out /usr/sbin, so that no
        // iptables rule is added to this machine.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("ferry");
        std::fs::write(&fake, "#!/bin/sh\necho \"$FERRY_JOIN_TOKEN|$FERRY_HOME|$*\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = script("http://s:1", "p-1", "p", "tok'en", "");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("FERRY_HOME", "/tmp/x")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "tok'en|/tmp/x|--server http://s:1 agent --single-use-token --name p-1 --pool p\n"
        );
    }
}

//! Every TOML snippet of the README loads as what it shows: a server configuration (`ferry up --config`), an
//! agent's configuration (`--agent-config`), or a sweep file. A snippet that loads as none of them fails with what
//! each reader said, so that the README cannot drift from the parsers (a key placed after `[[pool]]` tables belongs
//! to the last pool, for example, and is refused there).

use std::path::Path;

/// The TOML blocks of a Markdown text, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some((number + 1, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A kubeconfig that loads (it is never used to connect), standing in for the one a snippet names on the user's
/// machine.
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n\
users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n";

fn loads(text: &str) -> Result<&'static str, String> {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let text = &text.replace("/etc/ferry/kubeconfig", kubeconfig.to_str().unwrap());
    let server = match ferry_server::FileConfig::parse(text) {
        Ok(_) => return Ok("server configuration"),
        Err(e) => e,
    };
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let base = ferry_agent::AgentConfig::new("http://127.0.0.1:7750", "t", dir.path().into(), "/bin/true".into());
    let agent = match ferry_agent::AgentConfig::from_toml_file(&file, base) {
        Ok(_) => return Ok("agent configuration"),
        Err(e) => e.to_string(),
    };
    let sweep = match ferry_sweep::SweepSpec::parse(text) {
        Ok(_) => return Ok("sweep file"),
        Err(e) => e.to_string(),
    };
    Err(format!("as a server configuration: {server}\nas an agent configuration: {agent}\nas a sweep file: {sweep}"))
}

#[test]
fn every_toml_snippet_of_the_readme_loads() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let blocks = toml_blocks(&readme);
    assert!(blocks.len() >= 7, "found only {} TOML blocks; did the README's fences change?", blocks.len());
    let failures: Vec<String> = blocks
        .iter()
        .filter_map(|(line, text)| loads(text).err().map(|e| format!("README.md line {line}:\n{e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_key_after_the_pool_tables_is_caught() {
    let text = "[[pool]]\nname = \"local\"\norder = 0\n\nfair_share_half_life = \"24h\"\n";
    assert!(loads(text).is_err(), "the key belongs to the last pool, where it is unknown");
    assert_eq!(toml_blocks("a\n```toml\nx = 1\n```\n```sh\ny\n```\n"), [(2, "x = 1\n".to_string())]);
}

//! docs/getting-started.md works as written: its shell blocks for the Redis
//! ambassador and the mTLS tunnel run as pasted, with no pause between
//! lines (the page waits for its listeners with `attache wait`), against
//! the local Redis, with the attache under test on PATH.

use std::path::Path;

use attache_integration::binary;

#[test]
fn the_getting_started_commands_work_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let page = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let blocks: Vec<&str> = page
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3, "build, Redis ambassador, mTLS tunnel");
    // The build is what the test harness did already; run the other two.
    let mut script = format!(
        "set -m\nexport PATH=\"{}:$PATH\"\n",
        binary().parent().unwrap().display()
    );
    for block in &blocks[1..] {
        for line in block.replace("\\\n", "").lines() {
            script.push_str(line);
            script.push('\n');
        }
    }
    // Run where the page's relative paths resolve, without writing pki/ into the repository.
    let directory = tempfile::tempdir().unwrap();
    let examples = directory.path().join("config/examples");
    std::fs::create_dir_all(&examples).unwrap();
    for entry in std::fs::read_dir(root.join("config/examples")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, examples.join(path.file_name().unwrap())).unwrap();
    }
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(directory.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "OK\nhello\n",
        "attache_redis_commands_total{listener=\"redis\",command=\"get\",result=\"ok\"} 1",
        "wrote pki/app.crt",
        "PONG",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // The tunnel's handshake, and `attache wait`'s connection through the
    // ambassador, which makes one too.
    let handshakes = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("attache_tls_handshakes_total{listener=\"tcp\",result=\"ok\"} ")
        })
        .unwrap_or_else(|| panic!("no successful handshake counted in:\n{stdout}"));
    assert!(handshakes.parse::<f64>().unwrap() >= 1.0, "{stdout}");
}

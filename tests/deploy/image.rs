//! The Dockerfile, read instruction by instruction, and the image it builds checked against the
//! pod that runs it.

use std::collections::BTreeSet;
use std::path::Path;

use yaml_rust2::Yaml;

use crate::manifests::{list, text, Pod};
use crate::{read, DOCKERFILE, SIDECAR};

/// One `FROM` of the Dockerfile and what follows it.
pub struct Stage {
    /// The image it starts from.
    base: String,
    /// Its `AS` name.
    name: Option<String>,
    /// (INSTRUCTION, arguments), continuation lines joined, comments left out.
    instructions: Vec<(String, String)>,
}

impl Stage {
    /// The arguments of every `instruction` in the stage, in order.
    fn all<'a>(&'a self, instruction: &str) -> impl Iterator<Item = &'a str> + 'a {
        let instruction = instruction.to_owned();
        self.instructions
            .iter()
            .filter(move |(i, _)| *i == instruction)
            .map(|(_, args)| args.as_str())
    }

    /// The last of `instruction` in the stage (the one in force).
    pub fn last(&self, instruction: &str) -> Option<&str> {
        self.all(instruction).last()
    }

    /// Its `WORKDIR`, `/` if none.
    fn workdir(&self) -> &str {
        self.last("WORKDIR").unwrap_or("/")
    }
}

/// The stages of deploy/Dockerfile, in order.
pub fn dockerfile() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = String::new();
    for line in read(DOCKERFILE).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && logical.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(trimmed);
        let whole = std::mem::take(&mut logical);
        let (instruction, args) = whole.split_once(char::is_whitespace).unwrap_or((&whole, ""));
        let instruction = instruction.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                base: words.first().map(|w| (*w).to_owned()).unwrap_or_default(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{DOCKERFILE}: {instruction} before the first FROM"))
                .instructions
                .push((instruction, args));
        }
    }
    stages
}

/// An instruction's exec form (`["a", "b"]`); `None` for the shell form.
pub fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// COPY's flags (`--from=build`) and its words: the sources, then the destination.
fn copy_parts(args: &str) -> (Vec<&str>, Vec<String>) {
    let mut rest = args.trim();
    let mut flags = Vec::new();
    while rest.starts_with("--") {
        let (flag, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag);
        rest = after.trim_start();
    }
    let words = exec_form(rest).unwrap_or_else(|| rest.split_whitespace().map(str::to_owned).collect());
    (flags, words)
}

/// `path` made absolute against `workdir`, without `.` segments and trailing slashes.
fn absolute(workdir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{workdir}/{path}")
    };
    let parts: Vec<&str> = joined.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    format!("/{}", parts.join("/"))
}

/// A Debian release's number, from an image tag's codename or `debianNN`.
fn debian_release(image: &str) -> Option<u32> {
    [("bullseye", 11), ("bookworm", 12), ("trixie", 13)]
        .iter()
        .find(|(codename, _)| image.contains(codename))
        .map(|(_, n)| *n)
        .or_else(|| {
            let digits: String = image
                .split("debian")
                .nth(1)?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
}

/// `"1.85"` or `"1.95.0"` as (major, minor).
fn rust_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[test]
fn the_container_runs_as_the_images_user_without_privileges() {
    let pod = Pod::load();
    let security = &pod.sidecar["securityContext"];
    let pod_security = &pod.spec["securityContext"];
    // A container's own setting wins over the pod's.
    let field = |key: &str| match &security[key] {
        Yaml::BadValue => &pod_security[key],
        value => value,
    };
    assert_eq!(
        field("runAsNonRoot").as_bool(),
        Some(true),
        "container {SIDECAR:?}: runAsNonRoot: true"
    );
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "container {SIDECAR:?}: readOnlyRootFilesystem: true (ssegate writes no file)"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "container {SIDECAR:?}: allowPrivilegeEscalation: false"
    );
    let dropped: Vec<&str> = list(&security["capabilities"]["drop"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        dropped.contains(&"ALL"),
        "container {SIDECAR:?}: capabilities.drop should hold ALL, has {dropped:?}"
    );
    assert!(
        security["capabilities"]["add"].is_badvalue(),
        "container {SIDECAR:?} adds capabilities; ssegate needs none"
    );

    let runtime = dockerfile().pop().expect("a stage");
    let user = runtime
        .last("USER")
        .unwrap_or_else(|| panic!("{DOCKERFILE}: the last stage has no USER, so the image runs as root"));
    let (uid, gid) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let uid: i64 = uid.parse().unwrap_or_else(|_| {
        panic!("{DOCKERFILE}: USER {user} should be numeric: runAsNonRoot cannot verify a user name, and the runtime image may have no /etc/passwd entry")
    });
    assert_ne!(uid, 0, "{DOCKERFILE}: USER {user} is root");
    if let Some(run_as) = field("runAsUser").as_i64() {
        assert_eq!(
            run_as, uid,
            "the pod runs {SIDECAR:?} as uid {run_as}, the image's USER is {uid} ({DOCKERFILE})"
        );
    }
    if let (Some(gid), Some(run_as)) = (gid, field("runAsGroup").as_i64()) {
        assert_eq!(
            Ok(run_as),
            gid.parse::<i64>(),
            "the pod's runAsGroup and the image's USER group differ"
        );
    }
}

#[test]
fn the_image_is_built_by_cargo_from_the_locked_dependencies() {
    let stages = dockerfile();
    assert!(
        stages.len() >= 2,
        "{DOCKERFILE}: a build stage and a runtime stage, found {} stage(s)",
        stages.len()
    );
    let runtime = stages.last().expect("a stage");
    let from = runtime
        .all("COPY")
        .find_map(|args| {
            copy_parts(args)
                .0
                .iter()
                .find_map(|f| f.strip_prefix("--from=").map(str::to_owned))
        })
        .unwrap_or_else(|| panic!("{DOCKERFILE}: the last stage copies nothing from a build stage"));
    let build = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(from.as_str()))
        .unwrap_or_else(|| panic!("{DOCKERFILE}: COPY --from={from} names no stage"));
    assert!(
        build.all("RUN").any(|run| run.contains("cargo build") && run.contains("--release") && run.contains("--locked")),
        "{DOCKERFILE}: the {from} stage should run `cargo build --release --locked` (the dependencies the tests ran with)"
    );

    // The toolchain is pinned, and new enough for the crate.
    let cargo_toml: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let needed = cargo_toml["package"]["rust-version"]
        .as_str()
        .and_then(rust_version)
        .expect("rust-version");
    let tag = build.base.strip_prefix("rust:").unwrap_or_else(|| {
        panic!(
            "{DOCKERFILE}: the {from} stage should start from the official rust image, not {}",
            build.base
        )
    });
    let pinned = tag.split('-').next().and_then(rust_version).unwrap_or_else(|| {
        panic!(
            "{DOCKERFILE}: {} does not pin a Rust version (rust:1.NN-<debian>)",
            build.base
        )
    });
    assert!(
        pinned >= needed,
        "{DOCKERFILE}: {} is older than Cargo.toml's rust-version {needed:?}",
        build.base
    );

    // The binary links glibc: the runtime image must be the builder's Debian or newer.
    let built_on = debian_release(&build.base).unwrap_or_else(|| {
        panic!(
            "{DOCKERFILE}: which Debian is {}? Name it in the tag (-bookworm)",
            build.base
        )
    });
    let runs_on = debian_release(&runtime.base).unwrap_or_else(|| {
        panic!(
            "{DOCKERFILE}: which Debian is {}? (-debian12, bookworm)",
            runtime.base
        )
    });
    assert!(
        runs_on >= built_on,
        "{DOCKERFILE}: built on Debian {built_on}, run on Debian {runs_on}: the binary may need a newer glibc than the runtime image has"
    );

    // The build context holds what the build copies, and .dockerignore keeps the rest out.
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        rules.contains(&"*") || rules.iter().any(|r| r.trim_matches('/') == "target"),
        ".dockerignore should keep target/ out of the build context"
    );
    for args in build.all("COPY") {
        let (_, words) = copy_parts(args);
        let (_, sources) = words.split_last().expect("COPY has a destination");
        for source in sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(source).exists(),
                "{DOCKERFILE} copies {source}, which the repository does not have"
            );
            if rules.contains(&"*") {
                assert!(
                    rules.contains(&format!("!{source}").as_str()) || rules.contains(&format!("!{source}/").as_str()),
                    ".dockerignore leaves {source} out of the context, but {DOCKERFILE} copies it (add `!{source}`)"
                );
            }
        }
    }
}

#[test]
fn the_image_holds_the_binary_alone_as_its_entrypoint() {
    let stages = dockerfile();
    let runtime = stages.last().expect("a stage");
    for (instruction, args) in &runtime.instructions {
        assert!(
            !matches!(instruction.as_str(), "RUN" | "ADD"),
            "{DOCKERFILE}: the runtime stage should only receive the binary, not `{instruction} {args}`"
        );
    }
    let copies: Vec<&str> = runtime.all("COPY").collect();
    assert_eq!(
        copies.len(),
        1,
        "{DOCKERFILE}: the runtime stage should copy the binary only, copies {copies:?}"
    );
    let (flags, words) = copy_parts(copies[0]);
    let from = flags
        .iter()
        .find_map(|f| f.strip_prefix("--from="))
        .expect("COPY --from");
    let build = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(from))
        .expect("the build stage");
    let [source, dest] = words.as_slice() else {
        panic!(
            "{DOCKERFILE}: COPY {} should be one source and a destination",
            copies[0]
        );
    };
    assert_eq!(
        absolute(build.workdir(), source),
        absolute(build.workdir(), "target/release/ssegate"),
        "{DOCKERFILE}: the runtime stage should copy cargo's release binary"
    );
    let installed = if dest.ends_with('/') {
        format!("{}/ssegate", absolute(runtime.workdir(), dest))
    } else {
        absolute(runtime.workdir(), dest)
    };
    // Exec form: the binary is PID 1 and gets the kubelet's SIGTERM, which starts its drain (the
    // shell form would run it under /bin/sh, which the runtime image does not have).
    let entrypoint = runtime
        .last("ENTRYPOINT")
        .and_then(exec_form)
        .unwrap_or_else(|| panic!("{DOCKERFILE}: ENTRYPOINT should be in exec form, [\"{installed}\"]"));
    assert_eq!(
        entrypoint.first().map(String::as_str),
        Some(installed.as_str()),
        "{DOCKERFILE}: ENTRYPOINT runs {entrypoint:?}, but the binary is copied to {installed}"
    );
}

#[test]
fn the_image_exposes_the_pods_ports_and_is_the_deployments_version() {
    let pod = Pod::load();
    let runtime = dockerfile().pop().expect("a stage");
    let exposed: BTreeSet<u16> = runtime
        .all("EXPOSE")
        .flat_map(str::split_whitespace)
        .map(|p| {
            p.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("{DOCKERFILE}: EXPOSE {p}?"))
        })
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([pod.config.listen.port(), pod.admin_port()]),
        "{DOCKERFILE}: EXPOSE should name the listen and admin ports of {}",
        pod.config_origin
    );
    let image = text(&pod.sidecar["image"], "image");
    let tag = image
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.contains('/'));
    assert_eq!(
        tag,
        Some(env!("CARGO_PKG_VERSION")),
        "container {SIDECAR:?} runs {image}; tag the image with ssegate's version (Cargo.toml)"
    );
}

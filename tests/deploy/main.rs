//! `deploy/`: the Kubernetes manifests that run ssegate beside an app, and the Dockerfile of its
//! image, checked against the config they carry. No image registry or cluster is reachable where
//! the tests run, so the image is never built and the manifests are never applied; what could
//! drift apart unnoticed is checked here instead: ports, paths, probes, the user, the grace
//! period against the drain, the memory limit against the buffers. The real binary also checks
//! the ConfigMap's file and answers the probes with it. Each failure names what disagrees.

//!
//! `manifests` reads the YAML the way the kubelet would follow it (the pod, its ssegate
//! container, the config file mounted from the ConfigMap); `image` reads the Dockerfile and
//! checks the image against the pod.

#[path = "../common/mod.rs"]
mod common;
mod image;
mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use ssegate::config::Transport;
use ssegate::Config;
use yaml_rust2::Yaml;

use common::{eventually, get, Instance};
use manifests::*;

/// The manifests, relative to the repository's root.
const MANIFESTS: &str = "deploy/kubernetes";
const DOCKERFILE: &str = "deploy/Dockerfile";
/// The name of the container that runs ssegate in the pod.
const SIDECAR: &str = "ssegate";

/// What ssegate takes beside its resume buffers (`buffer_total_bytes`), for the memory limit:
/// BENCHMARKS.md measured 31.1 MiB of RSS with 15,000 idle SSE clients on one stream.
const MEMORY_BESIDE_BUFFERS: u64 = 32 << 20;

/// Top-level keys the ConfigMap sets differently from config.example.toml, and why a pod needs
/// it. A new difference is added here with its reason, or it is a mistake.
const POD_CHANGES: &[(&str, &str)] = &[
    (
        "listen",
        "the Service reaches the pod's address, not its loopback",
    ),
    ("admin_listen", "the kubelet's probes reach the pod's address"),
    (
        "shutdown_delay",
        "the endpoints and the readiness probe notice a stopping pod first",
    ),
    (
        "drain_spread",
        "the clients of a stopping pod reconnect to the others over time",
    ),
    (
        "buffer_total_bytes",
        "the container's memory limit is sized from it",
    ),
    (
        "trusted_proxies",
        "behind a Service the peer is a proxy, not the client",
    ),
];

/// A file of the repository.
fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn every_manifest_is_a_well_formed_kubernetes_object() {
    let pod = Pod::load();
    let manifests = &pod.manifests;
    let known = [
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ];
    for (file, doc) in &manifests.objects {
        let api = text(&doc["apiVersion"], &format!("{file}: apiVersion"));
        let kind = text(&doc["kind"], &format!("{file}: kind"));
        assert!(
            known.contains(&(api, kind)),
            "{file}: {api} {kind} is not an object this test knows how to check ({known:?})"
        );
        if kind == "Kustomization" {
            continue;
        }
        let name = text(&doc["metadata"]["name"], &format!("{file}: metadata.name"));
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-')
                && !name.ends_with('-'),
            "{file}: metadata.name {name:?} is not a DNS label (lower case, digits, '-', at most 63)"
        );
    }

    // `kubectl apply -k` applies what the kustomization lists: every manifest, no other.
    let (file, kustomization) = manifests.one("Kustomization");
    let listed: BTreeSet<&str> = list(&kustomization["resources"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let present: BTreeSet<&str> = manifests
        .objects
        .iter()
        .filter(|(_, doc)| doc["kind"].as_str() != Some("Kustomization"))
        .map(|(file, _)| file.as_str())
        .collect();
    assert_eq!(
        listed, present,
        "{file}'s resources should be the other manifests"
    );

    // The Deployment owns its pods, and the Service selects them.
    let (file, deployment) = manifests.one("Deployment");
    let selector = labels(&deployment["spec"]["selector"]["matchLabels"]);
    assert!(
        !selector.is_empty(),
        "{file}: spec.selector.matchLabels is required"
    );
    for (key, value) in &selector {
        assert_eq!(
            pod.labels.get(key),
            Some(value),
            "{file}: the selector's {key}={value} is not a label of the pod template ({:?})",
            pod.labels
        );
    }
    for (file, service) in manifests.of_kind("Service") {
        let selector = labels(&service["spec"]["selector"]);
        assert!(
            !selector.is_empty(),
            "{file}: a Service without a selector reaches no pod"
        );
        for (key, value) in &selector {
            assert_eq!(
                pod.labels.get(key),
                Some(value),
                "{file}: the Service selects {key}={value}, which the Deployment's pods do not carry ({:?})",
                pod.labels
            );
        }
    }

    // One pod: distinct container names, port names and port numbers (one network namespace).
    let mut names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    let mut numbers = BTreeMap::new();
    for container in pod.containers() {
        let name = name_of(container);
        assert!(names.insert(name), "two containers named {name:?}");
        text(&container["image"], &format!("container {name:?}: image"));
        for (port_name, number) in ports(container) {
            if let Some(port_name) = port_name {
                assert!(
                    port_name.len() <= 15
                        && port_name.chars().any(|c| c.is_ascii_lowercase())
                        && port_name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "container {name:?}: port name {port_name:?} is not a valid port name (lower case, digits, '-', at most 15)"
                );
                assert!(
                    port_names.insert(port_name),
                    "port name {port_name:?} used twice in the pod"
                );
            }
            if let Some(other) = numbers.insert(number, name) {
                panic!("containers {other:?} and {name:?} both claim port {number}: a pod shares one network namespace");
            }
        }
        let volumes: BTreeSet<&str> = list(&pod.spec["volumes"])
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for mount in list(&container["volumeMounts"]) {
            let volume = mount["name"].as_str().unwrap_or_default();
            assert!(
                volumes.contains(volume),
                "container {name:?} mounts volume {volume:?}, which the pod does not have"
            );
        }
    }
}

#[test]
fn ssegate_check_passes_the_configmaps_file() {
    let pod = Pod::load();
    let dir = common::unique_dir("deploy-check");
    let file = dir.join(pod.config_path.rsplit('/').next().unwrap_or("ssegate.toml"));
    std::fs::write(&file, &pod.config_text).expect("write the config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .arg("check")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run ssegate check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "ssegate check refuses {}: {stderr}",
        pod.config_origin
    );
    assert!(
        !stderr.contains("warning"),
        "ssegate check warns about {}: {stderr}",
        pod.config_origin
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_sidecars_ports_are_the_configs_listeners() {
    let pod = Pod::load();
    let config = &pod.config;
    let ports = ports(&pod.sidecar);
    let numbers: BTreeSet<u16> = ports.iter().map(|(_, n)| *n).collect();
    let admin = pod.admin_port();
    for (key, addr) in [
        ("listen", config.listen),
        ("admin_listen", config.admin_listen.expect("admin_listen")),
    ] {
        assert!(
            addr.ip().is_unspecified(),
            "{}: {key} = {addr} is on a loopback or fixed address; the Service and the kubelet reach the container at the pod's address, so listen on 0.0.0.0",
            pod.config_origin
        );
        assert!(
            numbers.contains(&addr.port()),
            "{}: {key} is port {}, but container {SIDECAR:?} declares ports {numbers:?}",
            pod.config_origin,
            addr.port()
        );
    }
    assert_eq!(
        numbers,
        BTreeSet::from([config.listen.port(), admin]),
        "container {SIDECAR:?} should declare the config's two listeners and nothing else"
    );
    // Ports under 1024 would need NET_BIND_SERVICE, which the container drops with ALL.
    assert!(
        numbers.iter().all(|n| *n >= 1024),
        "ports {numbers:?}: a non-root user cannot bind under 1024"
    );
}

#[test]
fn the_probes_ask_the_admin_port_for_readyz_and_healthz() {
    let pod = Pod::load();
    let admin = pod.admin_port();
    for (kind, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let (asked, port, _) = pod.probe(kind);
        assert_eq!(asked, path, "{kind} of {SIDECAR:?} should ask {path}");
        assert_eq!(
            port, admin,
            "{kind} of {SIDECAR:?} asks port {port}, but {path} is served on the admin listener, port {admin} ({})",
            pod.config_origin
        );
    }
    // A stop keeps serving for shutdown_delay after /readyz turned 503: longer than the
    // readiness probe needs to see it, or clients are still sent to a closing listener.
    let (_, _, readiness) = pod.probe("readinessProbe");
    let period = readiness["periodSeconds"].as_i64().unwrap_or(10);
    let failures = readiness["failureThreshold"].as_i64().unwrap_or(3);
    let noticed = Duration::from_secs(u64::try_from(period * failures).expect("positive"));
    assert!(
        pod.config.shutdown_delay > noticed,
        "{}: shutdown_delay ({:?}) should outlast the readiness probe's notice of a 503 (periodSeconds {period} x failureThreshold {failures})",
        pod.config_origin,
        pod.config.shutdown_delay
    );
}

#[test]
fn the_service_reaches_the_public_port_only() {
    let pod = Pod::load();
    let listen = pod.config.listen.port();
    let admin = pod.admin_port();
    let app_ports: BTreeSet<u16> = pod.apps().flat_map(ports).map(|(_, n)| n).collect();
    let mut services = 0;
    for (file, service) in pod.manifests.of_kind("Service") {
        services += 1;
        let service_ports = list(&service["spec"]["ports"]);
        assert!(!service_ports.is_empty(), "{file}: no ports");
        for port in service_ports {
            // Without targetPort, the Service's port is the target.
            let target = match &port["targetPort"] {
                Yaml::BadValue => &port["port"],
                target => target,
            };
            let number = resolve_port(target, pod.containers())
                .unwrap_or_else(|| panic!("{file}: targetPort {target:?} names no port of the pod"));
            assert_ne!(
                number, admin,
                "{file}: the Service exposes the admin port {admin} (metrics, /streams, POST /reload)"
            );
            assert!(
                !app_ports.contains(&number),
                "{file}: the Service exposes the app's port {number}, around ssegate"
            );
            assert_eq!(
                number, listen,
                "{file}: targetPort {target:?} is port {number}, not ssegate's listen port {listen}"
            );
        }
        assert_ne!(
            service["spec"]["sessionAffinity"].as_str(),
            Some("ClientIP"),
            "{file}: any pod serves any client; affinity only unbalances a rolling update"
        );
    }
    assert_eq!(services, 1, "{MANIFESTS}/ should hold one Service");
}

#[test]
fn the_config_file_is_the_configmap_mounted_where_the_args_say() {
    // Pod::load follows --config to the volume, the ConfigMap and its key, and fails naming the
    // missing link; here the rest: the image's default arguments name the same file.
    let pod = Pod::load();
    assert!(
        pod.config_path.starts_with('/'),
        "--config {} should be absolute",
        pod.config_path
    );
    let runtime = image::dockerfile().pop().expect("a stage");
    let cmd = runtime.last("CMD").and_then(image::exec_form).unwrap_or_else(|| {
        panic!("{DOCKERFILE}: the last stage should have CMD [\"--config\", PATH] in exec form")
    });
    assert_eq!(
        cmd,
        ["--config", pod.config_path.as_str()],
        "{DOCKERFILE}'s CMD and the Deployment's --config should name one file"
    );
    // `command` would replace the image's ENTRYPOINT, the binary.
    assert!(
        pod.sidecar["command"].is_badvalue(),
        "container {SIDECAR:?} sets `command`; the image's ENTRYPOINT is the binary, give only `args`"
    );
    let mount = list(&pod.sidecar["volumeMounts"])
        .iter()
        .find(|m| {
            pod.config_path
                .starts_with(m["mountPath"].as_str().unwrap_or("\0"))
        })
        .expect("the config's mount");
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "the config's mount should be readOnly"
    );
}

#[test]
fn every_upstream_is_the_app_container_over_the_pods_loopback() {
    let pod = Pod::load();
    let app_ports: BTreeMap<u16, &str> = pod
        .apps()
        .flat_map(|c| ports(c).into_iter().map(move |(_, n)| (n, name_of(c))))
        .collect();
    assert!(
        !app_ports.is_empty(),
        "no container besides {SIDECAR:?} declares a port for ssegate to forward to"
    );
    for route in &pod.config.routes {
        let authority = match route.upstream.transport() {
            Transport::Http(authority) | Transport::Https(authority) => authority,
            Transport::Unix(path) => panic!(
                "{}: route {:?} goes to the Unix socket {path:?}; the app is in the same pod, at 127.0.0.1",
                pod.config_origin, route.path
            ),
        };
        let host = authority.host();
        assert!(
            matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
            "{}: route {:?} goes to {host}; the app is in the same pod, at 127.0.0.1",
            pod.config_origin,
            route.path
        );
        let port = authority.port_u16().unwrap_or(80);
        assert!(
            app_ports.contains_key(&port),
            "{}: route {:?} goes to port {port}, but the app containers declare ports {:?}",
            pod.config_origin,
            route.path,
            app_ports.keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_grace_period_outlasts_the_drain_and_the_app_outlives_ssegate() {
    let pod = Pod::load();
    let config = &pod.config;
    let drain = pod.drain();
    let grace = pod.grace_period();
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds ({grace:?}) should be longer than shutdown_delay + drain_spread + shutdown_grace ({:?} + {:?} + {:?} in {}): the kubelet kills what is left at its end",
        config.shutdown_delay,
        config.drain_spread,
        config.shutdown_grace,
        pod.config_origin
    );
    // Both containers get SIGTERM at once; the app must answer until ssegate has drained.
    for app in pod.apps() {
        let name = name_of(app);
        let pre_stop = &app["lifecycle"]["preStop"];
        let seconds = pre_stop["sleep"]["seconds"].as_i64().or_else(|| {
            match list(&pre_stop["exec"]["command"])
                .iter()
                .filter_map(Yaml::as_str)
                .collect::<Vec<_>>()[..]
            {
                ["sleep", n] => n.parse().ok(),
                _ => None,
            }
        });
        let seconds = seconds.unwrap_or_else(|| {
            panic!("container {name:?} has no preStop sleep: it would stop with ssegate's SIGTERM, while ssegate still serves for shutdown_delay and drains")
        });
        let held = Duration::from_secs(u64::try_from(seconds).expect("positive"));
        assert!(
            held >= drain,
            "container {name:?}'s preStop sleeps {held:?}, less than ssegate's stop ({drain:?}): the app would go before ssegate has drained"
        );
        assert!(
            grace > held,
            "terminationGracePeriodSeconds ({grace:?}) leaves container {name:?} no time to stop after its preStop ({held:?})"
        );
    }
}

#[test]
fn the_memory_limit_holds_the_resume_buffers_and_the_clients() {
    let pod = Pod::load();
    let resources = &pod.sidecar["resources"];
    let limit = bytes(&resources["limits"]["memory"], "resources.limits.memory");
    let request = bytes(&resources["requests"]["memory"], "resources.requests.memory");
    let needed = pod.config.buffer_total_bytes + MEMORY_BESIDE_BUFFERS;
    assert!(
        limit >= needed,
        "container {SIDECAR:?}'s memory limit ({} MiB) is below buffer_total_bytes ({} MiB, {}) + {} MiB for the process and its clients: full buffers would get it OOM-killed",
        limit >> 20,
        pod.config.buffer_total_bytes >> 20,
        pod.config_origin,
        MEMORY_BESIDE_BUFFERS >> 20
    );
    assert!(request <= limit, "memory request above its limit");
    let cpu = millicores(&resources["requests"]["cpu"], "resources.requests.cpu");
    assert!(cpu > 0, "container {SIDECAR:?} should request some CPU");
    if !resources["limits"]["cpu"].is_badvalue() {
        assert!(
            cpu <= millicores(&resources["limits"]["cpu"], "resources.limits.cpu"),
            "CPU request above its limit"
        );
    }
}

#[test]
fn the_sidecar_config_is_the_example_config_with_a_pods_changes() {
    let pod = Pod::load();
    let example =
        Config::from_toml(&read("config.example.toml"), "config.example.toml").expect("config.example.toml");
    // The effective settings as `ssegate check` prints them: the top level, then each route.
    fn top_level(config: &Config) -> BTreeMap<String, String> {
        config
            .to_string()
            .lines()
            .take_while(|line| !line.starts_with('['))
            .filter_map(|line| line.split_once(" = "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
    let ours = top_level(&pod.config);
    let theirs = top_level(&example);
    let mut keys: BTreeSet<&String> = ours.keys().collect();
    keys.extend(theirs.keys());
    for key in keys {
        let (a, b) = (ours.get(key), theirs.get(key));
        if a != b {
            assert!(
                POD_CHANGES.iter().any(|(k, _)| k == key),
                "{} sets {key} = {} where config.example.toml has {}; if a pod needs that, add it to POD_CHANGES with the reason",
                pod.config_origin,
                a.map_or("(nothing)", String::as_str),
                b.map_or("(nothing)", String::as_str)
            );
        }
    }
    let routes = |config: &Config| -> Vec<(String, String)> {
        config
            .routes
            .iter()
            .map(|r| (r.path.clone(), r.upstream.to_string()))
            .collect()
    };
    assert_eq!(
        routes(&pod.config),
        routes(&example),
        "{} should route the paths of config.example.toml to the same app port",
        pod.config_origin
    );
}

/// What the kubelet does, with the real binary and the ConfigMap's file (on free loopback ports
/// rather than 8080 and 9901): the probes' paths answer 200 on the admin port; on SIGTERM,
/// readiness turns 503 while liveness stays 200, and ssegate exits cleanly after shutdown_delay,
/// within terminationGracePeriodSeconds.
#[tokio::test]
async fn the_probes_answer_and_sigterm_drains_within_the_grace_period() {
    let pod = Pod::load();
    let (ready_path, _, _) = pod.probe("readinessProbe");
    let (live_path, _, _) = pod.probe("livenessProbe");
    let mut running = Instance::start(&pod.config_text).await;
    let ready = running.admin_url(&ready_path);
    let live = running.admin_url(&live_path);
    assert_eq!(
        get(&ready, &[]).await.status,
        StatusCode::OK,
        "readiness {ready_path}"
    );
    assert_eq!(
        get(&live, &[]).await.status,
        StatusCode::OK,
        "liveness {live_path}"
    );

    let stopped = Instant::now();
    running.signal("TERM");
    eventually("readiness to answer 503 once the stop begins", || async {
        match get(&ready, &[]).await.status {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // A failing liveness probe would restart the container in the middle of its drain.
    assert_eq!(
        get(&live, &[]).await.status,
        StatusCode::OK,
        "liveness while draining"
    );
    let status = running.wait_exit(pod.grace_period()).await;
    assert!(status.success(), "exit status {status} after SIGTERM");
    assert!(
        stopped.elapsed() >= pod.config.shutdown_delay,
        "exited after {:?}, before shutdown_delay ({:?}) was over",
        stopped.elapsed(),
        pod.config.shutdown_delay
    );
}

//! The manifests as YAML, and the pod they describe: its containers and ports, and the config
//! file ssegate's container reads, followed from `--config` through the volume to the
//! ConfigMap's key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ssegate::Config;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{read, MANIFESTS, SIDECAR};

/// Every YAML document of deploy/kubernetes/, with its file.
pub struct Manifests {
    pub objects: Vec<(String, Yaml)>,
}

impl Manifests {
    /// Reads every `.yaml` file of the directory, skipping empty documents.
    pub fn load() -> Manifests {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFESTS);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{MANIFESTS}: {e}"))
            .map(|entry| {
                entry
                    .expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
            .collect();
        files.sort();
        let mut objects = Vec::new();
        for file in files {
            let path = format!("{MANIFESTS}/{file}");
            let docs =
                YamlLoader::load_from_str(&read(&path)).unwrap_or_else(|e| panic!("{path}: not YAML: {e}"));
            objects.extend(
                docs.into_iter()
                    .filter(|doc| !doc.is_null())
                    .map(|doc| (file.clone(), doc)),
            );
        }
        Manifests { objects }
    }

    /// The objects of `kind`, with their files.
    pub fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = (&'a str, &'a Yaml)> + 'a {
        let kind = kind.to_owned();
        self.objects
            .iter()
            .filter(move |(_, doc)| doc["kind"].as_str() == Some(kind.as_str()))
            .map(|(file, doc)| (file.as_str(), doc))
    }

    /// The one object of `kind`.
    pub fn one(&self, kind: &str) -> (&str, &Yaml) {
        let found: Vec<_> = self.of_kind(kind).collect();
        assert_eq!(
            found.len(),
            1,
            "{MANIFESTS}/ should hold one {kind}, found {}",
            found.len()
        );
        found[0]
    }
}

/// A string field, or a failure naming where it was looked for.
pub fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

/// A sequence's items; none for a missing field.
pub fn list(value: &Yaml) -> &[Yaml] {
    value.as_vec().map_or(&[], Vec::as_slice)
}

/// A `labels` or `selector` map as strings.
pub fn labels(value: &Yaml) -> BTreeMap<String, String> {
    value
        .as_hash()
        .map(|hash| {
            hash.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Yaml::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (k.as_str().unwrap_or_default().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The containers of a pod spec (`containers`, then `initContainers`).
pub fn containers(pod: &Yaml) -> impl Iterator<Item = &Yaml> {
    list(&pod["containers"])
        .iter()
        .chain(list(&pod["initContainers"]))
}

/// A container's `name`.
pub fn name_of(container: &Yaml) -> &str {
    container["name"].as_str().unwrap_or("<no name>")
}

/// A container's ports as (name, number).
pub fn ports(container: &Yaml) -> Vec<(Option<&str>, u16)> {
    list(&container["ports"])
        .iter()
        .map(|port| {
            let number = port["containerPort"]
                .as_i64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| {
                    panic!(
                        "container {:?}: containerPort {:?} is not a port number",
                        name_of(container),
                        port["containerPort"]
                    )
                });
            (port["name"].as_str(), number)
        })
        .collect()
}

/// The number a `port:` or `targetPort:` field means: a number, or the name of a port of one of
/// `containers`.
pub fn resolve_port<'a>(port: &Yaml, containers: impl IntoIterator<Item = &'a Yaml>) -> Option<u16> {
    match port {
        Yaml::Integer(n) => u16::try_from(*n).ok(),
        Yaml::String(name) => containers
            .into_iter()
            .flat_map(ports)
            .find(|(port_name, _)| *port_name == Some(name.as_str()))
            .map(|(_, number)| number),
        _ => None,
    }
}

/// A Kubernetes memory quantity in bytes (`128Mi`, `1G`, `134217728`).
pub fn bytes(quantity: &Yaml, what: &str) -> u64 {
    let text = match quantity {
        Yaml::Integer(n) => return u64::try_from(*n).unwrap_or(0),
        Yaml::String(s) => s.as_str(),
        other => panic!("{what}: expected a quantity such as \"128Mi\", found {other:?}"),
    };
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((text, 1));
    number.parse::<u64>().map(|n| n * unit).unwrap_or_else(|_| {
        panic!("{what}: {text:?} is not a memory quantity this test reads (an integer with Ki, Mi, Gi, k, M or G)")
    })
}

/// A Kubernetes CPU quantity in millicores (`250m`, `"1"`, `1`, `0.5`).
pub fn millicores(quantity: &Yaml, what: &str) -> u64 {
    let parsed = match quantity {
        Yaml::Integer(n) => u64::try_from(*n).ok().map(|n| n * 1000),
        Yaml::Real(r) => r.parse::<f64>().ok().map(|c| (c * 1000.0) as u64),
        Yaml::String(s) => match s.strip_suffix('m') {
            Some(milli) => milli.parse().ok(),
            None => s.parse::<f64>().ok().map(|c| (c * 1000.0) as u64),
        },
        _ => None,
    };
    parsed.unwrap_or_else(|| panic!("{what}: {quantity:?} is not a CPU quantity such as \"250m\""))
}

/// The pod as the tests see it: the Deployment's pod spec, ssegate's container in it, and the
/// config file that container reads, found the way the kubelet would mount it.
pub struct Pod {
    pub manifests: Manifests,
    /// The Deployment's `spec.template.spec`.
    pub spec: Yaml,
    /// The Deployment's `spec.template.metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// ssegate's container.
    pub sidecar: Yaml,
    /// The path of `--config` in ssegate's arguments.
    pub config_path: String,
    /// The file's text, from the ConfigMap mounted there.
    pub config_text: String,
    /// Where the text came from, for messages.
    pub config_origin: String,
    /// The config as ssegate loads it.
    pub config: Config,
}

impl Pod {
    /// Follows deployment.yaml to ssegate's config and loads it with ssegate's own loader;
    /// fails naming the first link that is missing.
    pub fn load() -> Pod {
        let manifests = Manifests::load();
        let (file, deployment) = manifests.one("Deployment");
        let template = &deployment["spec"]["template"];
        let spec = template["spec"].clone();
        let labels = labels(&template["metadata"]["labels"]);
        let sidecar = list(&spec["containers"])
            .iter()
            .find(|c| c["name"].as_str() == Some(SIDECAR))
            .unwrap_or_else(|| {
                panic!("{file}: no container named {SIDECAR:?} among the pod's containers (a plain container: deployment.yaml says why not a native sidecar)")
            })
            .clone();
        let config_path = config_arg(&sidecar).unwrap_or_else(|| {
            panic!("{file}: container {SIDECAR:?} has no `--config PATH` in its args; without it ssegate reads ssegate.toml from its working directory")
        });
        let (configmap_name, key) = mounted_configmap(&spec, &sidecar, &config_path)
            .unwrap_or_else(|why| panic!("{file}: --config {config_path}: {why}"));
        let (configmap_file, configmap) = manifests
            .of_kind("ConfigMap")
            .find(|(_, cm)| cm["metadata"]["name"].as_str() == Some(configmap_name.as_str()))
            .unwrap_or_else(|| {
                panic!("{file} mounts ConfigMap {configmap_name:?}, which no file in {MANIFESTS}/ defines")
            });
        let config_origin = format!("{MANIFESTS}/{configmap_file} ({key})");
        let config_text = configmap["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| {
                panic!("{file} reads {config_path}, key {key:?} of ConfigMap {configmap_name:?}, but {configmap_file} has no such key in `data`")
            })
            .to_owned();
        let config = Config::from_toml(&config_text, &config_origin)
            .unwrap_or_else(|e| panic!("the sidecar's config is refused by ssegate's loader: {e}"));
        Pod {
            manifests,
            spec,
            labels,
            sidecar,
            config_path,
            config_text,
            config,
            config_origin,
        }
    }

    /// Every container of the pod.
    pub fn containers(&self) -> impl Iterator<Item = &Yaml> {
        containers(&self.spec)
    }

    /// The containers other than ssegate's: the app.
    pub fn apps(&self) -> impl Iterator<Item = &Yaml> {
        self.containers().filter(|c| name_of(c) != SIDECAR)
    }

    /// The port of the config's `admin_listen`, which the probes need.
    pub fn admin_port(&self) -> u16 {
        self.config
            .admin_listen
            .unwrap_or_else(|| {
                panic!(
                    "{}: no admin_listen: the kubelet's probes need /readyz and /healthz",
                    self.config_origin
                )
            })
            .port()
    }

    /// The probe `kind` (`readinessProbe`, `livenessProbe`) of ssegate's container: its path
    /// and the port number it asks.
    pub fn probe(&self, kind: &str) -> (String, u16, &Yaml) {
        let probe = &self.sidecar[kind];
        assert!(!probe.is_badvalue(), "container {SIDECAR:?} has no {kind}");
        let get = &probe["httpGet"];
        assert!(
            !get.is_badvalue(),
            "{kind} of {SIDECAR:?} should be an httpGet (ssegate's image has no shell for an exec probe)"
        );
        let path = text(&get["path"], &format!("{kind}.httpGet.path")).to_owned();
        let port = resolve_port(&get["port"], [&self.sidecar]).unwrap_or_else(|| {
            panic!(
                "{kind}.httpGet.port {:?} names no port of container {SIDECAR:?}",
                get["port"]
            )
        });
        (path, port, probe)
    }

    /// The stop, as configured: what ssegate may take from SIGTERM to its exit.
    pub fn drain(&self) -> Duration {
        self.config.shutdown_delay + self.config.drain_spread + self.config.shutdown_grace
    }

    /// The pod's `terminationGracePeriodSeconds`.
    pub fn grace_period(&self) -> Duration {
        // Kubernetes' default when the field is absent.
        let seconds = match &self.spec["terminationGracePeriodSeconds"] {
            Yaml::BadValue => 30,
            value => value
                .as_i64()
                .unwrap_or_else(|| panic!("terminationGracePeriodSeconds: {value:?} is not a number")),
        };
        Duration::from_secs(u64::try_from(seconds).expect("a grace period is not negative"))
    }
}

/// The value of `--config` (or `-c`) in a container's command and args.
pub fn config_arg(container: &Yaml) -> Option<String> {
    let words: Vec<&str> = list(&container["command"])
        .iter()
        .chain(list(&container["args"]))
        .filter_map(Yaml::as_str)
        .collect();
    words.iter().enumerate().find_map(|(i, word)| match *word {
        "--config" | "-c" => words.get(i + 1).map(|path| (*path).to_owned()),
        _ => word.strip_prefix("--config=").map(str::to_owned),
    })
}

/// Which ConfigMap, and which key of it, the file at `path` in `container` is: through the
/// volume mounted at `path`'s directory (or at `path` itself with `subPath`).
pub fn mounted_configmap(pod: &Yaml, container: &Yaml, path: &str) -> Result<(String, String), String> {
    let (dir, file) = path.rsplit_once('/').ok_or("not an absolute path")?;
    for mount in list(&container["volumeMounts"]) {
        let mount_path = mount["mountPath"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('/');
        let file_in_volume = if mount_path == dir {
            file.to_owned()
        } else if mount_path == path {
            match mount["subPath"].as_str() {
                Some(sub) => sub.to_owned(),
                None => continue,
            }
        } else {
            continue;
        };
        let volume_name = mount["name"].as_str().unwrap_or_default();
        let volume = list(&pod["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(volume_name))
            .ok_or_else(|| {
                format!("the mount at {mount_path} names volume {volume_name:?}, which the pod does not have")
            })?;
        let configmap = &volume["configMap"];
        let name = configmap["name"]
            .as_str()
            .ok_or_else(|| format!("volume {volume_name:?} mounted at {mount_path} is not a ConfigMap"))?;
        // With `items`, a key is mounted under a path of its own; without, under its name.
        let key = match configmap["items"].as_vec() {
            Some(items) => items
                .iter()
                .find(|item| item["path"].as_str() == Some(file_in_volume.as_str()))
                .and_then(|item| item["key"].as_str())
                .ok_or_else(|| format!("ConfigMap {name:?}'s items mount nothing at {file_in_volume}"))?
                .to_owned(),
            None => file_in_volume,
        };
        return Ok((name.to_owned(), key));
    }
    Err(format!(
        "no volumeMount of container {SIDECAR:?} puts a file there"
    ))
}

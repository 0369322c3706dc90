//! `deploy/` checked without a container engine or a cluster (neither runs here):
//!
//! - Every YAML file parses; the Kubernetes manifests and the compose file agree with the node
//!   configs they mount (loaded with `Config::load`, so every key must be known): container
//!   and Service ports are the configs' listeners, probes are `/readyz` and `/healthz` on the
//!   admin port, the admin token file is a mounted Secret, the grace period covers preStop,
//!   the drain and the shutdown, the edges' upstreams name the origins; Prometheus scrapes
//!   every node's admin port.
//! - The Grafana dashboard only queries metrics sluice-core registers, and those that need no
//!   failure, failover, lagging viewer, relay or TLS show on the `/metrics` of a real origin
//!   (a stream published) and edge (pulling it for a player); `/healthz` answers, and so does
//!   `/readyz` once the drain (`server.drain_grace_ms`) is on the branch.
//! - The Dockerfile exposes the default config's ports and runs `serve --config`; the systemd
//!   unit passes `systemd-analyze verify` (when the machine has it) and its stop timeout
//!   covers the drain.
//!
//! `kubectl kustomize` (offline) renders the manifests when kubectl is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;
use sluice_core::config::Config;
use sluice_core::metrics::Metrics;
use sluice_core::topology::Role;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::node::{Process, Spec, Transport};
use sluice_testkit::rtmp::{Player, Publisher};
use sluice_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for anything to happen. Generous: CI runs this beside other tests on two cores.
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, merge keys (`<<: *anchor`) applied; empty ones left out.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
}

/// `v[a][b]...`, `Null` where missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    static NULL: Value = Value::Null;
    path.iter().fold(v, |v, k| v.get(*k).unwrap_or(&NULL))
}

fn text(v: &Value, path: &[&str]) -> String {
    at(v, path).as_str().unwrap_or_default().to_owned()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// A node config as `sluice serve` loads it (defaults < file < `env`), with a made-up admin
/// token standing in for `admin.token_file` (that file is a secret mounted at run time; where
/// it comes from is checked against the manifests separately).
fn load(name: &str, toml_text: &str, env: &[(String, String)]) -> Config {
    let mut env = env.to_vec();
    env.push(("SLUICE__ADMIN__TOKEN".into(), "deploy-test-token".into()));
    Config::load(Some(toml_text), env).unwrap_or_else(|e| panic!("{name}: not a valid config: {e}"))
}

/// `server.drain_grace_ms + server.shutdown_timeout_ms` of a node's effective config, in ms:
/// how long it may take to stop after SIGTERM.
fn stop_budget_ms(config: &Config) -> u64 {
    config.server.drain_grace_ms + config.server.shutdown_timeout_ms
}

/// The ports a config listens on, by the names the manifests give them: `(port, protocol)`.
fn listeners(config: &Config) -> BTreeMap<&'static str, (u16, &'static str)> {
    let mut out = BTreeMap::from([
        ("rtmp", (config.rtmp.listen.port(), "TCP")),
        ("http", (config.http.listen.port(), "TCP")),
        ("admin", (config.admin.listen.port(), "TCP")),
    ]);
    if !config.tls.cert_file.is_empty() {
        out.insert("rtmps", (config.tls.rtmps_listen.port(), "TCP"));
        out.insert("https", (config.tls.https_listen.port(), "TCP"));
    }
    if !config.cluster.quic_listen.is_empty() {
        let relay: SocketAddr = config.cluster.quic_listen.parse().expect("quic_listen");
        out.insert("relay", (relay.port(), "UDP"));
    }
    out
}

/// `scheme://HOST:PORT/...` → (HOST, PORT).
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').expect("explicit port");
    (host.to_owned(), port.parse().expect("port"))
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(deploy()).unwrap().display().to_string())
        .collect();
    for expected in [
        "compose.yaml",
        "prometheus.yml",
        "k8s/configmap.yaml",
        "k8s/origin.yaml",
        "k8s/edge.yaml",
        "k8s/pdb.yaml",
        "k8s/kustomization.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/sluice.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for path in &files {
        let docs = yaml_docs(path);
        assert!(!docs.is_empty(), "{}: no document", path.display());
        assert!(
            docs.iter().all(Value::is_mapping),
            "{}: every document is a mapping",
            path.display()
        );
    }
}

/// A workload's pod template, resolved against the ConfigMap it mounts.
struct Workload {
    kind: String,
    name: String,
    replicas: u64,
    service_name: String,
    labels: BTreeMap<String, String>,
    /// Container ports by name: (port, protocol).
    ports: BTreeMap<String, (u16, String)>,
    config: Config,
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let s = |v: &Value| v.as_str().expect("label string").to_owned();
                    (s(k), s(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves a probe's or Service's port (a name or a number) among a container's ports.
fn resolve_port(ports: &BTreeMap<String, (u16, String)>, port: &Value) -> Option<(u16, String)> {
    match port.as_str() {
        Some(name) if name.parse::<u16>().is_err() => ports.get(name).cloned(),
        _ => {
            let n = u16::try_from(number(port)?).ok()?;
            ports.values().find(|(p, _)| *p == n).cloned()
        }
    }
}

fn k8s_docs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(deploy().join("k8s")).expect("deploy/k8s") {
        let path = entry.expect("entry").path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.ends_with(".yaml") {
            out.extend(yaml_docs(&path).into_iter().map(|d| (file.clone(), d)));
        }
    }
    out
}

/// A StatefulSet's or Deployment's pod, checked against the node config it mounts from the
/// ConfigMap: the config loads, container ports are its listeners, probes hit the admin
/// port, the admin token is a documented Secret, the grace period covers the stop budget.
fn workload(
    file: &str,
    doc: &Value,
    configs: &BTreeMap<String, String>,
    config_map_name: &str,
    kustomization_text: &str,
) -> Workload {
    let name = text(doc, &["metadata", "name"]);
    let who = format!("{file}: {name}");
    let pod = at(doc, &["spec", "template", "spec"]).clone();
    let containers = seq(at(&pod, &["containers"]));
    assert_eq!(containers.len(), 1, "{who}: one container");
    let container = containers[0].clone();

    // The config: args name a file in a volume mounted from the ConfigMap.
    let args: Vec<&str> = seq(at(&container, &["args"]))
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["serve", "--config"], "{who}: args");
    let config_path = Path::new(args[2]);
    let mounts = seq(at(&container, &["volumeMounts"]));
    let mount_of = |dir: &Path| {
        mounts
            .iter()
            .find(|m| Path::new(&text(m, &["mountPath"])) == dir)
            .map(|m| text(m, &["name"]))
            .unwrap_or_else(|| panic!("{who}: nothing mounted at {}", dir.display()))
    };
    let volume = |vname: &str| {
        seq(at(&pod, &["volumes"]))
            .iter()
            .find(|v| text(v, &["name"]) == vname)
            .cloned()
            .unwrap_or_else(|| panic!("{who}: no volume {vname}"))
    };
    let config_volume = volume(&mount_of(config_path.parent().unwrap()));
    assert_eq!(
        text(&config_volume, &["configMap", "name"]),
        config_map_name,
        "{who}: config volume"
    );
    let file_name = config_path.file_name().unwrap().to_str().unwrap();
    let key = seq(at(&config_volume, &["configMap", "items"]))
        .iter()
        .find(|i| text(i, &["path"]) == file_name)
        .map(|i| text(i, &["key"]))
        .unwrap_or_else(|| panic!("{who}: no ConfigMap item for {file_name}"));
    let config_text = configs
        .get(&key)
        .unwrap_or_else(|| panic!("{who}: ConfigMap has no {key}"))
        .clone();

    // Literal environment variables reach the config too; fieldRefs stand for a pod name.
    let env: Vec<(String, String)> = seq(at(&container, &["env"]))
        .iter()
        .map(|e| {
            let value = at(e, &["value"])
                .as_str()
                .map_or_else(|| format!("{name}-0"), str::to_owned);
            (text(e, &["name"]), value)
        })
        .collect();
    let config = load(&format!("{who} ({key})"), &config_text, &env);

    // The admin listener: reachable by the kubelet, its token a mounted Secret's file.
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "{who}: probes need admin.listen on 0.0.0.0, not {}",
        config.admin.listen
    );
    let token_file = Path::new(&config.admin.token_file);
    let token_volume = volume(&mount_of(token_file.parent().expect("token_file dir")));
    let secret = text(&token_volume, &["secret", "secretName"]);
    assert!(
        !secret.is_empty(),
        "{who}: admin.token_file is not from a Secret"
    );
    let token_key = token_file.file_name().unwrap().to_str().unwrap();
    assert!(
        kustomization_text.contains(&format!("secret generic {secret}"))
            && kustomization_text.contains(&format!("--from-literal={token_key}=")),
        "kustomization.yaml must say how to create Secret {secret} with key {token_key}"
    );

    // Container ports are exactly the config's listeners.
    let ports: BTreeMap<String, (u16, String)> = seq(at(&container, &["ports"]))
        .iter()
        .map(|p| {
            let protocol = at(p, &["protocol"]).as_str().unwrap_or("TCP").to_owned();
            let port = u16::try_from(number(at(p, &["containerPort"])).unwrap()).unwrap();
            (text(p, &["name"]), (port, protocol))
        })
        .collect();
    let expected: BTreeMap<String, (u16, String)> = listeners(&config)
        .into_iter()
        .map(|(n, (p, proto))| (n.to_owned(), (p, proto.to_owned())))
        .collect();
    assert_eq!(ports, expected, "{who}: container ports against {key}");

    // Probes on the admin port: readiness /readyz, liveness /healthz.
    let admin = (config.admin.listen.port(), "TCP".to_owned());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = at(&container, &[probe, "httpGet"]);
        assert_eq!(text(get, &["path"]), path, "{who}: {probe} path");
        assert_eq!(
            resolve_port(&ports, at(get, &["port"])),
            Some(admin.clone()),
            "{who}: {probe} port"
        );
    }

    // The grace period covers preStop, the drain and the shutdown.
    let pre_stop = at(&container, &["lifecycle", "preStop"]);
    let pre_stop_ms = if let Some(seconds) = number(at(pre_stop, &["sleep", "seconds"])) {
        seconds * 1000
    } else {
        let command: Vec<&str> = seq(at(pre_stop, &["exec", "command"]))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command.first(), Some(&"sleep"), "{who}: preStop sleeps");
        command[1].parse::<u64>().expect("sleep seconds") * 1000
    };
    assert!(pre_stop_ms > 0, "{who}: preStop");
    let budget = stop_budget_ms(&config);
    assert!(
        budget > config.server.shutdown_timeout_ms,
        "{who}: {key} sets server.drain_grace_ms"
    );
    let grace = number(at(&pod, &["terminationGracePeriodSeconds"])).expect("grace period");
    assert!(
        grace * 1000 >= pre_stop_ms + budget,
        "{who}: terminationGracePeriodSeconds {grace} < preStop {pre_stop_ms} ms + drain \
         and shutdown {budget} ms"
    );

    // Non-root, and a CPU request for the HPA to measure against.
    assert_eq!(
        at(&pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert!(!text(&container, &["resources", "requests", "cpu"]).is_empty());

    let template_labels = labels(at(doc, &["spec", "template", "metadata", "labels"]));
    let selector = labels(at(doc, &["spec", "selector", "matchLabels"]));
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)),
        "{who}: selector matches its pods"
    );
    Workload {
        kind: text(doc, &["kind"]),
        name,
        replicas: number(at(doc, &["spec", "replicas"])).unwrap_or(1),
        service_name: text(doc, &["spec", "serviceName"]),
        labels: template_labels,
        ports,
        config,
    }
}

#[test]
fn kubernetes_manifests_match_the_node_configs() {
    let docs = k8s_docs();
    let kind = |k: &'static str| docs.iter().filter(move |(_, d)| text(d, &["kind"]) == k);

    // kustomization.yaml lists every other manifest.
    let (_, kustomization) = kind("Kustomization").next().expect("kustomization.yaml");
    let listed: BTreeSet<String> = seq(at(kustomization, &["resources"]))
        .iter()
        .map(|r| r.as_str().expect("resource").to_owned())
        .collect();
    let files: BTreeSet<String> = docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml resources");
    let kustomization_text = read(&deploy().join("k8s/kustomization.yaml"));

    let (_, config_map) = kind("ConfigMap").next().expect("a ConfigMap");
    let config_map_name = text(config_map, &["metadata", "name"]);
    let configs: BTreeMap<String, String> = at(config_map, &["data"])
        .as_mapping()
        .expect("ConfigMap data")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        configs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["edge.toml", "origin.toml"]
    );

    let workloads: Vec<Workload> = docs
        .iter()
        .filter(|(_, d)| matches!(text(d, &["kind"]).as_str(), "StatefulSet" | "Deployment"))
        .map(|(file, doc)| workload(file, doc, &configs, &config_map_name, &kustomization_text))
        .collect();
    let origin = workloads
        .iter()
        .find(|w| w.kind == "StatefulSet")
        .expect("origins: a StatefulSet");
    let edge = workloads
        .iter()
        .find(|w| w.kind == "Deployment")
        .expect("edges: a Deployment");
    assert_eq!(origin.config.cluster.role, Role::Origin);
    assert_eq!(edge.config.cluster.role, Role::Edge);

    let selects = |selector: &BTreeMap<String, String>| -> Vec<&Workload> {
        workloads
            .iter()
            .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .collect()
    };

    // Services select one workload; their ports reach its container ports.
    let mut headless = BTreeSet::new();
    for (file, svc) in kind("Service") {
        let name = text(svc, &["metadata", "name"]);
        let selected = selects(&labels(at(svc, &["spec", "selector"])));
        assert_eq!(
            selected.len(),
            1,
            "{file}: Service {name} selects one workload"
        );
        let w = selected[0];
        let is_headless = text(svc, &["spec", "clusterIP"]) == "None";
        if is_headless {
            headless.insert(name.clone());
        }
        for port in seq(at(svc, &["spec", "ports"])) {
            let target = at(port, &["targetPort"]);
            let target = if target.is_null() {
                at(port, &["port"])
            } else {
                target
            };
            let protocol = at(port, &["protocol"]).as_str().unwrap_or("TCP");
            let (n, proto) = resolve_port(&w.ports, target)
                .unwrap_or_else(|| panic!("{file}: Service {name}: no container port {target:?}"));
            assert_eq!(proto, protocol, "{file}: Service {name} protocol");
            // The port clients use is the one the config listens on (and the docs show).
            assert_eq!(
                number(at(port, &["port"])),
                Some(u64::from(n)),
                "{file}: {name}"
            );
        }
        if text(svc, &["spec", "type"]) == "LoadBalancer" {
            assert_eq!(
                text(svc, &["spec", "externalTrafficPolicy"]),
                "Local",
                "{file}: {name} keeps client addresses for per-address limits"
            );
        }
    }
    let edge_service = kind("Service")
        .map(|(_, s)| s)
        .find(|s| selects(&labels(at(s, &["spec", "selector"])))[0].name == edge.name)
        .expect("a Service for the edges");
    let edge_ports: BTreeSet<u64> = seq(at(edge_service, &["spec", "ports"]))
        .iter()
        .filter_map(|p| number(at(p, &["port"])))
        .collect();
    assert_eq!(
        edge_ports,
        BTreeSet::from([
            u64::from(edge.config.rtmp.listen.port()),
            u64::from(edge.config.http.listen.port())
        ]),
        "the edge Service serves RTMP and HTTP"
    );
    assert!(
        headless.contains(&origin.service_name),
        "the origins' serviceName {} is a headless Service",
        origin.service_name
    );

    // The edges' upstreams are the origin pods by their stable names, on their RTMP port.
    let upstreams = &edge.config.cluster.apps["live"].upstreams;
    assert!(!upstreams.is_empty());
    for (i, upstream) in upstreams.iter().enumerate() {
        let (host, port) = host_port(upstream);
        assert_eq!(
            host,
            format!("{}-{i}.{}", origin.name, origin.service_name),
            "upstream {upstream}"
        );
        assert_eq!(
            port,
            origin.config.rtmp.listen.port(),
            "upstream {upstream}"
        );
        assert!(
            (i as u64) < origin.replicas,
            "{upstream}: no such origin pod"
        );
    }

    // The HPA scales the edges on CPU; each PodDisruptionBudget covers one workload.
    let (_, hpa) = kind("HorizontalPodAutoscaler").next().expect("an HPA");
    assert_eq!(text(hpa, &["spec", "scaleTargetRef", "kind"]), "Deployment");
    assert_eq!(text(hpa, &["spec", "scaleTargetRef", "name"]), edge.name);
    assert!(
        seq(at(hpa, &["spec", "metrics"]))
            .iter()
            .any(|m| text(m, &["resource", "name"]) == "cpu")
    );
    let pdbs: Vec<&Value> = kind("PodDisruptionBudget").map(|(_, d)| d).collect();
    assert!(!pdbs.is_empty(), "a PodDisruptionBudget");
    for pdb in pdbs {
        let selected = selects(&labels(at(pdb, &["spec", "selector", "matchLabels"])));
        assert_eq!(
            selected.len(),
            1,
            "PDB {}",
            text(pdb, &["metadata", "name"])
        );
    }

    // Rendered as kubectl would apply it (offline), when kubectl is here.
    match Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy().join("k8s"))
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rendered = String::from_utf8_lossy(&out.stdout);
            let objects =
                rendered.matches("\nkind: ").count() + rendered.starts_with("kind: ") as usize;
            assert_eq!(objects, docs.len() - 1, "kustomize renders every object");
        }
        Err(e) => note(&format!("kubectl kustomize not run: {e}")),
    }
}

#[allow(
    clippy::print_stderr,
    reason = "says which optional check was skipped, and why"
)]
fn note(message: &str) {
    eprintln!("deploy test: {message}");
}

/// `"10s"`, `"1m30s"`, `"500ms"` → ms.
fn compose_duration_ms(s: &str) -> u64 {
    let mut total = 0;
    let mut digits = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().expect("duration number");
        digits.clear();
        total += match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n
            }
            'h' => n * 3_600_000,
            'm' => n * 60_000,
            's' => n * 1000,
            _ => panic!("duration {s}"),
        };
    }
    assert!(digits.is_empty(), "duration {s} has a unit");
    total
}

/// A compose volume entry `SOURCE:TARGET[:ro]` → (SOURCE, TARGET).
fn volume_entry(v: &Value) -> (String, String) {
    let s = v.as_str().expect("short volume syntax");
    let mut parts = s.split(':');
    (
        parts.next().unwrap().to_owned(),
        parts.next().expect("target").to_owned(),
    )
}

#[test]
fn compose_matches_the_node_configs_and_prometheus_scrapes_every_admin_port() {
    let compose = yaml_docs(&deploy().join("compose.yaml")).remove(0);
    let services = at(&compose, &["services"]).as_mapping().expect("services");
    let mut nodes: BTreeMap<String, Config> = BTreeMap::new();
    let mut host_ports = BTreeSet::new();
    let mut secret_volume = None;
    for (name, svc) in services {
        let name = name.as_str().unwrap().to_owned();
        for port in seq(at(svc, &["ports"])) {
            let host = port
                .as_str()
                .expect("HOST:CONTAINER")
                .split(':')
                .next()
                .unwrap();
            assert!(
                host_ports.insert(host.to_owned()),
                "{name}: host port {host} taken twice"
            );
        }
        let volumes: Vec<(String, String)> = seq(at(svc, &["volumes"]))
            .iter()
            .map(volume_entry)
            .collect();
        let Some((source, _)) = volumes.iter().find(|(_, t)| t == "/etc/sluice/sluice.toml") else {
            continue;
        };
        // A Sluice node: its config as mounted, with its environment.
        let config_text = read(&deploy().join(source));
        let env: Vec<(String, String)> = at(svc, &["environment"])
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let config = load(&format!("compose {name} ({source})"), &config_text, &env);
        assert_eq!(
            config.cluster.node_id, name,
            "{name}: cluster.node_id is the service name"
        );

        // Published ports are listeners of the config; RTMP and HTTP are among them, the
        // admin port is not (Prometheus reaches it on the compose network).
        let published: BTreeSet<u16> = seq(at(svc, &["ports"]))
            .iter()
            .map(|p| {
                p.as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .expect("port")
            })
            .collect();
        let tcp: BTreeMap<u16, &str> = listeners(&config)
            .into_iter()
            .filter(|(_, (_, proto))| *proto == "TCP")
            .map(|(n, (p, _))| (p, n))
            .collect();
        for port in &published {
            assert!(
                tcp.contains_key(port),
                "{name}: publishes {port}, not a listener: {tcp:?}"
            );
        }
        for port in [config.rtmp.listen.port(), config.http.listen.port()] {
            assert!(published.contains(&port), "{name}: {port} not published");
        }
        assert!(
            !published.contains(&config.admin.listen.port()),
            "{name}: admin published"
        );

        // Off loopback for Prometheus, so the token file is in a mounted volume.
        assert!(
            config.admin.listen.ip().is_unspecified(),
            "{name}: admin.listen"
        );
        let token_dir = Path::new(&config.admin.token_file)
            .parent()
            .unwrap()
            .to_owned();
        let (volume, _) = volumes
            .iter()
            .find(|(_, t)| Path::new(t) == token_dir)
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {}", token_dir.display()));
        assert_eq!(
            secret_volume.get_or_insert(volume.clone()),
            volume,
            "one token volume"
        );

        let stop = compose_duration_ms(&text(svc, &["stop_grace_period"]));
        let budget = stop_budget_ms(&config);
        assert!(
            stop > budget,
            "{name}: stop_grace_period {stop} ms <= {budget} ms"
        );
        nodes.insert(name, config);
    }
    assert_eq!(
        nodes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["edge-1", "edge-2", "origin"]
    );
    for service in ["etcd", "prometheus", "grafana", "token-init"] {
        assert!(services.contains_key(service), "compose has {service}");
    }

    // Edges pull from the origin service, on its RTMP port.
    for (name, config) in nodes.iter().filter(|(n, _)| n.starts_with("edge")) {
        assert_eq!(config.cluster.role, Role::Edge);
        for upstream in &config.cluster.apps["live"].upstreams {
            let (host, port) = host_port(upstream);
            let upstream_node = nodes
                .get(&host)
                .unwrap_or_else(|| panic!("{name}: upstream {upstream} is no service"));
            assert_eq!(upstream_node.cluster.role, Role::Origin);
            assert_eq!(port, upstream_node.rtmp.listen.port(), "{name}: {upstream}");
        }
    }

    // Prometheus scrapes each node's admin port with the token from the same volume.
    let prometheus_svc = &services["prometheus"];
    let prometheus_volumes: Vec<(String, String)> = seq(at(prometheus_svc, &["volumes"]))
        .iter()
        .map(volume_entry)
        .collect();
    let (config_source, _) = prometheus_volumes
        .iter()
        .find(|(_, t)| t == "/etc/prometheus/prometheus.yml")
        .expect("prometheus.yml mounted");
    assert_eq!(config_source, "./prometheus.yml");
    let prometheus = yaml_docs(&deploy().join("prometheus.yml")).remove(0);
    let jobs = seq(at(&prometheus, &["scrape_configs"]));
    let job = jobs
        .iter()
        .find(|j| text(j, &["job_name"]) == "sluice")
        .expect("a sluice job");
    assert_eq!(
        at(job, &["metrics_path"]).as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    let targets: BTreeSet<String> = seq(at(job, &["static_configs"]))
        .iter()
        .flat_map(|c| seq(at(c, &["targets"])))
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let admin_targets: BTreeSet<String> = nodes
        .iter()
        .map(|(n, c)| format!("{n}:{}", c.admin.listen.port()))
        .collect();
    assert_eq!(
        targets, admin_targets,
        "Prometheus targets are the nodes' admin ports"
    );
    let credentials = text(job, &["authorization", "credentials_file"]);
    let token_file = &nodes["origin"].admin.token_file;
    let token_name = Path::new(token_file).file_name().unwrap();
    let (volume, _) = prometheus_volumes
        .iter()
        .find(|(_, t)| Path::new(&credentials) == Path::new(t).join(token_name))
        .unwrap_or_else(|| panic!("{credentials} is not the token file in a mounted volume"));
    assert_eq!(
        Some(volume),
        secret_volume.as_ref(),
        "Prometheus reads the nodes' token"
    );

    // Grafana gets the dashboard and a datasource pointing at the Prometheus service.
    let grafana_volumes: Vec<(String, String)> = seq(at(&services["grafana"], &["volumes"]))
        .iter()
        .map(volume_entry)
        .collect();
    assert!(
        grafana_volumes
            .iter()
            .any(|(s, _)| s == "./grafana/sluice.json")
    );
    let datasource =
        yaml_docs(&deploy().join("grafana/provisioning/datasources/prometheus.yaml")).remove(0);
    let url = text(&seq(at(&datasource, &["datasources"]))[0], &["url"]);
    let published = seq(at(prometheus_svc, &["ports"]))[0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        url,
        format!(
            "http://prometheus:{}",
            published.rsplit(':').next().unwrap()
        )
    );
}

/// A Dockerfile's instructions, continuation lines joined, comments left out.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_exposes_the_default_ports_and_serves_the_config() {
    let instructions = dockerfile_instructions(&read(&deploy().join("Dockerfile")));
    let all = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert_eq!(all("FROM").len(), 2, "a builder and a runtime stage");
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked"))
    );

    let defaults = Config::default();
    let origin = load(
        "config/examples/origin.toml",
        &read(&repo().join("config/examples/origin.toml")),
        &[],
    );
    let relay: SocketAddr = origin
        .cluster
        .quic_listen
        .parse()
        .expect("origin quic_listen");
    let expected: BTreeSet<String> = [
        defaults.rtmp.listen.port(),
        defaults.http.listen.port(),
        defaults.tls.rtmps_listen.port(),
        defaults.tls.https_listen.port(),
        defaults.admin.listen.port(),
    ]
    .iter()
    .map(|p| format!("{p}/tcp"))
    .chain([format!("{}/udp", relay.port())])
    .collect();
    let exposed: BTreeSet<String> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    assert_eq!(exposed, expected, "EXPOSE against config/sluice.toml");

    assert_eq!(all("ENTRYPOINT"), [r#"["/usr/local/bin/sluice"]"#]);
    assert_eq!(
        all("CMD"),
        [r#"["serve", "--config", "/etc/sluice/sluice.toml"]"#]
    );
    assert!(all("COPY").contains(&"config/sluice.toml /etc/sluice/sluice.toml"));
    let user = all("USER");
    assert!(
        user.last()
            .is_some_and(|u| !u.starts_with("0") && !u.starts_with("root")),
        "runs as a non-root user: {user:?}"
    );
    // The Kubernetes pods run as that user too (readable Secret files, no root).
    let uid: u64 = user
        .last()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    for (file, doc) in k8s_docs()
        .iter()
        .filter(|(_, d)| matches!(text(d, &["kind"]).as_str(), "StatefulSet" | "Deployment"))
    {
        let context = at(doc, &["spec", "template", "spec", "securityContext"]);
        assert_eq!(
            number(at(context, &["runAsUser"])),
            Some(uid),
            "{file}: runAsUser"
        );
    }
    let health = all("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    let url = format!("http://127.0.0.1:{}/healthz", defaults.admin.listen.port());
    assert!(
        health[0].contains(&url),
        "HEALTHCHECK {} wants {url}",
        health[0]
    );
    assert!(
        defaults.admin.listen.ip().is_loopback(),
        "the HEALTHCHECK reaches the default admin listener from inside the container"
    );
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "target/ stays out of the context"
    );
}

#[test]
fn systemd_unit_verifies_and_waits_for_the_drain() {
    let unit = read(&deploy().join("systemd/sluice.service"));
    let value = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    assert_eq!(
        value("ExecStart"),
        ["/usr/local/bin/sluice serve --config /etc/sluice/sluice.toml"]
    );
    assert_eq!(value("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(value("KillSignal"), ["SIGTERM"]);
    assert_eq!(value("Restart"), ["on-failure"]);
    for hardening in [
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DynamicUser=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }
    assert!(!value("RestrictAddressFamilies").is_empty());

    // TimeoutStopSec covers the drain and shutdown the Kubernetes configs set (the unit's
    // comment says it follows them).
    let docs = k8s_docs();
    let (_, config_map) = docs
        .iter()
        .find(|(_, d)| text(d, &["kind"]) == "ConfigMap")
        .expect("ConfigMap");
    let stop_sec: u64 = value("TimeoutStopSec")[0]
        .parse()
        .expect("TimeoutStopSec seconds");
    for (key, config_text) in at(config_map, &["data"]).as_mapping().unwrap() {
        let (key, config_text) = (key.as_str().unwrap(), config_text.as_str().unwrap());
        let config = load(key, config_text, &[]);
        let budget = stop_budget_ms(&config);
        assert!(
            stop_sec * 1000 > budget,
            "TimeoutStopSec {stop_sec} s <= {key}'s {budget} ms"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.service");
    // verify wants ExecStart's binary to exist: the one built for this test.
    std::fs::write(&path, unit.replace("/usr/local/bin/sluice", BIN)).expect("write unit");
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "systemd-analyze verify:\n{stderr}");
            // It warns (and still succeeds) on unknown keys and bad values: none allowed.
            let about_unit: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("sluice.service"))
                .collect();
            assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");
        }
        Err(e) => note(&format!(
            "systemd-analyze not run ({e}): unit checked by text only"
        )),
    }
}

/// Metric names in the dashboard's queries (`expr`, and the variables' `query` and
/// `definition`).
fn dashboard_metrics(v: &serde_json::Value, key: Option<&str>, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            let bytes = s.as_bytes();
            let mut i = 0;
            while let Some(found) = s[i..].find("sluice_") {
                let start = i + found;
                let before_ok = start == 0
                    || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
                let end = s[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(s.len(), |e| start + e);
                if before_ok {
                    out.insert(s[start..end].to_owned());
                }
                i = end;
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|x| dashboard_metrics(x, key, out));
        }
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                dashboard_metrics(x, Some(k), out);
            }
        }
        _ => {}
    }
}

/// Every series name a `/metrics` text can have: each family's samples by its type
/// (counter `_total`, histogram `_bucket`/`_sum`/`_count`, gauge as is), and every sample
/// seen.
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            match kind {
                "counter" => {
                    out.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            out.insert(name.to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_metrics_a_node_exposes() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&deploy().join("grafana/sluice.json"))).expect("JSON");

    // A Prometheus datasource variable, used by every panel and query.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(variables.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }

    let mut used = BTreeSet::new();
    dashboard_metrics(&dashboard, None, &mut used);
    // What the dashboard is for (issue 13): each of these has a panel.
    for wanted in [
        "sluice_viewers",
        "sluice_hls_viewers",
        "sluice_bytes_in_total",
        "sluice_bytes_out_total",
        "sluice_viewer_skips_total",
        "sluice_frames_dropped_total",
        "sluice_pulls",
        "sluice_pull_failures_total",
        "sluice_pull_switches_total",
        "sluice_config_reloads_total",
        "sluice_tls_reloads_total",
        "sluice_connections_refused_total",
        "sluice_draining",
        "sluice_registry_up",
    ] {
        assert!(used.contains(wanted), "the dashboard has no {wanted}");
    }

    // Every name must be registered (sluice-core's metrics, each family given a sample: a
    // family with none is left out of /metrics) ...
    let registered = exposed_names(&every_family());
    let unknown: Vec<&String> = used.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unknown metrics: {unknown:?}"
    );

    // ... and show up on a real node's /metrics once something happened: an origin with a
    // stream, an edge pulling it for a viewer and failing to find another, an HLS request,
    // a reload, a bad RTMP handshake and a bad HTTP request.
    let origin = Process::start(BIN, Spec::origin("deploy-origin", Transport::Rtmp)).await;
    let (status, body) = sluice_testkit::http::get(origin.admin, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = sluice_testkit::http::get(origin.admin, "/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (200, "ready"),
        "/readyz of a running node"
    );
    let _publisher = Publisher::fixture(origin.rtmp_url("demo"), H264_AAC)
        .real_time()
        .spawn();
    origin.wait_publishing("demo").await;
    let edge = Process::start(
        BIN,
        Spec::edge(
            "deploy-edge",
            Transport::Rtmp,
            &[origin.upstream(Transport::Rtmp)],
        ),
    )
    .await;
    let since = Instant::now();
    let player = Player::start(&edge.rtmp_url("demo"), WAIT).await;
    player.wait_videos(1, since).await;
    let (status, _) = sluice_testkit::http::get(edge.http, "/live/missing.flv").await;
    assert_eq!(status, 404, "a stream no upstream has");
    let (status, _) = sluice_testkit::http::get(origin.http, "/live/demo.m3u8").await;
    assert_eq!(status, 200, "HLS multivariant playlist");
    for node in [&origin, &edge] {
        node.hup();
        for (addr, bytes) in [
            (node.rtmp, &b"\x09 not an RTMP handshake"[..]),
            (node.http, b"NOT HTTP\r\n\r\n"),
        ] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(bytes).await.expect("write");
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
        }
    }
    // Events only a failure, a failover, a lagging viewer, the QUIC relay, TLS or the etcd
    // registry (tests/registry.rs) cause.
    let rare = BTreeSet::from([
        "sluice_registry_errors_total",
        "sluice_registry_lookups_total",
        "sluice_viewer_skips_total",
        "sluice_frames_dropped_total",
        "sluice_pull_switches_total",
        "sluice_relay_gops_total",
        "sluice_subsystem_failures_total",
        "sluice_tls_reloads_total",
    ]);
    let wanted: BTreeSet<&String> = used.iter().filter(|n| !rare.contains(n.as_str())).collect();
    let missing = || async {
        let exposed: BTreeSet<String> = exposed_names(&origin.metrics().await)
            .union(&exposed_names(&edge.metrics().await))
            .cloned()
            .collect();
        wanted
            .iter()
            .filter(|n| !exposed.contains(n.as_str()))
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    let ok = eventually(WAIT, || async { missing().await.is_empty() }).await;
    assert!(
        ok,
        "the dashboard queries metrics the nodes' /metrics do not have: {:?}\n{}\n{}",
        missing().await,
        origin.metrics().await,
        edge.metrics().await
    );
    player.stop().await;
}

/// `/metrics` text of a fresh `Metrics` with one sample in every family, so that every
/// registered name is printed.
fn every_family() -> String {
    let m = Metrics::new();
    let one = [("x", "x")];
    let two = [("x", "x"), ("y", "y")];
    for family in [&m.viewers, &m.fanout_viewers] {
        family.get_or_create(&one).set(0);
    }
    for family in [
        &m.bytes_in,
        &m.bytes_out,
        &m.frames_in,
        &m.frames_out,
        &m.media_writes,
        &m.connections,
        &m.viewer_skips,
        &m.frames_dropped,
        &m.rtmp_messages_dropped,
        &m.config_reloads,
        &m.pull_starts,
        &m.pull_failures,
        &m.pull_switches,
        &m.pull_bytes,
        &m.relay_gops,
        &m.subsystem_failures,
        &m.tls_reloads,
        &m.registry_errors,
        &m.registry_lookups,
    ] {
        family.get_or_create(&one).inc();
    }
    for family in [
        &m.connections_refused,
        &m.connections_closed,
        &m.fanout_handbacks,
        &m.hls_requests,
        &m.webhook_requests,
        &m.tls_handshakes,
    ] {
        family.get_or_create(&two).inc();
    }
    m.webhook_duration.get_or_create(&one).observe(0.0);
    m.encode()
}

#[test]
fn metric_names_follow_their_type() {
    let text = "# HELP sluice_a A.\n# TYPE sluice_a counter\n# TYPE sluice_b gauge\n\
                # TYPE sluice_c histogram\nsluice_c_bucket{le=\"1\"} 0\nsluice_d 1\n";
    let names = exposed_names(text);
    let expected = [
        "sluice_a_total",
        "sluice_b",
        "sluice_c_bucket",
        "sluice_c_count",
        "sluice_c_sum",
        "sluice_d",
    ];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect());
    let mut used = BTreeSet::new();
    let dash = serde_json::json!({"panels": [{"expr": "rate(sluice_a_total[1m]) + xsluice_z", "title": "sluice_title"}]});
    dashboard_metrics(&dash, None, &mut used);
    assert_eq!(used, BTreeSet::from(["sluice_a_total".to_owned()]));
    assert_eq!(compose_duration_ms("1m30s"), 90_000);
    assert_eq!(compose_duration_ms("500ms"), 500);
}

//! The deployment files in `deploy/`: the Kubernetes manifests validate against the API
//! schemas of several Kubernetes versions with kubernetes-validate (strict: unknown fields
//! fail), the PodMonitor selects the DaemonSet's pods, the DaemonSet keeps the privileges it
//! documents and no more, and the image's entry point is the one the DaemonSet runs.
//!
//! kubernetes-validate comes from `cargo xtask setup` (`<cache>/kubernetes-validate`, see
//! `xtask/src/setup.rs`), with the schemas it bundles: it runs offline. The YAML is read with
//! the PyYAML installed next to it, through [`kubernetes_python`].

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use memtrace_tests::fixtures::{cache_dir, in_ci, workspace_dir};
use serde_json::Value;

/// The Kubernetes versions whose schemas the manifests must satisfy: every minor version the
/// pinned kubernetes-validate (1.37.0) bundles.
const KUBERNETES_VERSIONS: &[&str] = &[
    "1.25.0", "1.26.0", "1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0",
    "1.34.0", "1.35.0", "1.36.0", "1.37.0",
];

/// The resources of `memtrace.yaml`, as kubernetes-validate names them.
const MANIFEST_RESOURCES: &[&str] = &[
    "namespace/memtrace",
    "serviceaccount/memtrace",
    "daemonset/memtrace-agent",
];

/// The capabilities the agent's container adds, sorted.
const CAPABILITIES: &[&str] = &["DAC_READ_SEARCH", "SYS_ADMIN", "SYS_PTRACE"];

/// The kubernetes-validate executable `cargo xtask setup` installs (a wrapper running the
/// `pip install --target` tree under the cache).
pub fn kubernetes_validate() -> PathBuf {
    cache_dir()
        .join("kubernetes-validate")
        .join("bin")
        .join("kubernetes-validate")
}

/// The Python next to [`kubernetes_validate`], with its dependencies (PyYAML) importable.
pub fn kubernetes_python() -> PathBuf {
    cache_dir()
        .join("kubernetes-validate")
        .join("bin")
        .join("python3")
}

/// Gate, like `require_bpf`: the executable when setup installed it; otherwise a panic in CI
/// (`CI=true`), elsewhere `skipped: <reason>` on stderr and `None`.
fn require_kubernetes_validate() -> Option<PathBuf> {
    let executable = kubernetes_validate();
    if executable.is_file() && kubernetes_python().is_file() {
        return Some(executable);
    }
    let reason = format!(
        "kubernetes-validate is not installed ({} is missing); run `cargo xtask setup`",
        executable.display()
    );
    assert!(
        !in_ci(),
        "kubernetes-validate is required in CI (CI=true): {reason}"
    );
    eprintln!("skipped: {reason}");
    None
}

fn kubernetes_dir() -> PathBuf {
    workspace_dir().join("deploy").join("kubernetes")
}

fn manifest() -> PathBuf {
    kubernetes_dir().join("memtrace.yaml")
}

fn podmonitor() -> PathBuf {
    kubernetes_dir().join("podmonitor.yaml")
}

/// A fresh directory for one test's files.
fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrace-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the manifest, in a fresh directory, with the one occurrence of `anchor`
/// replaced; returns the directory and the copy.
fn broken_manifest(name: &str, anchor: &str, replacement: &str) -> (PathBuf, PathBuf) {
    let dir = out_dir(name);
    let original = fs::read_to_string(manifest()).unwrap();
    assert_eq!(
        original.matches(anchor).count(),
        1,
        "the manifest changed: update this test"
    );
    let broken = dir.join("memtrace.yaml");
    fs::write(&broken, original.replace(anchor, replacement)).unwrap();
    (dir, broken)
}

/// Runs kubernetes-validate, strict, on `file` against every one of `versions`.
fn run_validate(executable: &Path, file: &Path, versions: &[&str]) -> Output {
    let mut command = Command::new(executable);
    command.arg("--strict");
    for version in versions {
        command.args(["--kubernetes-version", version]);
    }
    command
        .arg(file)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", executable.display()))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether a kubernetes-validate run is a full pass: exit status 0, and every one of
/// `resources` of `file` reported as passed against every one of `versions`, with no
/// warning. The exit status alone is not enough: a resource whose kind or apiVersion has no
/// schema (a typo, or an API that version does not serve) is only a warning, with status 0.
fn full_pass(
    output: &Output,
    file: &Path,
    resources: &[&str],
    versions: &[&str],
) -> Result<(), String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut problems: Vec<String> = stdout
        .lines()
        .filter(|line| !line.starts_with("INFO "))
        .map(|line| format!("unexpected output: {line}"))
        .collect();
    if !output.status.success() {
        problems.push(format!("kubernetes-validate exited with {}", output.status));
    }
    for version in versions {
        let major_minor = version.rsplit_once('.').map_or(*version, |(mm, _)| mm);
        for resource in resources {
            let passed = format!(
                "INFO {} passed for resource {resource} against version {major_minor}",
                file.display()
            );
            if !stdout.lines().any(|line| line == passed) {
                problems.push(format!("no `{passed}`"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n\n{}", problems.join("\n"), describe(output)))
    }
}

/// Every YAML document of `file` (empty ones dropped), as JSON, read by PyYAML's safe loader
/// (the loader kubernetes-validate and kubectl's YAML library agree with on these files).
fn read_documents(file: &Path) -> Vec<Value> {
    let python = kubernetes_python();
    let output = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             with open(sys.argv[1]) as f:\n\
             \x20   docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
             json.dump(docs, sys.stdout)\n",
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    assert!(
        output.status.success(),
        "cannot read {} as YAML: {}",
        file.display(),
        describe(&output)
    );
    match serde_json::from_slice(&output.stdout).unwrap() {
        Value::Array(documents) => documents,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// The one document of `kind` in `documents`.
fn find_kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = documents.iter().filter(|d| d["kind"] == kind).collect();
    match found.as_slice() {
        [document] => document,
        _ => panic!("expected exactly one {kind}, found {}", found.len()),
    }
}

fn string_list(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {item}"))
        })
        .collect()
}

/// The keys of `object`, sorted.
fn keys(object: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {object}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Every `(path, value)` under `value` whose key is `key`, at any depth.
fn find_key<'a>(value: &'a Value, key: &str, path: &str, found: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (name, child) in map {
                let child_path = format!("{path}.{name}");
                if name == key {
                    found.push((child_path.clone(), child));
                }
                find_key(child, key, &child_path, found);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                find_key(item, key, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// The value following `flag` in `args`.
fn flag_value<'a>(args: &'a [&str], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|arg| *arg == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} has no value in {args:?}"))
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let Some(executable) = require_kubernetes_validate() else {
        return;
    };
    let file = manifest();
    let output = run_validate(&executable, &file, KUBERNETES_VERSIONS);
    if let Err(problems) = full_pass(&output, &file, MANIFEST_RESOURCES, KUBERNETES_VERSIONS) {
        panic!("{} does not validate:\n{problems}", file.display());
    }
}

/// The validation must be able to fail: an unknown field in the container spec is an error.
#[test]
fn validation_rejects_an_unknown_field() {
    let Some(executable) = require_kubernetes_validate() else {
        return;
    };
    let anchor = "\n          imagePullPolicy: IfNotPresent\n";
    let (dir, broken) = broken_manifest(
        "deploy-unknown-field",
        anchor,
        &format!("{anchor}          imagePulPolicy: Always\n"),
    );

    let output = run_validate(&executable, &broken, &["1.31.0"]);
    assert!(
        !output.status.success(),
        "the broken manifest passed: {}",
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "ERROR {} did not validate for resource daemonset/memtrace-agent against version 1.31: \
         spec.template.spec.containers.0: Additional properties are not allowed \
         ('imagePulPolicy' was unexpected)",
        broken.display()
    );
    assert!(
        stdout.lines().any(|line| line == expected),
        "no `{expected}`:\n{}",
        describe(&output)
    );
    assert!(full_pass(&output, &broken, MANIFEST_RESOURCES, &["1.31.0"]).is_err());
    let _ = fs::remove_dir_all(&dir);
}

/// kubernetes-validate only warns, with status 0, about a resource it has no schema for; the
/// check must not be fooled by that.
#[test]
fn validation_rejects_an_unknown_api_version() {
    let Some(executable) = require_kubernetes_validate() else {
        return;
    };
    let (dir, broken) = broken_manifest(
        "deploy-unknown-api",
        "apiVersion: apps/v1\nkind: DaemonSet\n",
        "apiVersion: apps/v1beta2\nkind: DaemonSet\n",
    );

    let output = run_validate(&executable, &broken, &["1.31.0"]);
    assert!(
        output.status.success(),
        "kubernetes-validate now fails on a missing schema; the warning check below may go: {}",
        describe(&output)
    );
    let problems = full_pass(&output, &broken, MANIFEST_RESOURCES, &["1.31.0"])
        .expect_err("a DaemonSet of apps/v1beta2 (removed in Kubernetes 1.16) counted as valid");
    assert!(
        problems.contains("no `INFO") && problems.contains("daemonset/memtrace-agent"),
        "{problems}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// kubernetes-validate has no schema for the prometheus-operator's CRDs, so the PodMonitor is
/// checked by hand: its shape, and that it selects the DaemonSet's pods and port.
#[test]
fn podmonitor_selects_the_agent() {
    let Some(executable) = require_kubernetes_validate() else {
        return;
    };
    let file = podmonitor();
    let output = run_validate(&executable, &file, &["1.31.0"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    match full_pass(&output, &file, &["podmonitor/memtrace-agent"], &["1.31.0"]) {
        // A future kubernetes-validate with the CRD's schema: all the better.
        Ok(()) => {}
        Err(problems) => assert!(
            output.status.success()
                && stdout.contains(
                    "Couldn't find schema for kind PodMonitor with api version \
                     monitoring.coreos.com/v1"
                ),
            "{problems}"
        ),
    }

    let documents = read_documents(&file);
    assert_eq!(documents.len(), 1, "{documents:#?}");
    let monitor = &documents[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(keys(monitor), ["apiVersion", "kind", "metadata", "spec"]);
    let spec = &monitor["spec"];
    // The PodMonitor CRD's fields used here; a misspelt one would be silently ignored.
    assert_eq!(
        keys(spec),
        ["namespaceSelector", "podMetricsEndpoints", "selector"]
    );

    let manifest_documents = read_documents(&manifest());
    let daemonset = find_kind(&manifest_documents, "DaemonSet");
    let namespace = daemonset["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(monitor["metadata"]["namespace"], namespace);
    assert_eq!(
        string_list(&spec["namespaceSelector"]["matchNames"]),
        [namespace]
    );

    assert_eq!(keys(&spec["selector"]), ["matchLabels"]);
    let selector = spec["selector"]["matchLabels"].as_object().unwrap();
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (label, value) in selector {
        assert_eq!(
            pod_labels.get(label),
            Some(value),
            "the PodMonitor selects {label}={value}, the agent's pods have {pod_labels:?}"
        );
    }
    assert_eq!(
        &spec["selector"]["matchLabels"], &daemonset["spec"]["selector"]["matchLabels"],
        "the PodMonitor should select the pods the DaemonSet selects"
    );

    let endpoints = spec["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:#?}");
    let endpoint = &endpoints[0];
    assert_eq!(keys(endpoint), ["interval", "path", "port"]);
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(endpoint["path"], "/metrics");
    let port_name = endpoint["port"].as_str().unwrap();
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|port| port["name"] == port_name),
        "the agent's container has no port named {port_name}: {}",
        container["ports"]
    );
}

/// The DaemonSet runs the agent with the privileges documented in deploy/README.md, and no
/// more: no privileged container, four capabilities over an emptied set, a read-only root,
/// the node's PID namespace but not its network, one host directory, bounded resources.
#[test]
fn manifest_security_properties() {
    if require_kubernetes_validate().is_none() {
        return;
    }
    let documents = read_documents(&manifest());
    assert_eq!(
        documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Namespace", "ServiceAccount", "DaemonSet"]
    );

    let mut privileged = Vec::new();
    for document in &documents {
        find_key(document, "privileged", "", &mut privileged);
    }
    assert!(
        privileged
            .iter()
            .all(|(_, value)| **value == Value::Bool(false)),
        "privileged somewhere: {privileged:?}"
    );

    let service_account = find_kind(&documents, "ServiceAccount");
    assert_eq!(service_account["automountServiceAccountToken"], false);

    let daemonset = find_kind(&documents, "DaemonSet");
    assert_eq!(daemonset["metadata"]["name"], "memtrace-agent");
    assert_eq!(daemonset["metadata"]["namespace"], "memtrace");
    assert_eq!(
        daemonset["spec"]["updateStrategy"],
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    );
    let template = &daemonset["spec"]["template"];
    let pod = &template["spec"];
    assert_eq!(pod["hostPID"], true, "the agent must see every process");
    for key in [
        "hostNetwork",
        "hostIPC",
        "hostUsers",
        "shareProcessNamespace",
    ] {
        assert!(pod.get(key).is_none(), "{key} is set: {}", pod[key]);
    }
    assert!(
        pod.get("priorityClassName").is_none(),
        "a debugging tool must not preempt workloads"
    );
    assert_eq!(
        pod["serviceAccountName"],
        service_account["metadata"]["name"]
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert!(pod.get("initContainers").is_none());
    let container = &containers[0];
    assert_eq!(container["image"], "ghcr.io/memtrace/memtrace:0.1.0");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    let args = string_list(&container["args"]);
    assert_eq!(args.first(), Some(&"agent"), "{args:?}");
    assert_eq!(flag_value(&args, "--listen"), "0.0.0.0:9464");
    assert_eq!(flag_value(&args, "--record-max-bytes"), "1G");
    let record_dir = flag_value(&args, "--record-dir");
    assert_eq!(
        container["env"],
        serde_json::json!([{
            "name": "NODE_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}
        }])
    );
    assert_eq!(
        container["ports"],
        serde_json::json!([{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_eq!(
        container["resources"],
        serde_json::json!({
            "requests": {"cpu": "50m", "memory": "100Mi"},
            "limits": {"cpu": "500m", "memory": "300Mi"}
        })
    );

    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        security["runAsUser"], 0,
        "added capabilities only work for root"
    );
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(string_list(&security["capabilities"]["drop"]), ["ALL"]);
    let mut added = string_list(&security["capabilities"]["add"]);
    added.sort_unstable();
    assert_eq!(added, CAPABILITIES);
    assert!(pod
        .get("securityContext")
        .is_none_or(|pod_security| pod_security
            .get("seccompProfile")
            .is_none_or(|profile| profile["type"] == "RuntimeDefault")));

    // One host directory, for the recordings; /tmp in an emptyDir; nothing else.
    let volumes = pod["volumes"].as_array().unwrap();
    let mut host_paths = Vec::new();
    find_key(&pod["volumes"], "hostPath", "volumes", &mut host_paths);
    assert_eq!(
        host_paths
            .iter()
            .map(|(_, value)| (*value).clone())
            .collect::<Vec<_>>(),
        [serde_json::json!({"path": "/var/lib/memtrace", "type": "DirectoryOrCreate"})]
    );
    assert_eq!(volumes.len(), 2, "{volumes:#?}");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|mount| mount["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:#?}"))
    };
    let volume = |name: &Value| {
        volumes
            .iter()
            .find(|volume| volume["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(
        volume(&mount_of("/var/lib/memtrace")["name"])["hostPath"]["path"],
        "/var/lib/memtrace"
    );
    assert!(volume(&mount_of("/tmp")["name"]).get("emptyDir").is_some());
    assert_eq!(mounts.len(), 2, "{mounts:#?}");
    assert!(
        mounts
            .iter()
            .all(|mount| mount.get("readOnly").is_none_or(|r| r == false)),
        "{mounts:#?}"
    );
    // The root file system is read-only: the recordings must land on the host directory.
    assert!(
        record_dir.starts_with("/var/lib/memtrace/"),
        "--record-dir {record_dir} is not on the mounted host directory"
    );
}

/// The image's entry point is the binary the DaemonSet runs, and its default command is the
/// agent.
#[test]
fn dockerfile_matches_the_manifest() {
    let dockerfile = fs::read_to_string(workspace_dir().join("deploy").join("Dockerfile")).unwrap();
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms,
        [
            "FROM --platform=linux/amd64 rust:1-bookworm AS builder",
            "FROM --platform=linux/amd64 gcr.io/distroless/cc-debian12"
        ]
    );
    assert!(instructions.contains(&r#"ENTRYPOINT ["/usr/local/bin/memtrace"]"#));
    assert!(instructions.contains(&r#"CMD ["agent"]"#));
    assert!(instructions.contains(&"COPY --from=builder /out/memtrace /usr/local/bin/memtrace"));
    assert!(dockerfile.contains("MEMTRACE_BUILD_ONLY=1"));
    assert!(workspace_dir()
        .join("deploy")
        .join("Dockerfile.dockerignore")
        .is_file());

    // The manifest, read without PyYAML: the command is a flow sequence on one line.
    let manifest = fs::read_to_string(manifest()).unwrap();
    assert!(
        manifest
            .lines()
            .any(|line| line.trim() == r#"command: ["/usr/local/bin/memtrace"]"#),
        "the DaemonSet does not run /usr/local/bin/memtrace"
    );
}

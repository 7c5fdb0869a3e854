//! `memtrace agent` on a node simulated on this machine: Go programs on the host and in
//! simulated Kubernetes pods (their own PID and mount namespaces, a different root, cgroups
//! named like the kubelet's), found without being named, attributed to their pods, served to
//! a real Prometheus and to `go tool pprof`; a five-minute churn of short-lived programs; the
//! overhead budget; rolling recordings. The agent runs with exactly the capabilities of the
//! DaemonSet manifest.

mod common;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use memtrace_tests::fixtures::{
    go_binary, go_program,
    http::{get, try_get},
    memtrace_bin,
    pod::{random_container_id, random_uid, start_in_pod, CgroupLayout, PodProcess, PodSpec},
    prometheus::{free_port, require_prometheus, Prometheus},
    require_bpf, workspace_dir, Variant,
};
use serde_json::Value;

const GO: &str = "1.26.6";
const OTHER_GO: &str = "1.22.10";
const NODE_NAME: &str = "node-a1";

/// The capabilities `deploy/kubernetes/memtrace.yaml` adds, read from the manifest itself, so
/// that the tests prove the manifest's set is enough.
fn manifest_capabilities() -> Vec<String> {
    let path = workspace_dir().join("deploy/kubernetes/memtrace.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut capabilities = Vec::new();
    let mut in_add = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "add:" {
            in_add = true;
            continue;
        }
        if !in_add || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_prefix("- ") {
            Some(capability) => capabilities.push(capability.trim().to_string()),
            None => in_add = false,
        }
    }
    assert!(
        !capabilities.is_empty(),
        "no capabilities found in {}",
        path.display()
    );
    capabilities
}

/// A running `memtrace agent`, with its stderr collected.
struct Agent {
    child: Option<Child>,
    pub address: String,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent as root with only the manifest's capabilities, on a free port, and
    /// waits until it is ready.
    fn start(args: &[&str]) -> Agent {
        let address = format!("127.0.0.1:{}", free_port());
        let bounding: Vec<String> = manifest_capabilities()
            .iter()
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect();
        let mut child = Command::new("setpriv")
            .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(memtrace_bin())
            .args(["agent", "--listen", &address])
            .args(args)
            // What the DaemonSet sets from the downward API.
            .env("NODE_NAME", NODE_NAME)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start memtrace agent under setpriv");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let agent = Agent {
            child: Some(child),
            address,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = try_get(&agent.address, "/readyz") {
                if response.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not get ready in 30 s; stderr:\n{}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn metrics(&self) -> String {
        let response = get(&self.address, "/metrics");
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    }

    fn targets(&self) -> Value {
        get(&self.address, "/api/targets").json()
    }

    fn target(&self, pid: u32) -> Option<Value> {
        self.targets()["targets"]
            .as_array()?
            .iter()
            .find(|target| target["pid"] == pid)
            .cloned()
    }

    /// Waits until `pid` is traced; returns its entry and how long that took.
    fn wait_target(&self, pid: u32, timeout: Duration) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            if let Some(target) = self.target(pid) {
                return (target, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "pid {pid} not traced after {timeout:?}; targets {}; stderr:\n{}",
                self.targets(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn report(&self, pid: u32) -> Value {
        let response = get(&self.address, &format!("/api/report?pid={pid}"));
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the agent") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent did not stop within 20 s of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.stderr())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: signalling our own child; it restores its targets on SIGTERM.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The value of `name{pid="PID"...}` in a Prometheus exposition.
fn metric(text: &str, name: &str, pid: u32) -> Option<f64> {
    let prefix = format!("{name}{{pid=\"{pid}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// The value of an unlabelled metric.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A Go test program on the host, killed when dropped.
struct HostProgram {
    child: Child,
}

impl HostProgram {
    fn start(binary: &Path, args: &[&str]) -> HostProgram {
        let child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        HostProgram { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then its exit status and the last line it printed.
    fn finish(mut self) -> (ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut output = String::new();
        if let Some(stdout) = self.child.stdout.as_mut() {
            let _ = std::io::Read::read_to_string(stdout, &mut output);
        }
        let status = self.child.wait().expect("waiting for the program");
        let last = output.lines().last().unwrap_or("").to_string();
        (status, last)
    }
}

impl Drop for HostProgram {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod_spec<'a>(
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    id: &'a str,
    layout: CgroupLayout,
) -> PodSpec<'a> {
    PodSpec {
        namespace,
        name,
        uid,
        container_id: id,
        layout,
    }
}

fn site_functions(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|entry| entry["function"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The pids with a `TARGETS` or `STATS` entry in the kernel, read with bpftool (outside
/// memtrace).
fn bpf_map_pids(map: &str) -> Vec<u32> {
    let output = Command::new("bpftool")
        .args(["-j", "map", "dump", "name", map])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        output.status.success(),
        "bpftool map dump name {map}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    entries
        .as_array()
        .expect("a list of entries")
        .iter()
        .map(|entry| {
            let key = &entry["key"];
            match key {
                // Without BTF: the key's bytes as hex strings, little endian.
                Value::Array(bytes) => bytes.iter().rev().fold(0u32, |pid, byte| {
                    let byte = byte.as_str().expect("hex byte");
                    pid << 8 | u32::from_str_radix(byte.trim_start_matches("0x"), 16).unwrap()
                }),
                other => other.as_u64().expect("a numeric key") as u32,
            }
        })
        .collect()
}

/// File descriptors of a process, by what they point to.
fn fd_kinds(pid: u32) -> HashMap<String, usize> {
    let mut kinds = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let target = std::fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let kind = if target.starts_with('/') {
                "file".to_string()
            } else {
                target.split(':').next().unwrap_or("").to_string()
                    + ":"
                    + target.split(['[', ']']).nth(1).unwrap_or("")
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One check per node: discovery (running and new processes), pod attribution, reports,
/// Prometheus, `go tool pprof`, and a clean stop that restores every target.
#[test]
fn agent_traces_a_node_and_feeds_prometheus_and_pprof() {
    if require_bpf().is_err() || require_prometheus().is_err() {
        return;
    }
    let _serial = common::serialize();
    let leaks = go_program("leaks", GO, Variant::Default);
    let leaks_other = go_program("leaks", OTHER_GO, Variant::Pie);
    let goleaks = go_program("goleaks", GO, Variant::Stripped);

    // Running before the agent: found by the walk of /proc.
    let early = HostProgram::start(&leaks, &["-pattern", "globalmap", "-duration", "0"]);
    let agent = Agent::start(&["--scan-interval", "1s"]);
    let prometheus = Prometheus::start(&[&agent.address], Duration::from_secs(1));
    let (early_entry, _) = agent.wait_target(early.pid(), Duration::from_secs(5));
    assert_eq!(early_entry["container_id"], Value::Null, "{early_entry}");
    assert_eq!(agent.targets()["node"], NODE_NAME);

    // Started after it: each found through the exec tracepoint.
    let (uid_a, id_a) = (random_uid(), random_container_id());
    let (uid_b, id_b) = (random_uid(), random_container_id());
    let (uid_c, id_c) = (random_uid(), random_container_id());
    let mut latencies = Vec::new();
    let mut leaking_pod = start_in_pod(
        &pod_spec(
            "shop",
            "cart-7d9f",
            &uid_a,
            &id_a,
            CgroupLayout::ContainerdSystemd,
        ),
        &leaks,
        &["-pattern", "globalmap", "-duration", "0"],
    );
    let mut control_pod = start_in_pod(
        &pod_spec(
            "shop",
            "catalog-5b2c",
            &uid_b,
            &id_b,
            CgroupLayout::CrioSystemd,
        ),
        &leaks_other,
        &["-pattern", "churn", "-duration", "0"],
    );
    let mut goroutine_pod = start_in_pod(
        &pod_spec(
            "jobs",
            "worker-0",
            &uid_c,
            &id_c,
            CgroupLayout::CgroupfsDocker,
        ),
        &goleaks,
        &["-pattern", "timeoutsend", "-duration", "0"],
    );
    let pods: [(&PodProcess, &str, &str, &str, &str); 3] = [
        (&leaking_pod, &uid_a, &id_a, "shop", "cart-7d9f"),
        (&control_pod, &uid_b, &id_b, "shop", "catalog-5b2c"),
        (&goroutine_pod, &uid_c, &id_c, "jobs", "worker-0"),
    ];
    for (pod, uid, id, namespace, name) in pods {
        let (entry, latency) = agent.wait_target(pod.host_pid, Duration::from_secs(5));
        latencies.push(latency);
        assert_eq!(entry["container_id"], *id, "{entry}");
        assert_eq!(entry["pod_uid"], *uid, "{entry}");
        assert_eq!(entry["namespace"], namespace, "{entry}");
        assert_eq!(entry["pod_name"], name, "{entry}");
    }
    // A new process on the host, timed from its start.
    let started = Instant::now();
    let late = HostProgram::start(&leaks, &["-pattern", "churn", "-duration", "0"]);
    let (_, _) = agent.wait_target(late.pid(), Duration::from_secs(5));
    latencies.push(started.elapsed());
    eprintln!("discovery latencies: {latencies:?}");
    // Pod latencies are measured from after start_in_pod returned (the program had printed
    // READY), the host program's from its spawn.
    assert!(
        latencies
            .iter()
            .all(|latency| *latency < Duration::from_secs(1)),
        "a new process took a second or more to be traced: {latencies:?}"
    );
    // One set of probes per binary: the early and late host programs share theirs (each pod
    // has a copy of its binary, another file). Other Go programs on the machine count too.
    let metrics = agent.metrics();
    let targets = agent.targets();
    let targets = targets["targets"].as_array().unwrap();
    let binaries: HashSet<&str> = targets.iter().filter_map(|t| t["exe"].as_str()).collect();
    assert_eq!(
        metric_value(&metrics, "memtrace_agent_targets"),
        Some(targets.len() as f64)
    );
    assert_eq!(
        metric_value(&metrics, "memtrace_agent_probe_sets"),
        Some(binaries.len() as f64),
        "{targets:?}"
    );
    assert!(binaries.len() < targets.len(), "{targets:?}");

    // Leaks take a few GC cycles to stand out.
    std::thread::sleep(Duration::from_secs(15));
    let leaking = agent.report(leaking_pod.host_pid);
    assert!(
        site_functions(&leaking, "leak_suspects").contains(&"main.openSession".to_string()),
        "the leaking pod's report: {}",
        leaking["leak_suspects"]
    );
    let control = agent.report(control_pod.host_pid);
    assert_eq!(
        site_functions(&control, "leak_suspects"),
        Vec::<String>::new(),
        "the control's report has suspects"
    );
    let goroutines = agent.report(goroutine_pod.host_pid);
    assert!(
        goroutines["goroutine_leaks"]
            .as_array()
            .is_some_and(|leaks| !leaks.is_empty()),
        "the goroutine-leaking pod has no goroutine leak: {}",
        goroutines["goroutine_groups"]
    );

    // Prometheus: the leak-suspect series of the leaking programs, not the controls'.
    let query = "memtrace_leak_suspects > 0";
    let series = prometheus.wait_for_series(query, Duration::from_secs(20));
    let leaking_pids: HashSet<u64> = series
        .iter()
        .filter_map(|s| s["metric"]["pid"].as_str()?.parse().ok())
        .collect();
    assert!(
        leaking_pids.contains(&u64::from(leaking_pod.host_pid))
            && leaking_pids.contains(&u64::from(early.pid())),
        "{query}: {series:?}"
    );
    for control in [control_pod.host_pid, late.pid(), goroutine_pod.host_pid] {
        assert!(
            !leaking_pids.contains(&u64::from(control)),
            "{query} names control pid {control}: {series:?}"
        );
    }
    // Joined with the target info, the pod's name comes along.
    let joined = prometheus.query(
        "memtrace_leak_suspects * on(pid) group_left(pod, namespace, pod_uid, node) memtrace_target_info > 0",
    );
    assert!(
        joined
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metric"]["pod"] == "cart-7d9f"
                && s["metric"]["namespace"] == "shop"
                && s["metric"]["pod_uid"] == uid_a.as_str()
                && s["metric"]["node"] == NODE_NAME),
        "joined query: {joined}"
    );
    let goroutine_series = prometheus.wait_for_series(
        "memtrace_goroutine_leak_groups > 0",
        Duration::from_secs(10),
    );
    assert!(
        goroutine_series
            .iter()
            .any(|s| s["metric"]["pid"].as_str() == Some(&*goroutine_pod.host_pid.to_string())),
        "{goroutine_series:?}"
    );
    for (url, health, error) in prometheus.targets_health() {
        assert_eq!(health, "up", "{url}: {error}");
    }
    // The exposition passes Prometheus's own linter.
    let text = agent.metrics();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // go tool pprof fetches the profile itself.
    for (endpoint, sample_type) in [("heap", "inuse_space"), ("allocs", "alloc_space")] {
        let url = format!(
            "http://{}/debug/pprof/{endpoint}?pid={}",
            agent.address, leaking_pod.host_pid
        );
        let output = Command::new(go_binary(GO))
            .args(["tool", "pprof", "-top", &url])
            .env("HOME", std::env::temp_dir())
            .env("PPROF_TMPDIR", std::env::temp_dir())
            .output()
            .expect("go tool pprof");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "go tool pprof -top {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains(&format!("Type: {sample_type}")), "{text}");
        if endpoint == "heap" {
            let first = text
                .lines()
                .skip_while(|line| !line.trim_start().starts_with("flat"))
                .nth(1)
                .unwrap_or("");
            assert!(
                first.contains("main.openSession"),
                "the leaking site is not first in go tool pprof -top:\n{text}"
            );
        }
    }

    // The HTTP surface says what is wrong with a request.
    assert_eq!(get(&agent.address, "/healthz").status, 200);
    assert_eq!(get(&agent.address, "/api/report").status, 400);
    assert_eq!(get(&agent.address, "/api/report?pid=1").status, 404);
    assert_eq!(get(&agent.address, "/debug/pprof/heap?pid=x").status, 400);
    assert_eq!(get(&agent.address, "/nothing").status, 404);

    // A clean stop: every rate memtrace wrote is put back, and the programs run on.
    let written: Vec<u32> = [early.pid(), leaking_pod.host_pid, late.pid()].to_vec();
    let (status, stderr) = agent.stop();
    assert!(status.success(), "agent exit {status}; stderr:\n{stderr}");
    for pid in written {
        assert!(
            stderr.contains(&format!("pid {pid}: runtime.MemProfileRate restored to 0")),
            "pid {pid}'s rate was not restored; stderr:\n{stderr}"
        );
    }
    let bpftool = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool");
    let programs = String::from_utf8_lossy(&bpftool.stdout);
    assert!(
        !programs.contains("object_alloc") && !programs.contains("process_exec"),
        "memtrace's programs are still loaded after it exited:\n{programs}"
    );
    for program in [early, late] {
        let (status, last) = program.finish();
        assert!(status.success() && last == "DONE", "{status} {last:?}");
    }
    for pod in [&mut leaking_pod, &mut control_pod, &mut goroutine_pod] {
        assert!(pod.try_wait().is_none(), "pod pid {} died", pod.host_pid);
    }
    drop(prometheus);
}

/// Programs start and exit several times a second for five minutes (`MEMTRACE_SOAK_SECONDS`
/// to change it): every one runs to its own OK, the agent traces nearly all of them, its
/// memory and file descriptors stay bounded, and nothing of the dead stays in the kernel.
#[test]
fn churn_soak_leaves_nothing_behind() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = common::serialize();
    let soak = Duration::from_secs(
        std::env::var("MEMTRACE_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let churns = [
        go_program("churn", GO, Variant::Default),
        go_program("churn", OTHER_GO, Variant::Default),
    ];
    let control_binary = go_program("leaks", GO, Variant::Stripped);
    let control = HostProgram::start(&control_binary, &["-pattern", "churn", "-duration", "0"]);
    // Only the soak's programs, so that the counts below are theirs.
    let agent = Agent::start(&[
        "--include",
        "exe=churn-*",
        "--include",
        &format!("exe={}", control_binary.display()),
    ]);
    agent.wait_target(control.pid(), Duration::from_secs(5));
    // The agent's resting state with one traced process.
    std::thread::sleep(Duration::from_secs(2));
    let baseline_fds = fd_kinds(agent.pid());

    let started = Instant::now();
    let runs = Arc::new(Mutex::new((0u64, Vec::<String>::new())));
    let workers: Vec<_> = (0..2)
        .map(|worker| {
            let churns = churns.clone();
            let runs = runs.clone();
            std::thread::spawn(move || {
                let mut index = worker;
                while started.elapsed() < soak {
                    let binary = &churns[index % churns.len()];
                    index += 1;
                    let output = Command::new(binary)
                        .args(["-duration", "150ms", "-goroutines", "4"])
                        .output()
                        .expect("cannot run churn");
                    let stdout = String::from_utf8_lossy(&output.stdout);
                    let last = stdout.lines().last().unwrap_or("");
                    let mut runs = runs.lock().unwrap();
                    runs.0 += 1;
                    if !output.status.success() || !last.starts_with("OK ") {
                        runs.1
                            .push(format!("{}: {} {last:?}", binary.display(), output.status));
                    }
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while started.elapsed() < soak {
        std::thread::sleep(Duration::from_secs(10).min(soak));
        samples.push((
            started.elapsed().as_secs(),
            rss_kib(agent.pid()),
            fd_kinds(agent.pid()).values().sum::<usize>(),
        ));
    }
    for worker in workers {
        worker.join().unwrap();
    }
    let (runs, failures) = runs.lock().unwrap().clone();
    eprintln!("{runs} runs in {soak:?}; (s, RSS KiB, fds): {samples:?}");
    assert!(failures.is_empty(), "runs that failed: {failures:?}");
    let per_second = runs as f64 / soak.as_secs_f64();
    assert!(per_second >= 3.0, "only {per_second:.1} runs per second");

    // Let the last exits arrive and the idle probes go (they linger 10 s).
    std::thread::sleep(Duration::from_secs(13));
    let metrics = agent.metrics();
    let attached = metric_value(&metrics, "memtrace_agent_attached_total").unwrap();
    let detached = metric_value(&metrics, "memtrace_agent_detached_total").unwrap();
    eprintln!("attached {attached}, detached {detached}");
    assert!(
        attached >= 0.9 * runs as f64,
        "the agent traced {attached} of {runs} programs:\n{metrics}"
    );
    assert_eq!(attached - detached, 1.0, "only the control is traced now");
    assert_eq!(metric_value(&metrics, "memtrace_agent_targets"), Some(1.0));
    assert_eq!(
        metric_value(&metrics, "memtrace_agent_probe_sets"),
        Some(1.0)
    );
    let targets: Vec<u64> = agent.targets()["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(targets, vec![u64::from(control.pid())]);
    // The kernel side, seen by bpftool: only the control's entries are left.
    for map in ["TARGETS", "STATS"] {
        assert_eq!(
            bpf_map_pids(map),
            vec![control.pid()],
            "{map} has entries of dead pids"
        );
    }
    // Probes and other descriptors: back where they were with the control alone.
    let fds = fd_kinds(agent.pid());
    assert_eq!(
        fds.get("anon_inode:perf_event"),
        baseline_fds.get("anon_inode:perf_event"),
        "perf events (uprobes) left behind: {fds:?} vs {baseline_fds:?}"
    );
    assert!(
        fds.values().sum::<usize>() <= baseline_fds.values().sum::<usize>() + 2,
        "descriptors grew: {fds:?} vs {baseline_fds:?}"
    );
    // Memory: after the first minute (caches warm), bounded.
    let after_warmup = samples
        .iter()
        .find(|(s, _, _)| *s >= 60.min(soak.as_secs() / 2))
        .map_or(0, |sample| sample.1);
    let peak = samples.iter().map(|sample| sample.1).max().unwrap_or(0);
    assert!(
        peak <= after_warmup + 16 * 1024,
        "the agent's RSS grew from {after_warmup} KiB to {peak} KiB: {samples:?}"
    );
    let (status, last) = control.finish();
    assert!(
        status.success() && last == "DONE",
        "control: {status} {last:?}"
    );
    let (status, stderr) = agent.stop();
    assert!(
        status.success(),
        "agent exit {status}; stderr tail:\n{}",
        tail(&stderr)
    );
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A process allocating far above its share gets a higher sample rate, a goroutine flood
/// loses its per-goroutine records, a quiet one is left alone, and the events stay under the
/// ceilings.
#[test]
fn budget_lowers_the_sampling_of_loud_processes() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = common::serialize();
    let leaks = go_program("leaks", GO, Variant::Default);
    let gobench = go_program("gobench", GO, Variant::Default);
    let idle = go_program("idle", GO, Variant::Default);
    let (per_process, node) = (300.0, 600.0);
    // Only these three: the ceilings are shared by every traced process, and other Go
    // programs on the machine would take their share.
    let agent = Agent::start(&[
        "--max-events-per-process",
        "300",
        "--max-events",
        "600",
        "--include",
        &format!("exe={}", leaks.display()),
        "--include",
        &format!("exe={}", gobench.display()),
        "--include",
        &format!("exe={}", idle.display()),
    ]);
    let loud = HostProgram::start(
        &leaks,
        &["-pattern", "churn", "-rate", "60", "-duration", "0"],
    );
    let quiet = HostProgram::start(&idle, &[]);
    // Goroutine creations, hundreds of thousands a second, for long enough.
    let flood = HostProgram::start(&gobench, &["100000000", "4", "64"]);
    for pid in [loud.pid(), quiet.pid(), flood.pid()] {
        agent.wait_target(pid, Duration::from_secs(5));
    }
    // The budget steps every second; frees follow samples by a GC cycle.
    std::thread::sleep(Duration::from_secs(15));
    let before = agent.metrics();
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let after = agent.metrics();
    let rate = |pid: u32| {
        (metric(&after, "memtrace_events_total", pid).unwrap()
            - metric(&before, "memtrace_events_total", pid).unwrap())
            / window.as_secs_f64()
    };
    let (loud_rate, quiet_rate, flood_rate) =
        (rate(loud.pid()), rate(quiet.pid()), rate(flood.pid()));
    eprintln!("events/s: loud {loud_rate:.0}, quiet {quiet_rate:.0}, flood {flood_rate:.0}");

    let loud_sample_rate = metric(&after, "memtrace_sample_rate_bytes", loud.pid()).unwrap();
    assert!(
        loud_sample_rate > 512.0 * 1024.0,
        "loud rate {loud_sample_rate}\n{after}"
    );
    assert_eq!(
        metric(&after, "memtrace_budget_throttled", loud.pid()),
        Some(1.0)
    );
    assert_eq!(
        metric(&after, "memtrace_sample_rate_bytes", quiet.pid()),
        Some(512.0 * 1024.0)
    );
    assert_eq!(
        metric(&after, "memtrace_budget_throttled", quiet.pid()),
        Some(0.0)
    );
    let flood_entry = agent.target(flood.pid()).unwrap();
    assert_eq!(flood_entry["goroutine_records"], false, "{flood_entry}");
    assert_eq!(
        metric(&after, "memtrace_budget_throttled", flood.pid()),
        Some(1.0)
    );
    // The kernel held back the burst before userspace turned the records off.
    let thinned = metric_value(&after, "memtrace_agent_goroutine_records_thinned_total").unwrap();
    assert!(thinned > 0.0, "no goroutine record was thinned:\n{after}");
    // Goroutines are still counted exactly.
    let created = metric(&after, "memtrace_goroutines_created_total", flood.pid()).unwrap();
    assert!(created > 100_000.0, "goroutines counted: {created}");

    for (what, events) in [("loud", loud_rate), ("flood", flood_rate)] {
        assert!(
            events <= per_process,
            "{what}: {events:.0} events/s over {per_process}"
        );
    }
    let total = loud_rate + quiet_rate + flood_rate;
    assert!(total <= node, "node: {total:.0} events/s over {node}");
    for pid in [loud.pid(), quiet.pid(), flood.pid()] {
        assert_eq!(
            metric(&after, "memtrace_events_dropped_total", pid),
            Some(0.0)
        );
    }
    let (status, last) = loud.finish();
    assert!(status.success() && last == "DONE", "{status} {last:?}");
    let (status, stderr) = agent.stop();
    assert!(status.success(), "agent: {status}\n{}", tail(&stderr));
}

/// A pod killed like the OOM killer does leaves a recording that `memtrace report` reads.
#[test]
fn record_dir_keeps_a_post_mortem_of_a_killed_pod() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = common::serialize();
    let leaks = go_program("leaks", GO, Variant::Default);
    let dir = std::env::temp_dir().join(format!("memtrace-agent-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let agent = Agent::start(&[
        "--record-dir",
        dir.to_str().unwrap(),
        "--record-max-bytes",
        "64M",
    ]);
    let (uid, id) = (random_uid(), random_container_id());
    let mut pod = start_in_pod(
        &pod_spec(
            "shop",
            "cart-oom",
            &uid,
            &id,
            CgroupLayout::ContainerdSystemd,
        ),
        &leaks,
        &["-pattern", "globalmap", "-duration", "0"],
    );
    let pid = pod.host_pid;
    let (entry, _) = agent.wait_target(pid, Duration::from_secs(5));
    let recording = PathBuf::from(entry["recording"].as_str().expect("a recording path"));
    assert!(recording.starts_with(&dir), "{recording:?}");
    std::thread::sleep(Duration::from_secs(15));
    // SAFETY: killing the test's own pod process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    pod.wait(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.target(pid).is_some() {
        assert!(Instant::now() < deadline, "the killed pid is still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = dir.join("report.json");
    let output = Command::new(memtrace_bin())
        .arg("report")
        .arg(&recording)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "memtrace report {}: {}",
        recording.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["target"]["pid"], pid);
    assert!(
        site_functions(&report, "leak_suspects").contains(&"main.openSession".to_string()),
        "{}",
        report["leak_suspects"]
    );
    let (status, _) = agent.stop();
    assert!(status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad input: one line, its own exit code.
#[test]
fn agent_bad_input() {
    let run = |args: &[&str]| {
        let output = Command::new(memtrace_bin()).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["agent", "--include", "colour=red"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("colour") && stderr.contains("namespace"),
        "{stderr}"
    );
    let (code, stderr) = run(&["agent", "--listen", "nowhere"]);
    assert_eq!(code, Some(12), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let (code, stderr) = run(&["agent", "--listen", &address]);
    assert_eq!(code, Some(12), "{stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
    if require_bpf().is_ok() {
        // Without privileges.
        let output = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(memtrace_bin())
            .args(["agent", "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(6), "{stderr}");
        assert!(stderr.contains("permission denied"), "{stderr}");
    }
}

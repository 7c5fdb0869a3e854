//! Where a process runs: its container and Kubernetes pod, read from `/proc`.
//!
//! The container id and pod UID come from the process's cgroup path, whose shape depends on the
//! runtime and on the cgroup driver:
//!
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//!   cri-containerd-<id>.scope` (the UID's dashes become underscores, since systemd reserves `-`
//!   for nesting); `crio-<id>.scope` for CRI-O, `docker-<id>.scope` for Docker.
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`, `/docker/<id>`.
//!
//! Paths are examined segment by segment rather than anchored at the root, because a process in
//! another cgroup namespace than ours (the agent usually runs in a container) sees paths such as
//! `/../../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
//!
//! The pod's name and namespace are not in the cgroup path; [`placement_of`] reads them, best
//! effort, from files Kubernetes mounts into the pod's containers.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where a process runs: its container and Kubernetes pod, when it is in one.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    /// Full 64-hex-digit container id.
    pub container_id: Option<String>,
    /// "containerd", "cri-o" or "docker" (what the cgroup name says), when known. Only set along
    /// with `container_id`.
    pub runtime: Option<&'static str>,
    /// Pod UID with dashes (8-4-4-4-12), as Kubernetes shows it. Static pods (whose UID the
    /// kubelet derives from a hash of the manifest) have 32 hex digits without dashes instead.
    pub pod_uid: Option<String>,
    /// Pod name and namespace: only known when the pod's own files say so (see placement_of).
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    /// The process's cgroup path (the cgroup v2 line, else the first v1 line that names a
    /// container), as read.
    pub cgroup: String,
}

/// A cgroup path cannot be longer than PATH_MAX; longer lines are not real cgroup lines.
const MAX_CGROUP_LINE: usize = 4096;
/// Enough for every controller line of a cgroup v1 file.
const MAX_CGROUP_FILE: u64 = 64 * 1024;
/// The pod files hold one short name; a bigger file is not one Kubernetes wrote.
const MAX_POD_FILE: u64 = 4 * 1024;
const CONTAINER_ID_LEN: usize = 64;

/// Kubernetes bind-mounts the pod's hostname file here.
const HOSTNAME_FILE: &CStr = c"etc/hostname";
/// The service-account volume, mounted unless the pod opts out of it.
const NAMESPACE_FILE: &CStr = c"var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Parses the content of `/proc/PID/cgroup`.
///
/// The path kept in [`Placement::cgroup`] is the first of: the v2 line (`0::PATH`) when it names
/// a container or pod, the first v1 line that does, the v2 line, the first v1 line. (On hybrid
/// hosts the v2 line may be `0::/` while the v1 lines name the container.)
pub fn parse_cgroup(text: &str) -> Placement {
    let mut unified: Option<(&str, PathFacts)> = None;
    let mut first_v1: Option<(&str, PathFacts)> = None;
    let mut first_v1_in_container: Option<(&str, PathFacts)> = None;
    for line in text.lines() {
        if line.len() > MAX_CGROUP_LINE {
            continue;
        }
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let facts = PathFacts::of(path);
        if hierarchy == "0" && controllers.is_empty() {
            unified.get_or_insert((path, facts));
        } else {
            if first_v1_in_container.is_none() && facts.names_container() {
                first_v1_in_container = Some((path, facts.clone()));
            }
            first_v1.get_or_insert((path, facts));
        }
    }
    let chosen = match unified {
        Some(line) if line.1.names_container() => Some(line),
        unified => first_v1_in_container.or(unified).or(first_v1),
    };
    let Some((path, facts)) = chosen else {
        return Placement::default();
    };
    Placement {
        container_id: facts.container_id,
        runtime: facts.runtime,
        pod_uid: facts.pod_uid,
        pod_name: None,
        namespace: None,
        cgroup: path.to_string(),
    }
}

/// Where process `pid` runs: [`parse_cgroup`] of `/proc/PID/cgroup` (missing or unreadable →
/// `Placement::default()`), plus, for a process in a pod, the pod's name and namespace.
///
/// The name is the pod's hostname, read from `/proc/PID/root/etc/hostname`. It differs from the
/// pod name when the pod sets `spec.hostname`, and the kubelet truncates it to 63 characters.
/// For a process sharing the host's UTS namespace (a `hostNetwork` pod) the hostname is the
/// node's, so the name is left unknown. The namespace comes from the service-account volume, so
/// it is unknown when the pod does not mount one (`automountServiceAccountToken: false`).
///
/// Reading another process's root needs the same privileges as ptrace (`CAP_SYS_PTRACE`), and
/// `openat2(2)` (Linux 5.6); without them the name and namespace stay unknown.
pub fn placement_of(pid: u32) -> Placement {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let Some(bytes) = read_capped(File::open(proc_dir.join("cgroup")), MAX_CGROUP_FILE) else {
        return Placement::default();
    };
    let mut placement = parse_cgroup(&String::from_utf8_lossy(&bytes));
    if placement.pod_uid.is_some() {
        let (pod_name, namespace) = pod_identity(&proc_dir.join("root"));
        placement.pod_name = if shares_host_uts(&proc_dir) {
            None
        } else {
            pod_name
        };
        placement.namespace = namespace;
    }
    placement
}

/// The pod name (from the hostname) and namespace found in the container whose root directory
/// is `root`; each `None` when missing, unreadable or not a valid Kubernetes name.
fn pod_identity(root: &Path) -> (Option<String>, Option<String>) {
    let Ok(root) = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)
    else {
        return (None, None);
    };
    let pod_name = read_in_root(&root, HOSTNAME_FILE).filter(|name| is_dns1123_subdomain(name));
    let namespace = read_in_root(&root, NAMESPACE_FILE).filter(|name| is_dns1123_label(name));
    (pod_name, namespace)
}

/// Whether the process behind `proc_dir` shares the host's (pid 1's) UTS namespace.
fn shares_host_uts(proc_dir: &Path) -> bool {
    match (
        std::fs::read_link("/proc/1/ns/uts"),
        std::fs::read_link(proc_dir.join("ns/uts")),
    ) {
        (Ok(host), Ok(process)) => host == process,
        _ => false,
    }
}

/// linux/openat2.h `struct open_how` (libc's is `#[non_exhaustive]`, so it cannot be built).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Reads at most [`MAX_POD_FILE`] bytes of the regular file at `relative` under `root`, trimmed.
///
/// The files belong to an arbitrary container, so path resolution must stay inside it:
/// `RESOLVE_IN_ROOT` makes absolute symlinks and `..` resolve against the container's root, not
/// ours. (This also matters for honest containers: `/var/run` is often a symlink to `/run`, which
/// would otherwise lead to the agent's own service-account namespace.)
fn read_in_root(root: &File, relative: &CStr) -> Option<String> {
    let how = OpenHow {
        // O_NONBLOCK: a FIFO planted in place of the file must not block us.
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // The kernel answers EAGAIN when a concurrent rename makes `..` resolution unsafe; a few
    // retries are enough for a best-effort read.
    let mut fd = -1;
    for _ in 0..3 {
        // SAFETY: openat2 reads a NUL-terminated path and an `open_how` of the size passed, both
        // of which outlive the call, and returns a new fd or -1.
        fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                relative.as_ptr(),
                &how as *const OpenHow,
                size_of::<OpenHow>(),
            )
        };
        let retry = fd < 0
            && matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR)
            );
        if !retry {
            break;
        }
    }
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let bytes = read_capped(Ok(file), MAX_POD_FILE)?;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.trim().to_string())
}

/// The first `limit` bytes of an opened file.
fn read_capped(file: std::io::Result<File>, limit: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    file.ok()?.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// A DNS-1123 label (namespace names): lowercase alphanumerics and '-', starting and ending with
/// an alphanumeric, at most 63 characters.
fn is_dns1123_label(name: &str) -> bool {
    name.len() <= 63 && is_label_shaped(name)
}

/// A DNS-1123 subdomain (pod names): dot-separated labels, at most 253 characters in all.
fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_label_shaped)
}

fn is_label_shaped(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
}

/// What one cgroup path says about its process.
#[derive(Clone, Debug, Default)]
struct PathFacts {
    container_id: Option<String>,
    runtime: Option<&'static str>,
    pod_uid: Option<String>,
}

impl PathFacts {
    fn of(path: &str) -> PathFacts {
        let mut facts = PathFacts::default();
        let mut parent = "";
        for segment in path.split('/') {
            if let Some(uid) = pod_uid_of(segment) {
                // The container is inside its pod: one named before belongs to an outer level
                // (say, the node container of a kind cluster).
                facts = PathFacts {
                    pod_uid: Some(uid),
                    ..PathFacts::default()
                };
            } else if let Some(container) = container_of(segment) {
                // The innermost container wins (Docker in Docker: /docker/<outer>/docker/<inner>).
                let (id, runtime) = match container {
                    ContainerSegment::Container { id, runtime: None } if parent == "docker" => {
                        (Some(id), Some("docker"))
                    }
                    ContainerSegment::Container { id, runtime } => (Some(id), runtime),
                    // conmon, CRI-O's monitor process, runs beside the container, not in it.
                    ContainerSegment::Conmon => (None, None),
                };
                facts.container_id = id.map(str::to_string);
                facts.runtime = runtime;
            }
            parent = segment;
        }
        facts
    }

    fn names_container(&self) -> bool {
        self.container_id.is_some() || self.pod_uid.is_some()
    }
}

enum ContainerSegment<'a> {
    Container {
        id: &'a str,
        runtime: Option<&'static str>,
    },
    Conmon,
}

/// Recognizes `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope`,
/// `docker-<id>.scope` (`.scope` is absent with the cgroupfs driver) and a bare `<id>`.
fn container_of(segment: &str) -> Option<ContainerSegment<'_>> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let (id, runtime) = if let Some(id) = name.strip_prefix("cri-containerd-") {
        (id, Some("containerd"))
    } else if let Some(id) = name.strip_prefix("crio-conmon-") {
        return is_container_id(id).then_some(ContainerSegment::Conmon);
    } else if let Some(id) = name.strip_prefix("crio-") {
        (id, Some("cri-o"))
    } else if let Some(id) = name.strip_prefix("docker-") {
        (id, Some("docker"))
    } else {
        (name, None)
    };
    is_container_id(id).then_some(ContainerSegment::Container { id, runtime })
}

fn is_container_id(id: &str) -> bool {
    id.len() == CONTAINER_ID_LEN && id.bytes().all(is_lower_hex)
}

/// Recognizes `pod<uid>` (cgroupfs driver) and `...-pod<uid_with_underscores>.slice` (systemd
/// driver), returning the UID with dashes.
fn pod_uid_of(segment: &str) -> Option<String> {
    if let Some(stem) = segment.strip_suffix(".slice") {
        // The UID is the tail of the slice name, right after "-pod" (or "pod" alone).
        [36, 32].into_iter().find_map(|uid_len| {
            let split = stem.len().checked_sub(uid_len)?;
            let (prefix, uid) = (stem.get(..split)?, stem.get(split..)?);
            let prefix_is_pod = prefix == "pod" || prefix.ends_with("-pod");
            prefix_is_pod.then(|| parse_pod_uid(uid, b'_')).flatten()
        })
    } else {
        parse_pod_uid(segment.strip_prefix("pod")?, b'-')
    }
}

/// A pod UID: a UUID whose four dashes are written `separator`, or a static pod's 32 hex
/// digits. Returned in Kubernetes' spelling.
fn parse_pod_uid(text: &str, separator: u8) -> Option<String> {
    let bytes = text.as_bytes();
    match bytes.len() {
        32 if bytes.iter().copied().all(is_lower_hex) => Some(text.to_string()),
        36 => {
            let well_formed = bytes.iter().enumerate().all(|(i, &b)| match i {
                8 | 13 | 18 | 23 => b == separator,
                _ => is_lower_hex(b),
            });
            // Only ASCII was accepted, so rebuilding byte by byte keeps it valid UTF-8.
            well_formed.then(|| {
                bytes
                    .iter()
                    .map(|&b| if b == separator { '-' } else { b as char })
                    .collect()
            })
        }
        _ => None,
    }
}

fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const ID: &str = "3f2a9c0d4b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const UID: &str = "6f1c4b5e-2d3a-4c1b-9e8f-0a1b2c3d4e5f";
    const UID_SYSTEMD: &str = "6f1c4b5e_2d3a_4c1b_9e8f_0a1b2c3d4e5f";

    fn pod(cgroup: &str, runtime: Option<&'static str>) -> Placement {
        Placement {
            container_id: Some(ID.to_string()),
            runtime,
            pod_uid: Some(UID.to_string()),
            pod_name: None,
            namespace: None,
            cgroup: cgroup.to_string(),
        }
    }

    fn v2(path: &str) -> Placement {
        parse_cgroup(&format!("0::{path}\n"))
    }

    #[test]
    fn systemd_driver_containerd_burstable() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(v2(&path), pod(&path, Some("containerd")));
    }

    #[test]
    fn systemd_driver_guaranteed_and_besteffort() {
        let guaranteed =
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope");
        assert_eq!(v2(&guaranteed), pod(&guaranteed, Some("containerd")));
        let besteffort = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(v2(&besteffort), pod(&besteffort, Some("containerd")));
    }

    #[test]
    fn crio_container_and_conmon() {
        let container = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"
        );
        assert_eq!(v2(&container), pod(&container, Some("cri-o")));

        let conmon = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"
        );
        let placement = v2(&conmon);
        assert_eq!(placement.container_id, None);
        assert_eq!(placement.runtime, None);
        assert_eq!(placement.pod_uid.as_deref(), Some(UID));
        assert_eq!(placement.cgroup, conmon);

        // CRI-O with the cgroupfs driver leaves out ".scope".
        let cgroupfs = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
        assert_eq!(v2(&cgroupfs), pod(&cgroupfs, Some("cri-o")));
    }

    #[test]
    fn docker_outside_kubernetes() {
        let systemd = format!("/system.slice/docker-{ID}.scope");
        let placement = v2(&systemd);
        assert_eq!(placement.container_id.as_deref(), Some(ID));
        assert_eq!(placement.runtime, Some("docker"));
        assert_eq!(placement.pod_uid, None);

        let cgroupfs = format!("/docker/{ID}");
        let placement = v2(&cgroupfs);
        assert_eq!(placement.container_id.as_deref(), Some(ID));
        assert_eq!(placement.runtime, Some("docker"));
        assert_eq!(placement.cgroup, cgroupfs);
    }

    #[test]
    fn docker_in_docker_names_the_innermost_container() {
        let outer = "a".repeat(64);
        let path = format!("/docker/{outer}/docker/{ID}");
        assert_eq!(v2(&path).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn cgroupfs_driver_kubernetes() {
        let burstable = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(v2(&burstable), pod(&burstable, None));
        let guaranteed = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(v2(&guaranteed), pod(&guaranteed, None));
        let besteffort = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(v2(&besteffort), pod(&besteffort, None));
    }

    #[test]
    fn cgroup_v1_file() {
        let text = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             10:devices:/kubepods/burstable/pod{UID}/{ID}\n\
             9:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        let expected = pod(&format!("/kubepods/burstable/pod{UID}/{ID}"), None);
        assert_eq!(parse_cgroup(&text), expected);
    }

    #[test]
    fn cgroup_v1_file_with_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"
        );
        let text = format!(
            "13:rdma:/\n\
             12:memory:{path}\n\
             1:name=systemd:{path}\n"
        );
        assert_eq!(parse_cgroup(&text), pod(&path, Some("docker")));
    }

    #[test]
    fn hybrid_hierarchy_prefers_the_line_naming_the_container() {
        let path = format!("/docker/{ID}");
        let text = format!("12:memory:{path}\n1:name=systemd:{path}\n0::/\n");
        let placement = parse_cgroup(&text);
        assert_eq!(placement.cgroup, path);
        assert_eq!(placement.container_id.as_deref(), Some(ID));

        // Without a container anywhere, the v2 line is the one kept.
        let text = "12:memory:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n0::/user.slice/session-2.scope\n";
        assert_eq!(parse_cgroup(text).cgroup, "/user.slice/session-2.scope");
        // And without a v2 line, the first v1 line.
        let text = "12:memory:/user.slice\n1:name=systemd:/user.slice/session-2.scope\n";
        assert_eq!(parse_cgroup(text).cgroup, "/user.slice");
    }

    #[test]
    fn paths_seen_from_another_cgroup_namespace() {
        let path =
            format!("/../../kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope");
        assert_eq!(v2(&path), pod(&path, Some("containerd")));
        let path = format!("/../pod{UID}/{ID}");
        assert_eq!(v2(&path), pod(&path, None));
        let path = format!("/../cri-containerd-{ID}.scope");
        let placement = v2(&path);
        assert_eq!(placement.container_id.as_deref(), Some(ID));
        assert_eq!(placement.pod_uid, None);
    }

    #[test]
    fn kind_node_reports_the_inner_pod_and_container() {
        let node = "b".repeat(64);
        let path = format!(
            "/docker/{node}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(v2(&path), pod(&path, Some("containerd")));

        // A pod with no recognizable container inside does not inherit the outer one.
        let path = format!("/docker/{node}/kubepods/pod{UID}/something-else");
        let placement = v2(&path);
        assert_eq!(placement.pod_uid.as_deref(), Some(UID));
        assert_eq!(placement.container_id, None);
    }

    #[test]
    fn static_pod_uid() {
        let uid = "5b5c9a6f0e1d2c3b4a5968778695a4b3";
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(v2(&path).pod_uid.as_deref(), Some(uid));
        assert_eq!(
            v2(&format!("/kubepods/pod{uid}/{ID}")).pod_uid.as_deref(),
            Some(uid)
        );
    }

    #[test]
    fn processes_outside_containers() {
        for path in [
            "/user.slice/user-0.slice/session-3.scope",
            "/init.scope",
            "/",
        ] {
            assert_eq!(
                v2(path),
                Placement {
                    cgroup: path.to_string(),
                    ..Placement::default()
                }
            );
        }
    }

    #[test]
    fn garbage_yields_nothing() {
        let nothing = |text: &str| {
            let placement = parse_cgroup(text);
            assert_eq!(placement.container_id, None, "{text:?}");
            assert_eq!(placement.runtime, None, "{text:?}");
            assert_eq!(placement.pod_uid, None, "{text:?}");
            assert_eq!(placement.pod_name, None, "{text:?}");
            assert_eq!(placement.namespace, None, "{text:?}");
        };
        nothing("");
        nothing("\n\n");
        nothing("no colons here");
        nothing(ID);
        nothing("0::");
        nothing(":::::");
        nothing("0::/kubepods/podé/ééé");
        nothing(&format!("0::/docker/{}", ID.to_uppercase()));
        nothing(&format!("0::/docker/{}", &ID[1..]));
        nothing(&format!("0::/docker/{ID}0"));
        nothing(&format!("0::/docker/{}g", &ID[1..]));
        nothing(&format!("0::/cri-containerd-{ID}.scopex"));
        nothing("0::/kubepods/pod6f1c4b5e-2d3a-4c1b-9e8f-0a1b2c3d4e5/x");
        nothing("0::/kubepods/pod6f1c4b5e-2d3a-4c1b-9e8f_0a1b2c3d4e5f/x");
        nothing("0::/kubepods/pod6f1c4b5e2-d3a-4c1b-9e8f-0a1b2c3d4e5f/x");
        nothing(&format!("0::/kubepods/pod{UID_SYSTEMD}/x"));
        nothing(&format!("0::/kubepods.slice/kubepods-pod{UID}.slice"));
        nothing(&format!(
            "0::/kubepods.slice/kubepods-xpod{UID_SYSTEMD}.slice"
        ));
        nothing("0::/kubepods.slice/é.slice/éééééééééééééééééééééééééééééééééééé.slice");
        nothing("0::/kubepods.slice/-pod.slice/pod.slice/.slice/pod/.scope");
        // Too long to be a real cgroup line, even though it names a container.
        nothing(&format!("0::/{}/docker/{ID}", "x".repeat(MAX_CGROUP_LINE)));
        nothing(&"\u{10FFFF}".repeat(100_000));
    }

    /// A directory under the temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir()
                .join(format!("memtrace-container-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn write(&self, relative: &str, content: &str) {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const NAMESPACE_PATH: &str = "var/run/secrets/kubernetes.io/serviceaccount/namespace";

    #[test]
    fn pod_identity_reads_hostname_and_namespace() {
        let root = TempDir::new("plain");
        root.write("etc/hostname", "cart-7d9f8c6b5-x2k4q\n");
        root.write(NAMESPACE_PATH, "  shop\n");
        assert_eq!(
            pod_identity(&root.0),
            (
                Some("cart-7d9f8c6b5-x2k4q".to_string()),
                Some("shop".to_string())
            )
        );
    }

    #[test]
    fn pod_identity_tolerates_missing_files() {
        let root = TempDir::new("missing");
        assert_eq!(pod_identity(&root.0), (None, None));
        root.write(NAMESPACE_PATH, "shop");
        assert_eq!(pod_identity(&root.0), (None, Some("shop".to_string())));
        assert_eq!(pod_identity(&root.0.join("no-such-dir")), (None, None));
    }

    #[test]
    fn pod_identity_rejects_invalid_names() {
        let root = TempDir::new("invalid");
        for (hostname, namespace) in [
            ("Cart", "Shop"),
            ("cart_1", "shop.prod"),
            ("-cart", "shop-"),
            ("cart..1", ""),
            ("cart\nsecond-line", "shop prod"),
            (&"a".repeat(254), &"a".repeat(64)),
            ("caf\u{e9}", "\u{0}"),
        ] {
            root.write("etc/hostname", hostname);
            root.write(NAMESPACE_PATH, namespace);
            assert_eq!(
                pod_identity(&root.0),
                (None, None),
                "{hostname:?} {namespace:?}"
            );
        }
        // The longest valid ones are accepted.
        let long_name = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        root.write("etc/hostname", &long_name);
        root.write(NAMESPACE_PATH, &"n".repeat(63));
        assert_eq!(
            pod_identity(&root.0),
            (Some(long_name), Some("n".repeat(63)))
        );
    }

    #[test]
    fn pod_identity_reads_at_most_4_kib() {
        let root = TempDir::new("big");
        // A valid name, except that it ends after the first 4 KiB.
        root.write(
            "etc/hostname",
            &format!("{}cart", " ".repeat(MAX_POD_FILE as usize)),
        );
        assert_eq!(pod_identity(&root.0).0, None);
    }

    #[test]
    fn pod_identity_resolves_symlinks_inside_the_root() {
        let root = TempDir::new("symlinks");
        // As in Debian images: /var/run -> /run (absolute), and the service-account volume's
        // relative ..data links.
        std::fs::create_dir_all(root.0.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", root.0.join("var/run")).unwrap();
        let account = root.0.join("run/secrets/kubernetes.io/serviceaccount");
        root.write(
            "run/secrets/kubernetes.io/serviceaccount/..2024_01_01/namespace",
            "shop",
        );
        std::os::unix::fs::symlink("..2024_01_01", account.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/namespace", account.join("namespace")).unwrap();
        // An absolute link to a file of the container.
        root.write("etc/real-hostname", "cart-1");
        std::os::unix::fs::symlink("/etc/real-hostname", root.0.join("etc/hostname")).unwrap();
        assert_eq!(
            pod_identity(&root.0),
            (Some("cart-1".to_string()), Some("shop".to_string()))
        );
    }

    #[test]
    fn pod_identity_does_not_escape_the_root() {
        let outside = TempDir::new("escape");
        std::fs::write(outside.0.join("secret"), "leaked").unwrap();
        let root = outside.0.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/hostname")).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "leaked"
        );
        assert_eq!(pod_identity(&root), (None, None));
    }

    #[test]
    fn pod_identity_skips_what_is_not_a_regular_file() {
        let root = TempDir::new("special");
        std::fs::create_dir_all(root.0.join("etc/hostname")).unwrap();
        std::fs::create_dir_all(root.0.join("var/run/secrets/kubernetes.io/serviceaccount"))
            .unwrap();
        let fifo = std::ffi::CString::new(
            root.0
                .join(NAMESPACE_PATH)
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Must return at once: nobody ever writes to the FIFO.
        assert_eq!(pod_identity(&root.0), (None, None));
    }

    #[test]
    fn placement_of_this_process_and_of_no_process() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let placement = placement_of(std::process::id());
        assert_eq!(placement.cgroup, parse_cgroup(&own).cgroup);
        assert_eq!(placement.container_id, parse_cgroup(&own).container_id);
        assert_eq!(placement_of(u32::MAX), Placement::default());
    }

    #[test]
    fn dns1123_names() {
        assert!(is_dns1123_label("a"));
        assert!(is_dns1123_label("kube-system"));
        assert!(!is_dns1123_label("kube.system"));
        assert!(!is_dns1123_label(""));
        assert!(is_dns1123_subdomain("cart.v1-2"));
        assert!(!is_dns1123_subdomain("cart."));
        assert!(!is_dns1123_subdomain(".cart"));
        assert!(!is_dns1123_subdomain(""));
    }
}

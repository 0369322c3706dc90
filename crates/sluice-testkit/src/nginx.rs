//! nginx-rtmp as a third-party RTMP server: Debian's nginx with `libnginx-mod-rtmp`, one
//! process in the foreground (`daemon off; master_process off;`) with its prefix, config, PID
//! file and logs in a temporary directory, on a loopback port picked for it.
//!
//! [`Nginx::start`] installs the packages with apt-get when they are missing and the process
//! runs as root (without letting Debian start its own nginx service), like
//! [`crate::tools`] does for ffmpeg. The server is stopped by PID when the [`Nginx`] is
//! dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};

use crate::process::Child;
use crate::tools;

const NGINX: &str = "/usr/sbin/nginx";
/// Debian's path of the RTMP module.
pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
/// Debian's invoke-rc.d consults this: exit code 101 forbids starting services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// A running nginx-rtmp with one live application, `live`.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx-rtmp on a free loopback port and waits (up to `timeout`) until it accepts
    /// connections.
    pub fn start(timeout: Duration) -> anyhow::Result<Nginx> {
        let nginx = binary();
        let dir = tempfile::Builder::new().prefix("sluice-nginx-").tempdir()?;
        let addr = free_port()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), addr))?;
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // Before the config is read nginx logs to its compiled-in path; not there.
            .args(["-e", "stderr"]);
        let mut child = Child::spawn(&mut cmd)?;
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait() {
                bail!("nginx exited ({status}); stderr:\n{}", child.stderr_tail());
            }
            if Instant::now() >= deadline {
                child.kill();
                bail!(
                    "nginx did not listen on {addr} within {timeout:?}; stderr:\n{}",
                    child.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The RTMP listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `rtmp://ADDR/live/<stream>`.
    pub fn url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.addr)
    }

    /// The last lines nginx logged (warnings and errors).
    pub fn stderr_tail(&self) -> String {
        self.child.stderr_tail()
    }

    /// The server process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// A loopback address with a port nothing listened on a moment ago (nginx cannot be told to
/// bind port 0 and report it).
fn free_port() -> anyhow::Result<SocketAddr> {
    let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("picking a port")?;
    Ok(probe.local_addr()?)
}

fn config(dir: &Path, addr: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {dir}/nginx.pid;\n\
         error_log stderr warn;\n\
         load_module {RTMP_MODULE};\n\
         events {{ worker_connections 1024; }}\n\
         rtmp {{\n  server {{\n    listen {addr};\n    chunk_size 4096;\n    \
         application live {{\n      live on;\n      record off;\n    }}\n  }}\n}}\n"
    )
}

/// Debian's nginx, with the RTMP module installed beside it (apt-get, as root, if missing).
pub fn binary() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let ready = || Path::new(NGINX).is_file() && Path::new(RTMP_MODULE).is_file();
        if !ready() {
            tools::require_root(
                "nginx-rtmp is missing: install it with `apt-get install nginx libnginx-mod-rtmp`",
            );
            tools::with_install_lock(|| {
                if ready() {
                    return;
                }
                without_service_starts(|| tools::apt_install(&["nginx", "libnginx-mod-rtmp"]));
            });
            assert!(
                ready(),
                "nginx or {RTMP_MODULE} still missing after apt-get"
            );
        }
        PathBuf::from(NGINX)
    })
}

/// Runs `f` with service starts forbidden, so the package's postinst does not start an nginx
/// on port 80.
fn without_service_starts(f: impl FnOnce()) {
    let made = !Path::new(POLICY_RC_D).exists()
        && std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n").is_ok();
    if made {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755));
    }
    // Removed also when `f` panics.
    struct Cleanup(bool);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if self.0 {
                let _ = std::fs::remove_file(POLICY_RC_D);
            }
        }
    }
    let _cleanup = Cleanup(made);
    f();
}

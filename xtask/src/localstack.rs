//! LocalStack in host mode for the tests and the latency benchmark.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::tools::{run, tools};

/// LocalStack in host mode on a free loopback port; stopped (TERM, grace, KILL) on drop.
pub(crate) struct LocalStack {
    child: Child,
    pub(crate) endpoint: String,
    /// Its state (`FILESYSTEM_ROOT`) and log; removed on drop.
    _dir: PathBuf,
}

impl LocalStack {
    pub(crate) fn start() -> anyhow::Result<LocalStack> {
        let venv = tools().join("localstack-venv");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("aic-localstack-{port}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("localstack.log"))?;
        let mut cmd = Command::new(venv.join("bin/python"));
        // It goes when xtask goes, killed or not (a killed `cargo xtask test` left it running).
        // SAFETY: one system call between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .args(["-m", "localstack.runtime.main"])
            .env("OVERRIDE_IN_DOCKER", "0")
            .env("FILESYSTEM_ROOT", &dir)
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            // URLs LocalStack hands out (SNS SubscribeURL, SigningCertURL) point here.
            .env("LOCALSTACK_HOST", format!("127.0.0.1:{port}"))
            .env("GATEWAY_SERVER", "hypercorn")
            .env("SERVICES", "s3,sns,sqs,sts,secretsmanager")
            // Check signatures: presigned-URL and credential tests mean nothing otherwise.
            .env("S3_SKIP_SIGNATURE_VALIDATION", "0")
            .env("LOCALSTACK_TELEMETRY_DISABLED", "1")
            .env("DISABLE_EVENTS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting LocalStack (run localstack/install.sh)")?;
        let mut ls = LocalStack { child, endpoint: format!("http://127.0.0.1:{port}"), _dir: dir.clone() };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(st) = ls.child.try_wait()? {
                bail!("LocalStack exited ({st}); see {}", dir.join("localstack.log").display());
            }
            let ok = Command::new(venv.join("bin/python"))
                .args(["-c", &format!("import urllib.request,sys; r=urllib.request.urlopen('{}/_localstack/health', timeout=2); sys.exit(0 if b'\"s3\": \"available\"' in r.read() or r.status==200 else 1)", ls.endpoint)])
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("LocalStack did not become ready in 90 s; see {}", dir.join("localstack.log").display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("xtask: LocalStack ready at {}", ls.endpoint);
        Ok(ls)
    }

    pub(crate) fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let venv = tools().join("localstack-venv");
        run(Command::new(venv.join("bin/python")).args([
            "-c",
            &format!(
                "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
                self.endpoint
            ),
        ]))
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its stored objects go with it: a run left them in the temporary folder, and every run
        // after that added more until the disk was full.
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

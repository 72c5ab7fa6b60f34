//! A project's own environment (`requirements.txt`, `aic run --requirements F`) on the
//! embedded pool: prepared before the program, cached on the machine's miners by what it
//! holds, shared by jobs that ask for the same, read-only to them; a requirement that cannot
//! be installed fails the job before its program starts. The package the miners lack is a
//! wheel the test makes and ships in the project (`--no-index --find-links wheels`): real pip,
//! nothing fetched from outside.

use std::time::{Duration, Instant};

use crate::common::*;

/// Writes a pure-Python wheel `<name>-<version>-py3-none-any.whl` into `dir` whose package's
/// `__init__.py` is `body` (the example's own script).
fn wheel(dir: &std::path::Path, name: &str, version: &str, body: &str) {
    let made = std::process::Command::new("python3")
        .arg(repo().join("examples/own-env/make_wheel.py"))
        .args([dir.to_str().unwrap(), name, version, body])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

/// A project whose program imports `aicdemo` (which no miner has), reports where it came
/// from, and tries to change it.
fn project(h: &Home, name: &str) -> std::path::PathBuf {
    let dir = h.path().join(name);
    wheel(&dir.join("wheels"), "aicdemo", "1.0", "VALUE = 42\n");
    std::fs::write(dir.join("requirements.txt"), "--no-index\n--find-links wheels\naicdemo==1.0\n").unwrap();
    std::fs::write(
        dir.join("train.py"),
        "import os, aicdemo\n\
         print('aicdemo says', aicdemo.VALUE, flush=True)\n\
         try:\n    open(aicdemo.__file__, 'a').write('import os; os.system(\"evil\")\\n')\n    print('the environment is writable')\n\
         except OSError as e:\n    print('the environment is read-only:', type(e).__name__, flush=True)\n\
         import time\n\
         while os.environ.get('WAIT_FOR') and not os.path.exists(os.environ['WAIT_FOR']):\n    time.sleep(0.1)\n",
    )
    .unwrap();
    dir
}

fn sandboxed() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run once, the environment is installed (a phase of its own in the log, before the
/// program); run again, it is taken from the cache: nothing installed, the same package
/// imported, and the first job's attempt to change it failed (where jobs run under uids of
/// their own).
#[test]
fn a_training_projects_requirements_are_installed_once_and_cached() {
    let h = Home::new();
    let proj = project(&h, "proj");
    let run = || {
        let out = h.aic(&["run", proj.to_str().unwrap(), "--entrypoint", "train.py"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let first = run();
    assert!(first.contains("preparing environment: installing 1 package: aicdemo==1.0"), "{first}");
    assert!(first.contains("installed 1 package ("), "{first}");
    let (prepared, program) = (first.find("environment ready").unwrap(), first.find("aicdemo says 42").unwrap());
    assert!(prepared < program, "the program started before its environment was ready: {first}");
    if sandboxed() {
        assert!(first.contains("the environment is read-only: PermissionError"), "{first}");
    }
    let second = run();
    assert!(second.contains("1 package, cached on this miner"), "{second}");
    assert!(!second.contains("installing"), "the second run installed again: {second}");
    assert!(second.contains("aicdemo says 42"), "{second}");
}

/// Two jobs asking for the same environment at once: one installs it, the other waits for it
/// and takes it from the cache; both then run at once, using it side by side (neither waits
/// for the other to end).
#[test]
fn two_jobs_with_the_same_requirements_at_once_install_once() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let flag = h.shared().join("both-ran");
    let jobs: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            let proj = project(&h, n);
            let wait = format!("WAIT_FOR={}", flag.display());
            let out = h.aic(&["run", "--detach", proj.to_str().unwrap(), "--entrypoint", "train.py", "--env", &wait]);
            assert!(out.status.success(), "{}", text(&out).1);
            text(&out).0.trim().to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for job in &jobs {
        while !text(&h.aic(&["logs", job])).0.contains("aicdemo says 42") {
            assert!(Instant::now() < deadline, "job {job} never ran its program: {:?}", h.history(job));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    std::fs::write(&flag, "").unwrap();
    let logs: Vec<String> = jobs
        .iter()
        .map(|job| {
            while h.state(job) != "succeeded" {
                assert!(!["failed", "cancelled"].contains(&h.state(job).as_str()), "{job}: {:?}", h.history(job));
                assert!(Instant::now() < deadline, "job {job} did not finish");
                std::thread::sleep(Duration::from_millis(200));
            }
            text(&h.aic(&["logs", job])).0
        })
        .collect();
    let installed = logs.iter().filter(|l| l.contains("installed 1 package (")).count();
    let cached = logs.iter().filter(|l| l.contains("1 package, cached on this miner")).count();
    assert_eq!((installed, cached), (1, 1), "{logs:#?}");
}

/// A requirement nobody can install fails the job before its program starts, with pip's
/// reason in the job's status.
#[test]
fn a_requirement_that_cannot_be_installed_fails_the_job_before_its_program() {
    let h = Home::new();
    let script = h.write("prog/train.py", "print('the program started')\n");
    let reqs = h.write("needs.txt", "--no-index\nnosuchpkg==1.0\n");
    let out = h.aic(&["run", script.to_str().unwrap(), "--requirements", reqs.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("the program started"), "{stdout}");
    let last = h.history(&h.last_job()).pop().unwrap();
    assert_eq!(last["state"], "failed");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("requirements.txt cannot be installed"), "{reason}");
    assert!(reason.contains("No matching distribution found for nosuchpkg==1.0"), "{reason}");
}

/// `--requirements F` next to a folder with a different requirements.txt of its own is
/// refused before anything is paid.
#[test]
fn two_requirements_for_one_project_are_refused_before_paying() {
    let h = Home::new();
    h.write("p/train.py", "print(1)\n");
    h.write("p/requirements.txt", "numpy\n");
    let other = h.write("other.txt", "scipy\n");
    let out = h.aic(&["run", h.path().join("p").to_str().unwrap(), "--requirements", other.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("has a requirements.txt of its own that differs from --requirements"), "{stderr}");
    assert!(stderr.contains("nothing was paid"), "{stderr}");
}

/// Writes an sdist `<name>-<version>.tar.gz` into `dir` whose in-tree build backend, asked for
/// the package's metadata (what pip's resolution does), leaves a process running that writes
/// a `sitecustomize.py` announcing itself into every folder under `~/.aic-env/` for a minute.
fn planting_sdist(dir: &std::path::Path, name: &str, version: &str) {
    const BACKEND: &str = r#"
import os, subprocess, sys
PLANT = """
import glob, os, time
end = time.time() + 60
while time.time() < end:
    for d in glob.glob(os.path.join(os.environ["HOME"], ".aic-env", "*", "")):
        try:
            open(os.path.join(d, "sitecustomize.py"), "w").write("print('PWNED by a stranger', flush=True)\\n")
        except OSError:
            pass
    time.sleep(0.002)
"""
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    subprocess.Popen([sys.executable, "-c", PLANT], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = os.path.join(metadata_directory, "@NAME@-@VERSION@.dist-info")
    os.makedirs(d)
    open(os.path.join(d, "METADATA"), "w").write("Metadata-Version: 2.1\nName: @NAME@\nVersion: @VERSION@\n")
    return "@NAME@-@VERSION@.dist-info"
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("never built")
"#;
    sdist(dir, name, version, BACKEND);
}

/// Writes an sdist `<name>-<version>.tar.gz` into `dir` whose in-tree build backend is
/// `backend` (Python; `@NAME@` and `@VERSION@` stand for the package's).
fn sdist(dir: &std::path::Path, name: &str, version: &str, backend: &str) {
    const MAKE: &str = r#"
import io, sys, tarfile
dest, name, version, backend = sys.argv[1:5]
files = {
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "aic_backend"\nbackend-path = ["."]\n',
    "aic_backend.py": backend.replace("@NAME@", name).replace("@VERSION@", version),
    "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
}
with tarfile.open(f"{dest}/{name}-{version}.tar.gz", "w:gz") as t:
    for path, body in files.items():
        data = body.encode()
        info = tarfile.TarInfo(f"{name}-{version}/{path}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    std::fs::create_dir_all(dir).unwrap();
    let made = std::process::Command::new("python3")
        .args(["-c", MAKE, dir.to_str().unwrap(), name, version, backend])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

/// A stranger's requirements whose resolution runs its code (an sdist of a package the miner
/// has, at the miner's version, so the environment is the same as the victim's: the same
/// wheel, pinned by its hash) leaves a process planting a `sitecustomize.py` in the build. The
/// stranger's job builds the environment (it is refused, or built clean); the victim's job,
/// asking for the same environment, imports nothing the stranger planted. Without the kill
/// before the build and the fresh build folder, the planted file was sealed into the cache and
/// ran in the victim's program.
#[test]
fn a_strangers_resolution_cannot_plant_code_in_an_environment_another_owner_imports() {
    let h = Home::new();
    let numpy =
        std::process::Command::new("python3").args(["-c", "import numpy; print(numpy.__version__)"]).output().unwrap();
    let numpy = String::from_utf8_lossy(&numpy.stdout).trim().to_string();
    assert!(!numpy.is_empty(), "the miners' Python has numpy (cargo xtask test installs it)");
    // One wheel, the same bytes in both projects (as a package from an index would be).
    let wheels = h.path().join("wheels");
    wheel(&wheels, "aicdemo", "1.0", "VALUE = 42\n");
    let copy_wheels = |to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(&wheels).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let stranger = h.path().join("stranger");
    copy_wheels(&stranger.join("wheels"));
    planting_sdist(&stranger.join("sdists"), "numpy", &numpy);
    std::fs::write(
        stranger.join("requirements.txt"),
        format!(
            "--no-index\n--find-links wheels\n--find-links sdists\n--no-binary numpy\nnumpy=={numpy}\naicdemo==1.0\n"
        ),
    )
    .unwrap();
    std::fs::write(stranger.join("train.py"), "print('stranger done')\n").unwrap();
    let out = h
        .cmd(&["run", stranger.to_str().unwrap(), "--entrypoint", "train.py"])
        .env("AIC_PRIVATE_KEY", aic_chain::devchain::DEV_KEYS[5])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("installed 1 package ("), "the stranger's job built the environment: {stdout}");

    let victim = h.path().join("victim");
    copy_wheels(&victim.join("wheels"));
    std::fs::write(victim.join("requirements.txt"), "--no-index\n--find-links wheels\naicdemo==1.0\n").unwrap();
    std::fs::write(victim.join("train.py"), "import aicdemo\nprint('victim got', aicdemo.VALUE)\n").unwrap();
    let out = h.aic(&["run", victim.to_str().unwrap(), "--entrypoint", "train.py"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 package, cached on this miner"),
        "the victim did not take the stranger's build: {stdout}"
    );
    assert!(stdout.contains("victim got 42"), "{stdout}");
    assert!(!stdout.contains("PWNED"), "the stranger's code ran in the victim's program: {stdout}");
}

/// Writes an sdist `<name>-<version>.tar.gz` into `dir` whose in-tree build backend builds a
/// wheel of a package saying which `SRCDEMO_FLAVOUR` the build saw (`BUILT_WITH`).
fn source_sdist(dir: &std::path::Path, name: &str, version: &str) {
    const BACKEND: &str = r#"
import base64, hashlib, os, zipfile
NAME, VERSION = "@NAME@", "@VERSION@"
DIST = NAME + "-" + VERSION + ".dist-info"
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, DIST))
    open(os.path.join(metadata_directory, DIST, "METADATA"), "w").write("Metadata-Version: 2.1\nName: " + NAME + "\nVersion: " + VERSION + "\n")
    return DIST
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {
        NAME + "/__init__.py": "BUILT_WITH = %r\n" % os.environ.get("SRCDEMO_FLAVOUR", "nothing"),
        DIST + "/METADATA": "Metadata-Version: 2.1\nName: " + NAME + "\nVersion: " + VERSION + "\n",
        DIST + "/WHEEL": "Wheel-Version: 1.0\nGenerator: srcdemo\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, body in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()
        record += "%s,sha256=%s,%d\n" % (path, digest, len(body.encode()))
    files[DIST + "/RECORD"] = record + DIST + "/RECORD,,\n"
    whl = NAME + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, whl), "w") as z:
        for path, body in files.items():
            z.writestr(path, body)
    return whl
"#;
    sdist(dir, name, version, BACKEND);
}

/// A requirement with no wheel is built from its source archive, with the job's own variables
/// (`--env`), and the environment is its owner's alone: the owner's next job takes it from the
/// cache; a second wallet asking for the very same archives and variables builds its own
/// (what a build made is whatever its code chose: without the owner in the environment's
/// name, the second wallet imported the first's build).
#[test]
fn a_package_built_from_source_is_its_owners_alone() {
    let h = Home::new();
    let proj = h.path().join("src-proj");
    source_sdist(&proj.join("sdists"), "srcdemo", "1.0");
    std::fs::write(proj.join("requirements.txt"), "--no-index\n--find-links sdists\nsrcdemo==1.0\n").unwrap();
    std::fs::write(proj.join("train.py"), "import srcdemo\nprint('built with', srcdemo.BUILT_WITH, flush=True)\n")
        .unwrap();
    let run = |key: Option<&str>| {
        let mut cmd =
            h.cmd(&["run", proj.to_str().unwrap(), "--entrypoint", "train.py", "--env", "SRCDEMO_FLAVOUR=tensorflow"]);
        if let Some(k) = key {
            cmd.env("AIC_PRIVATE_KEY", k);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("built with tensorflow"), "the build saw the job's variables: {stdout}");
        stdout
    };
    let first = run(None);
    assert!(first.contains("building from source: srcdemo==1.0 (this environment is yours alone)"), "{first}");
    assert!(first.contains("installed 1 package ("), "{first}");
    let again = run(None);
    assert!(again.contains("1 package, cached on this miner"), "the owner's next job: {again}");
    assert!(!again.contains("building from source"), "{again}");
    let stranger = run(Some(aic_chain::devchain::DEV_KEYS[5]));
    assert!(
        stranger.contains("building from source: srcdemo==1.0"),
        "a second wallet took the first's build: {stranger}"
    );
    assert!(!stranger.contains("cached on this miner"), "{stranger}");
}

/// A dataset is downloaded once into the miner's cache and read from there by the next job of
/// its owner (the program sees the same files, can add its own beside them, cannot change
/// the cached ones); a changed dataset is downloaded again; another wallet's dataset of the
/// same name and bytes never comes from the first owner's copy.
#[test]
fn a_dataset_is_cached_on_the_miner_for_its_owners_next_jobs() {
    let h = Home::new();
    let data = h.path().join("ds");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a.csv"), "1,2,3\n").unwrap();
    std::fs::write(data.join("sub/b.txt"), "bee\n").unwrap();
    assert!(h.aic(&["data", "put", data.to_str().unwrap(), "ds"]).status.success());
    let prog = h.write(
        "readds/train.py",
        "import os\n\
         d = os.environ['AIC_DATA_DIR']\n\
         print('a.csv says', open(os.path.join(d, 'a.csv')).read().strip(), flush=True)\n\
         print('sub/b.txt says', open(os.path.join(d, 'sub', 'b.txt')).read().strip())\n\
         open(os.path.join(d, 'mine.txt'), 'w').write('x')\n\
         print('added a file beside the dataset')\n\
         try:\n    open(os.path.join(d, 'a.csv'), 'a').write('tampered')\n    print('changed the cached dataset')\n\
         except OSError as e:\n    print('the cached dataset is read-only:', type(e).__name__)\n",
    );
    let run = |key: Option<&str>| {
        let args = ["run", prog.to_str().unwrap(), "--data", "ds"];
        let mut c = h.cmd(&args);
        if let Some(k) = key {
            c.env("AIC_PRIVATE_KEY", k);
        }
        let out = shown(&args, c);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let first = run(None);
    assert!(
        first.contains("dataset ds (2 files, 10 B): downloaded in") && first.contains("kept in this miner's cache"),
        "{first}"
    );
    assert!(first.contains("a.csv says 1,2,3") && first.contains("sub/b.txt says bee"), "{first}");
    assert!(first.contains("added a file beside the dataset"), "{first}");
    if sandboxed() {
        assert!(first.contains("the cached dataset is read-only: PermissionError"), "{first}");
    }
    let second = run(None);
    assert!(second.contains("dataset ds (2 files, 10 B): from this miner's cache"), "{second}");
    assert!(second.contains("a.csv says 1,2,3"), "the cached copy changed: {second}");
    // A changed dataset is another: downloaded again.
    std::fs::write(data.join("a.csv"), "4,5,6\n").unwrap();
    assert!(h.aic(&["data", "put", data.to_str().unwrap(), "ds"]).status.success());
    let third = run(None);
    assert!(third.contains("kept in this miner's cache") && third.contains("a.csv says 4,5,6"), "{third}");
    // Another wallet's dataset of the same name and bytes: its own download.
    let stranger = aic_chain::devchain::DEV_KEYS[5];
    let mut put = h.cmd(&["data", "put", data.to_str().unwrap(), "ds"]);
    put.env("AIC_PRIVATE_KEY", stranger);
    assert!(put.output().unwrap().status.success());
    let theirs = run(Some(stranger));
    assert!(theirs.contains("downloaded in") && !theirs.contains("from this miner's cache"), "{theirs}");
}

/// The embedded pool runs no container images: `--image` is refused in one line, before
/// anything is paid.
#[test]
fn an_image_is_refused_on_the_embedded_pool_before_paying() {
    let h = Home::new();
    let script = h.write("t/train.py", "print(1)\n");
    let out = h.aic(&["run", script.to_str().unwrap(), "--image", "pytorch/pytorch:2.5.1"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("the embedded pool runs no container images") && lines[0].contains("nothing was paid"),
        "{stderr}"
    );
    assert!(!stderr.contains("deposited"), "{stderr}");
}

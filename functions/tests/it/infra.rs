//! The deployment files, checked: the SAM template by cfn-lint (and by what it must wire),
//! the MinIO set-up script, the docker-compose file. None of these can run here (no AWS, no
//! MinIO, no Docker); what can be checked without them is.

use std::path::{Path, PathBuf};
use std::process::Command;

use aic_core::layout::{KeyKind, classify};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join(rel)).unwrap()).unwrap()
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => &t.value,
        v => v,
    }
}

/// The variables `aic_functions::config` documents.
fn documented_vars() -> String {
    std::fs::read_to_string(repo().join("functions/src/config.rs")).unwrap()
}

fn cfn_lint(path: &Path) -> std::process::Output {
    Command::new("cfn-lint")
        .arg(path)
        .output()
        .expect("cfn-lint is not on PATH: run the suite with `cargo xtask test`, which installs it")
}

#[test]
fn the_sam_template_passes_cfn_lint_and_a_broken_one_does_not() {
    let template = repo().join("infra/aws/template.yaml");
    let out = cfn_lint(&template);
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a property of the wrong type, a resource type that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&template).unwrap();
    for (from, to, code) in
        [("MemorySize: 256", "MemorySize: lots", "E3012"), ("AWS::S3::Bucket\n", "AWS::S3::Buckett\n", "E3006")]
    {
        let broken = dir.path().join("template.yaml");
        assert!(text.contains(from));
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let out = cfn_lint(&broken);
        assert!(!out.status.success(), "{to}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(code), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// Every `!Ref X` / `!GetAtt X.…` in the template names a parameter or resource (cfn-lint
/// does not check this inside SAM functions), SAM's generated `<Function>Url` included.
#[test]
fn every_reference_in_the_sam_template_resolves() {
    let text = std::fs::read_to_string(repo().join("infra/aws/template.yaml")).unwrap();
    let t = yaml("infra/aws/template.yaml");
    let mut names: Vec<String> = Vec::new();
    for section in ["Parameters", "Resources"] {
        names.extend(t[section].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()));
    }
    let generated: Vec<String> = names.iter().map(|n| format!("{n}Url")).collect();
    let mut seen = 0;
    for (tag, sep) in [("!Ref ", None), ("!GetAtt ", Some('.'))] {
        for part in text.split(tag).skip(1) {
            let word: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
            let name = match sep {
                Some(s) => word.split(s).next().unwrap().to_string(),
                None => word,
            };
            assert!(names.contains(&name) || generated.contains(&name), "{tag}{name} names nothing in the template");
            seen += 1;
        }
    }
    assert!(seen > 10);
}

#[test]
fn the_sam_template_wires_the_binaries_and_keys_this_repository_has() {
    let t = yaml("infra/aws/template.yaml");
    let resources = t["Resources"].as_mapping().unwrap();
    let mut bins = Vec::new();
    let mut suffixes = Vec::new();
    for (name, r) in resources {
        if r["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let uri = r["Properties"]["CodeUri"].as_str().unwrap();
        let bin = uri.trim_end_matches('/').rsplit('/').next().unwrap().to_string();
        assert!(uri.starts_with("../../target/lambda/"), "{name:?}: {uri}");
        assert!(repo().join(format!("functions/src/bin/{bin}.rs")).exists(), "{name:?}: no binary {bin}");
        bins.push(bin);
        if let Some(events) = r["Properties"]["Events"].as_mapping() {
            for (_, e) in events.iter().filter(|(_, e)| e["Type"] == "S3") {
                for rule in e["Properties"]["Filter"]["S3Key"]["Rules"].as_sequence().unwrap() {
                    if rule["Name"] == "suffix" {
                        suffixes.push(rule["Value"].as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    bins.sort();
    assert_eq!(
        bins,
        ["aic-lambda-dispatch", "aic-lambda-gateway", "aic-lambda-redrive", "aic-lambda-settle", "aic-lambda-validate"]
    );
    // The suffixes S3 filters on are the keys validate and dispatch act on.
    let job = "users/0x70997970c51812dc3a010c7d01b50e0d17dc79c8/jobs/01kbx8m3s2q4fz3x9m2w5a7c8d";
    suffixes.sort();
    assert_eq!(suffixes, ["/manifest.json", "/request.json", "/status.json"]);
    assert!(matches!(classify(&format!("{job}/status.json")), KeyKind::StatusSnapshot(_)));
    assert!(matches!(classify(&format!("{job}/request.json")), KeyKind::Request(_)));
    assert!(matches!(classify(&format!("{job}/manifest.json")), KeyKind::Manifest(_)));
    // A resume's request and its run's manifest end the same way, and go to the same functions.
    assert!(matches!(classify(&format!("{job}/runs/1/request.json")), KeyKind::ResumeRequest(_, 1)));
    assert!(matches!(classify(&format!("{job}/runs/1/manifest.json")), KeyKind::Manifest(_)));
    // Every variable the template sets is one the functions read.
    let docs = documented_vars();
    let vars = t["Globals"]["Function"]["Environment"]["Variables"].as_mapping().unwrap();
    for (k, v) in vars {
        let k = k.as_str().unwrap();
        assert!(docs.contains(&format!("`{k}`")), "{k} is not a variable the functions read");
        assert!(!untag(v).is_null());
    }
}

#[test]
fn the_minio_setup_sends_the_keys_the_functions_act_on_to_the_webhook() {
    let path = repo().join("infra/minio/setup.sh");
    assert!(Command::new("sh").arg("-n").arg(&path).status().unwrap().success());
    let s = std::fs::read_to_string(&path).unwrap();
    assert!(s.contains(r#"endpoint="${url%/}/events""#), "the host's webhook is /events");
    assert!(s.contains("--event put --prefix users/ --suffix .json"));
    assert!(s.contains("queue_dir="), "undelivered events must be kept");
    // Browsers reach MinIO from the web app's origin (presigned uploads and downloads).
    assert!(s.contains(r#"api cors_allow_origin="$web""#), "the web app's origin must be allowed");
    // The filter (prefix users/, suffix .json) passes every key a function acts on, and not
    // the log chunks and outputs that would flood it.
    let job = "users/0x70997970c51812dc3a010c7d01b50e0d17dc79c8/jobs/01kbx8m3s2q4fz3x9m2w5a7c8d";
    let passes = |k: &str| k.starts_with("users/") && k.ends_with(".json");
    for k in ["request.json", "manifest.json", "status/00000003.json", "runs/1/request.json", "runs/1/manifest.json"] {
        let key = format!("{job}/{k}");
        assert!(passes(&key) && !matches!(classify(&key), KeyKind::Other), "{key}");
    }
    assert!(!passes(&format!("{job}/logs/0/00000001.log")));
}

#[test]
fn the_compose_file_runs_the_host_with_a_whole_configuration() {
    let c = yaml("localstack/docker-compose.yml");
    let services = c["services"].as_mapping().unwrap();
    for s in ["minio", "anvil", "functions", "minio-setup"] {
        assert!(services.contains_key(s), "no {s} service");
    }
    // Every service is one the pool uses (a LocalStack nothing pointed at was there).
    assert_eq!(services.len(), 4, "{:?}", services.keys().collect::<Vec<_>>());
    // The build context leaves out the build output and installed packages.
    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap_or_default();
    for big in ["target", "contracts/node_modules", ".git"] {
        assert!(ignored.lines().any(|l| l.trim() == big), "{big} is not in .dockerignore");
    }
    let f = &c["services"]["functions"];
    let cmd: Vec<&str> = f["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&cmd[..2], ["aic-functions", "serve"]);
    let docs = documented_vars();
    let env = f["environment"].as_mapping().unwrap();
    for (k, _) in env {
        let k = k.as_str().unwrap();
        assert!(docs.contains(&format!("`{k}`")) || k.starts_with("AWS_"), "{k} is not a variable the functions read");
    }
    let secret = env[&Value::from("AIC_GATEWAY_SECRET")].as_str().unwrap();
    assert!(secret.len() >= 32 && hex::decode(secret).is_ok());
    let token = env[&Value::from("AIC_WEBHOOK_TOKEN")].as_str().unwrap();
    let setup = c["services"]["minio-setup"]["command"][0].as_str().unwrap();
    assert!(setup.contains("/infra/setup.sh pool aic http://functions:8080") && setup.ends_with(token), "{setup}");
    assert!(repo().join("localstack/Dockerfile").exists());
    // Every image pinned to a release, none floating (`latest`, or no tag).
    for (name, svc) in services {
        if let Some(image) = svc["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(!tag.is_empty() && tag != "latest", "{name:?}: {image} is not pinned");
        }
    }
    // The anvil image is the release the tests run.
    let pkg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("contracts/package.json")).unwrap()).unwrap();
    let anvil = pkg["devDependencies"]["@foundry-rs/anvil-linux-amd64"]
        .as_str()
        .or(pkg["dependencies"]["@foundry-rs/anvil-linux-amd64"].as_str())
        .unwrap();
    assert_eq!(c["services"]["anvil"]["image"].as_str(), Some(format!("ghcr.io/foundry-rs/foundry:v{anvil}").as_str()));
    // A MinIO release from before the fix of CVE-2025-62506 (October 2025) is said to be one.
    let minio = c["services"]["minio"]["image"].as_str().unwrap();
    let release = minio.rsplit_once(":RELEASE.").map(|(_, r)| r.to_string()).unwrap();
    if release.as_str() < "2025-10-15" {
        let readme = std::fs::read_to_string(repo().join("docs/pool.md")).unwrap();
        assert!(readme.contains(&format!("`RELEASE.{release}`, predates a published security")), "{minio}");
        assert!(readme.contains("CVE-2025-62506"));
    }
    for f in ["localstack/Dockerfile", "infra/nomad/worker.Dockerfile"] {
        let d = std::fs::read_to_string(repo().join(f)).unwrap();
        for from in d.lines().filter(|l| l.starts_with("FROM ")) {
            let image = from.split_whitespace().nth(1).unwrap();
            assert!(image.contains(':') && !image.ends_with(":latest") && !image.contains(":1-"), "{f}: {from}");
        }
    }
}

fn nomad(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("infra/nomad").join(rel)).unwrap();
    hcl::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not valid HCL: {e}"))
}

/// Names set by `KEY=` lines of a template's data.
fn template_keys(task: &serde_json::Value) -> Vec<String> {
    task["template"]["data"]
        .as_str()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_string()))
        .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

fn only<'a>(v: &'a serde_json::Value, what: &str) -> (&'a String, &'a serde_json::Value) {
    let m = v.as_object().unwrap_or_else(|| panic!("{what}: not a block"));
    assert_eq!(m.len(), 1, "{what}: one block expected");
    m.iter().next().unwrap()
}

#[test]
fn the_nomad_functions_job_runs_the_real_binary_with_variables_it_reads() {
    let job = nomad("functions.nomad.hcl");
    let (_, job) = only(&job["job"], "job");
    assert_eq!(job["namespace"], "aic");
    let (_, group) = only(&job["group"], "group");
    let (_, task) = only(&group["task"], "task");
    let command = task["config"]["command"].as_str().unwrap();
    let bin = command.rsplit('/').next().unwrap();
    assert!(repo().join(format!("functions/src/bin/{bin}.rs")).exists(), "{command}: no such binary");
    let args: Vec<&str> = task["config"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(&args[..2], ["serve", "--listen"]);
    // The port it listens on is the group's port, and the service checks the host's /healthz.
    let port = group["network"]["port"].as_object().unwrap().keys().next().unwrap();
    assert!(args[2].ends_with(&format!("${{NOMAD_PORT_{port}}}")));
    assert_eq!(group["service"]["port"], port.as_str());
    assert_eq!(group["service"]["check"]["path"], "/healthz");
    assert!(std::fs::read_to_string(repo().join("functions/src/host.rs")).unwrap().contains("\"/healthz\""));
    let docs = documented_vars();
    let mut names: Vec<String> = task["env"].as_object().unwrap().keys().cloned().collect();
    names.extend(template_keys(task));
    for k in &names {
        assert!(docs.contains(&format!("`{k}`")) || k.starts_with("AWS_"), "{k} is not a variable the functions read");
    }
    for must in [
        "AIC_STORE",
        "AIC_SCHEDULER",
        "NOMAD_ADDR",
        "NOMAD_TOKEN",
        "AIC_GATEWAY_SECRET",
        "AIC_WEBHOOK_TOKEN",
        "AIC_WORKER_GATEWAY",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} is not set");
    }
    // Secrets come from Nomad Variables, not the job file.
    assert!(task["env"].get("AIC_GATEWAY_SECRET").is_none() && task["env"].get("NOMAD_TOKEN").is_none());
    // The workers' gateway is a stable address, not this host's dynamic one (frozen into every
    // job, a redeploy of the functions would cut them all off), and the serving gateway at that
    // address passes the API on to the functions hosts.
    let wg = task["env"]["AIC_WORKER_GATEWAY"].as_str().unwrap();
    assert!(!wg.contains("NOMAD_ADDR") && !wg.contains("NOMAD_PORT") && !wg.contains("NOMAD_IP"), "{wg}");
    let text = std::fs::read_to_string(repo().join("infra/nomad/functions.nomad.hcl")).unwrap();
    let default = text
        .split("variable \"worker_gateway\"")
        .nth(1)
        .and_then(|r| r.split("default = \"").nth(1))
        .and_then(|r| r.split('"').next())
        .unwrap();
    let sg = std::fs::read_to_string(repo().join("infra/nomad/serving-gateway.nomad.hcl")).unwrap();
    let static_port = sg.split("static = ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    assert!(default.ends_with(&format!(":{static_port}")) && default.contains("aic-serving-gateway"), "{default}");
    assert!(
        sg.contains("location /v1/ {\n                proxy_pass http://aic_functions;"),
        "the serving gateway does not pass the API on"
    );
}

#[test]
fn the_nomad_worker_template_matches_the_spec_the_scheduler_registers() {
    use aic_core::scheduler::nomad::job_spec;
    let job = nomad("worker.nomad.hcl");
    let (_, job) = only(&job["job"], "job");
    assert_eq!(job["type"], "batch");
    let (_, group) = only(&job["group"], "group");
    let (_, task) = only(&group["task"], "task");
    assert!(task["config"]["command"].as_str().unwrap().ends_with("/aic-worker"));
    assert!(repo().join("worker/src/main.rs").exists());
    // What the code registers for a train job.
    let cfg = nomad_cfg(vec![("AIC_STORE".into(), "s3://aic".into())], Some("nomad/jobs"));
    // One GPU, the file's default (`var.gpus`): memory and /dev/shm scale with GPUs.
    let (key, m) = manifest("train", "train.py", 2, 1);
    let spec = job_spec(&cfg, &key, &m, 0, 3_000_123);
    let tg = &spec["TaskGroups"][0];
    let t = &tg["Tasks"][0];
    // Same environment names (the HCL gets the store's from its template).
    let mut hcl_env: Vec<String> = task["env"].as_object().unwrap().keys().cloned().collect();
    hcl_env.extend(template_keys(task));
    let mut spec_env: Vec<String> = t["Env"].as_object().unwrap().keys().cloned().collect();
    spec_env.extend(["AWS_ACCESS_KEY_ID".to_string(), "AWS_SECRET_ACCESS_KEY".to_string()]);
    for k in &spec_env {
        assert!(hcl_env.contains(k), "{k} is registered by the scheduler but not in worker.nomad.hcl");
        assert_eq!(
            task["env"].get(k).and_then(|v| v.as_str()).filter(|v| v.starts_with("${NOMAD") || v.starts_with("${node")),
            t["Env"].get(k).and_then(|v| v.as_str()).filter(|v| v.starts_with("${NOMAD") || v.starts_with("${node")),
            "{k}"
        );
    }
    // Every variable the worker needs, it gets: the store, and the launch contract the
    // worker reads back (`aic_core::scheduler::launch`), with the values Nomad fills in.
    let worker = std::fs::read_to_string(repo().join("worker/src/alloc.rs")).unwrap();
    assert!(worker.contains("env(\"AIC_STORE\")"), "the worker reads AIC_STORE");
    assert!(spec_env.iter().any(|e| e == "AIC_STORE"), "AIC_STORE is given to the worker");
    let filled = |k: &str| {
        let v = t["Env"].get(k)?.as_str()?.to_string();
        Some(match v.as_str() {
            "${NOMAD_ALLOC_INDEX}" | "${NOMAD_META_aic_attempt}" => "0".to_string(),
            "${NOMAD_PORT_rdzv}" | "${NOMAD_PORT_http}" => "20000".to_string(),
            _ => v,
        })
    };
    let launch = aic_core::scheduler::launch::Launch::from_env(filled);
    assert!(launch.is_ok(), "the worker cannot read what it is given: {launch:?}");
    // The same port, device, restart and reschedule choices.
    let port = group["network"]["port"].as_object().unwrap().keys().next().unwrap();
    assert_eq!(tg["Networks"][0]["DynamicPorts"][0]["Label"], port.as_str());
    assert!(task["resources"]["device"].get(t["Resources"]["Devices"][0]["Name"].as_str().unwrap()).is_some());
    assert_eq!(group["restart"]["attempts"], tg["RestartPolicy"]["Attempts"]);
    assert_eq!(group["restart"]["mode"], tg["RestartPolicy"]["Mode"]);
    assert_eq!(group["reschedule"]["attempts"], tg["ReschedulePolicy"]["Attempts"]);
    assert_eq!(group["constraint"]["operator"], tg["Constraints"][0]["Operand"]);
    assert_eq!(task["kill_signal"], t["KillSignal"]);
    assert_eq!(group["disconnect"]["replace"], tg["Disconnect"]["Replace"]);
    assert_eq!(task["kill_timeout"], "30s");
    // The same driver and container settings as the default the functions register with.
    assert_eq!(task["driver"], t["Driver"]);
    for (k, v) in t["Config"].as_object().unwrap() {
        if k != "image" {
            assert_eq!(&task["config"][k], v, "config.{k}");
        }
    }
    let file = nomad("worker.nomad.hcl");
    assert_eq!(file["variable"]["image"]["default"], aic_core::scheduler::nomad::DEFAULT_IMAGE);
    // The image has the worker where the task starts it, and is built under the default's name.
    let docker = std::fs::read_to_string(repo().join("infra/nomad/worker.Dockerfile")).unwrap();
    let command = t["Config"]["command"].as_str().unwrap();
    assert!(
        docker.lines().any(|l| l.starts_with("COPY ") && l.ends_with(command)),
        "worker.Dockerfile puts no {command}"
    );
    assert!(docker.contains(&format!("-t {} .", aic_core::scheduler::nomad::DEFAULT_IMAGE)));
    for tool in ["openmpi-bin", "openssh-server", "torch==", "uwsgi", "install_horovod.sh"] {
        assert!(docker.contains(tool), "the worker image lacks {tool}");
    }
    // The worker is built on the runtime image's own Ubuntu release, so it needs no newer
    // glibc than the image has (built on Debian bookworm, glibc 2.36, it would not start on
    // Ubuntu 22.04's 2.35).
    let froms: Vec<&str> =
        docker.lines().filter_map(|l| l.strip_prefix("FROM ")).map(|l| l.split_whitespace().next().unwrap()).collect();
    let (build, run) = (froms[0], froms[froms.len() - 1]);
    let release = |image: &str| -> String {
        let tag = image.rsplit(':').next().unwrap();
        let at = tag.find("ubuntu").unwrap_or_else(|| panic!("{image}: not an Ubuntu image"));
        tag[at + "ubuntu".len()..].trim_start_matches(':').to_string()
    };
    let build_release = build.strip_prefix("ubuntu:").map(String::from).unwrap_or_else(|| release(build));
    assert_eq!(build_release, release(run), "built on {build}, run on {run}");
    // The toolchain the image builds with is the one this repository is built and tested with.
    let rustc =
        String::from_utf8(std::process::Command::new("rustc").arg("--version").output().unwrap().stdout).unwrap();
    let version = rustc.split_whitespace().nth(1).unwrap();
    assert!(
        docker.contains(&format!("--default-toolchain {version}")),
        "the image builds with another Rust than {version}"
    );
    assert_eq!(t["KillTimeout"], 30_000_000_000u64);
}

#[test]
fn the_nomad_minio_job_posts_its_events_to_the_functions_host() {
    let job = nomad("minio.nomad.hcl");
    let (_, job) = only(&job["job"], "job");
    let (_, group) = only(&job["group"], "group");
    let (_, task) = only(&group["task"], "task");
    assert_eq!(task["env"]["MINIO_NOTIFY_WEBHOOK_ENABLE_AIC"], "on");
    // One webhook target, wherever MinIO runs: MinIO names an environment target by its
    // variables' suffix as written (`AIC`), and setup.sh configures and names the same one in
    // the bucket's rule (it made a second, `aic`, which the rule named: the target that
    // follows the functions service was never used).
    let setup = std::fs::read_to_string(repo().join("infra/minio/setup.sh")).unwrap();
    let targets: std::collections::BTreeSet<&str> =
        setup.split("notify_webhook:").skip(1).filter_map(|r| r.split_whitespace().next()).collect();
    assert_eq!(targets.into_iter().collect::<Vec<_>>(), ["AIC"], "setup.sh's targets");
    assert!(setup.contains("arn:minio:sqs::AIC:webhook"), "the bucket's rule names the job's target");
    assert!(task["env"]["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_AIC"].as_str().is_some(), "undelivered events must be kept");
    let data = task["template"]["data"].as_str().unwrap();
    assert!(data.contains("nomadService \"aic-functions\"") && data.contains("/events"), "{data}");
    // The functions job registers the service this looks up.
    let f = nomad("functions.nomad.hcl");
    let (_, fjob) = only(&f["job"], "job");
    let (_, fgroup) = only(&fjob["group"], "group");
    assert_eq!(fgroup["service"]["name"], "aic-functions");
    // The ACL policy grants what the scheduler calls need.
    let policy = std::fs::read_to_string(repo().join("infra/nomad/acl/aic-functions.policy.hcl")).unwrap();
    let p: serde_json::Value = hcl::from_str(&policy).unwrap();
    let caps = p["namespace"]["aic"]["capabilities"].to_string();
    // alloc-exec: `aic exec` through Nomad's allocation exec API.
    for c in ["submit-job", "read-job", "alloc-exec"] {
        assert!(caps.contains(c), "{c}");
    }
    assert_eq!(p["node"]["policy"], "read");
    // The workers' tokens go in each job's own variable (`spec::token_var`): the policy lets
    // the functions write and delete those, take the leader lock, and claim jobs' uids
    // (`uids::PREFIX`); no other variable.
    let path = aic_core::scheduler::nomad::token_var("aic-x");
    assert_eq!(path, "nomad/jobs/aic-x");
    let vars = &p["namespace"]["aic"]["variables"]["path"];
    let leader = aic_core::scheduler::nomad::NomadConfig::new("http://x").leader_lock;
    assert_eq!(
        vars.as_object().map(|m| m.keys().cloned().collect::<std::collections::BTreeSet<_>>()),
        Some(
            ["nomad/jobs/aic-*".to_string(), leader.clone(), format!("{}*", aic_core::scheduler::nomad::uids::PREFIX)]
                .into()
        ),
        "{p}"
    );
    let uid_caps = vars[&format!("{}*", aic_core::scheduler::nomad::uids::PREFIX)]["capabilities"].to_string();
    assert!(["write", "read", "destroy"].iter().all(|c| uid_caps.contains(c)), "{uid_caps}");
    assert!(vars[&leader]["capabilities"].to_string().contains("write"), "the leader lock is taken with write");
    let var_caps = vars["nomad/jobs/aic-*"]["capabilities"].to_string();
    assert!(var_caps.contains("write") && var_caps.contains("destroy") && !var_caps.contains("list"), "{var_caps}");
}

/// What an operator must do on the miners that no job file can: the docs say how to register
/// Docker's `nvidia` runtime (the docker driver asks for it by name for a task with GPUs,
/// `drivers/docker/driver.go`) and how to check it, and that `raw_exec` needs
/// `alloc-node-exec` for `aic exec`.
#[test]
fn the_runbook_says_how_to_register_the_nvidia_runtime_and_what_raw_exec_needs() {
    let readme = std::fs::read_to_string(repo().join("docs/pool.md")).unwrap();
    assert!(readme.contains("nvidia-ctk runtime configure --runtime=docker"), "how to register the runtime");
    assert!(readme.contains("docker info --format '{{json .Runtimes}}'"), "how to check it");
    assert!(readme.contains("alloc-node-exec"), "what raw_exec's exec needs");
}

#[test]
fn the_nomad_serving_gateway_routes_deployments_as_the_code_names_them() {
    let job = nomad("serving-gateway.nomad.hcl");
    let (_, job) = only(&job["job"], "job");
    let (_, group) = only(&job["group"], "group");
    let (_, task) = only(&group["task"], "task");
    let tmpl = task["template"]["data"].as_str().unwrap();
    // Deployments' origins go to the functions hosts, which forward only to ready and healthy
    // replicas: nginx cannot tell which are (`nomadService` lists every registration).
    // Each deployment has an origin of its own under the serving domain: that server passes
    // every path with the Host it came with, which the functions host routes by.
    assert!(
        std::fs::read_to_string(repo().join("functions/src/host.rs")).unwrap().contains("proxy.label(req.headers())")
    );
    let sites = tmpl
        .split("server_name *.{{ env \"AIC_SERVING_DOMAIN\" }};")
        .nth(1)
        .expect("a server for deployments' origins");
    assert_eq!(task["env"]["AIC_SERVING_DOMAIN"], "${var.serving_domain}", "{task}");
    let sites = sites.split("server {").next().unwrap();
    for line in ["location / {", "proxy_pass http://aic_functions;", "proxy_set_header Host $host;"] {
        assert!(sites.lines().any(|l| l.trim() == line), "{line}: {sites}");
    }
    // The functions host is told the same domain.
    let domain = job_variable(&nomad("serving-gateway.nomad.hcl"), "serving_domain");
    let origin = job_variable(&nomad("functions.nomad.hcl"), "serving_origin");
    let origins: aic_schemas::origin::Origins = origin.parse().unwrap();
    assert_eq!(origins.label(&format!("x.{domain}")), Some("x"), "{origin} vs {domain}");
    let functions = nomad("functions.nomad.hcl");
    let (_, fjob) = only(&functions["job"], "job");
    let (_, fgroup) = only(&fjob["group"], "group");
    let (_, ftask) = only(&fgroup["task"], "task");
    assert_eq!(ftask["env"]["AIC_SERVING_ORIGIN"], "${var.serving_origin}", "{ftask}");
    assert!(!tmpl.contains("aic-serve-"), "no upstream straight from unfiltered service registrations");
    // Its own health check path is one nginx answers, in the default server (a deployment's
    // own /healthz is the deployment's).
    assert_eq!(group["service"]["check"]["path"], "/healthz");
    let default = tmpl.split("default_server;").nth(1).expect("a default server");
    assert!(default.contains("location = /healthz"));
    assert!(!sites.contains("/healthz"));
    assert!(tmpl.contains("proxy_next_upstream"), "a failed functions host is passed over");
    // The old paths reach the functions host, which redirects them to the origins.
    assert!(default.contains("location /d/ {\n") && default.contains("location /n/ {\n"), "{tmpl}");
    let fsvc = fgroup["service"]["name"].as_str().unwrap();
    // A functions host leaves the service before it is stopped, long enough for nginx's
    // template (up to 5 s) to drop it (the reload itself is run in `host.rs`).
    assert_eq!(fgroup["shutdown_delay"], "10s", "{fgroup}");
    assert!(tmpl.contains(&format!("range nomadService \"{fsvc}\"")), "{tmpl}");
    assert_eq!(task["template"]["change_signal"], "SIGHUP", "nginx reloads when replicas come and go");
}

/// A job file's variable's default.
fn job_variable(file: &serde_json::Value, name: &str) -> String {
    file["variable"][name]["default"].as_str().unwrap_or_else(|| panic!("no variable {name}: {file}")).to_string()
}

fn nomad_cfg(worker_env: Vec<(String, String)>, secrets_var: Option<&str>) -> aic_core::scheduler::nomad::NomadConfig {
    // The defaults the functions register with.
    let mut c = aic_core::scheduler::nomad::NomadConfig::new("http://x");
    c.worker_env = worker_env;
    c.secrets_var = secrets_var.map(String::from);
    c
}

fn manifest(
    kind: &str,
    entrypoint: &str,
    miners: u32,
    gpus: u32,
) -> (aic_core::layout::JobKey, aic_schemas::JobManifest) {
    let now = chrono::Utc::now();
    let m: aic_schemas::JobManifest = serde_json::from_value(serde_json::json!({
        "version": 1,
        "request": {"version": 1, "kind": kind, "owner": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
            "job_id": aic_schemas::JobId::generate(), "entrypoint": entrypoint, "miners": miners, "gpus_per_miner": gpus,
            "max_hours": 1.0, "created_at": now, "expires_at": now + chrono::Duration::hours(1)},
        "quote": {"gpu_hours": 1.0, "price_per_gpu_hour": "0", "total": "0"}, "validated_at": now,
    }))
    .unwrap();
    (aic_core::layout::JobKey::new(m.request.owner, m.request.job_id.clone()), m)
}

/// What a job file's templates read from a Nomad Variable, and what its instructions put
/// there: every key read is set (an unset one renders as `<no value>`).
#[test]
fn the_nomad_variables_the_templates_read_are_the_ones_the_instructions_set() {
    let text = std::fs::read_to_string(repo().join("infra/nomad/functions.nomad.hcl")).unwrap();
    let put: String = text.lines().filter(|l| l.starts_with('#')).collect::<Vec<_>>().join(" ");
    let put = put.split("nomad var put").nth(1).expect("the file says how to set its variables");
    let read: Vec<&str> = text.split("{{ .").skip(1).filter_map(|r| r.split_whitespace().next()).collect();
    assert!(read.len() >= 5, "{read:?}");
    for key in read {
        assert!(put.contains(&format!(" {key}=")), "{key} is read but `nomad var put` never sets it");
    }
    // The namespace the jobs run in is created by the instructions.
    assert!(text.contains("nomad namespace apply") && text.contains("namespace   = \"aic\""));
}

/// Template data goes to consul-template as it is: `${…}` is not interpolated there, so a
/// template names the task's variables with `{{ env "…" }}`.
#[test]
fn nomad_templates_name_task_variables_the_way_consul_template_reads_them() {
    for file in ["functions.nomad.hcl", "worker.nomad.hcl", "minio.nomad.hcl", "serving-gateway.nomad.hcl"] {
        let text = std::fs::read_to_string(repo().join("infra/nomad").join(file)).unwrap();
        for data in text.split("<<-EOT").skip(1) {
            let body = data.split("EOT").next().unwrap();
            assert!(!body.contains("${"), "{file}: a template's data uses ${{…}}, which it passes through verbatim");
        }
    }
}

/// Each function gets the S3 rights it uses and no more: no delete, ACL or lifecycle rights
/// for validate and dispatch; the gateway (whose presigned URLs act with its rights) may
/// delete a user's data and abort an unfinished multipart upload.
#[test]
fn each_function_has_the_s3_rights_it_uses_and_no_more() {
    let t = yaml("infra/aws/template.yaml");
    let actions = |f: &str| -> Vec<String> {
        let policies = t["Resources"][f]["Properties"]["Policies"].as_sequence().unwrap();
        let mut out = Vec::new();
        for p in policies {
            assert!(p.get("Statement").is_some(), "{f}: a managed policy template ({p:?}) grants more than it names");
            for st in p["Statement"].as_sequence().unwrap() {
                out.extend(st["Action"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_string()));
            }
        }
        out.sort();
        out
    };
    let secrets = "secretsmanager:GetSecretValue";
    assert_eq!(actions("ValidateFunction"), ["s3:GetObject", "s3:ListBucket", "s3:PutObject", secrets]);
    assert_eq!(
        actions("DispatchFunction"),
        ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject", secrets]
    );
    assert_eq!(
        actions("RedriveFunction"),
        ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject", secrets]
    );
    assert_eq!(actions("SettleFunction"), ["s3:GetObject", "s3:ListBucket", "s3:PutObject", secrets]);
    // No secret in any function's environment: each reads the Secrets Manager secrets its
    // AIC_SECRETS_ID names, which are the ones its role may read; the settler's key reaches
    // the two functions that settle, and no other.
    let globals = &t["Globals"]["Function"]["Environment"]["Variables"];
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let vars = &r["Properties"]["Environment"]["Variables"];
        for key in aic_functions::secrets::KEYS {
            assert!(vars[key].is_null() && globals[key].is_null(), "{name:?}: {key} in its environment");
        }
        let id = match &vars["AIC_SECRETS_ID"] {
            serde_yaml_ng::Value::Null => format!("{:?}", globals["AIC_SECRETS_ID"]),
            v => format!("{v:?}"),
        };
        let readable = format!("{:?}", r["Properties"]["Policies"]);
        for arn in ["GatewaySecretArn", "SettlerSecretArn", "NomadSecretArn"] {
            assert_eq!(
                id.contains(arn),
                readable.contains(arn),
                "{name:?}: {arn} named but not readable, or readable but not named"
            );
        }
        let settles = matches!(name.as_str(), Some("SettleFunction" | "RedriveFunction"));
        assert_eq!(id.contains("SettlerSecretArn"), settles, "{name:?}");
    }
    // Their deletes reach only the queues they take entries out of.
    let deletes = |f: &str| -> Vec<String> {
        let st = t["Resources"][f]["Properties"]["Policies"][0]["Statement"].as_sequence().unwrap();
        let d = st.iter().find(|s| s["Action"][0] == "s3:DeleteObject").unwrap();
        let r = &d["Resource"];
        let list = r.as_sequence().cloned().unwrap_or_else(|| vec![r.clone()]);
        list.iter().map(|x| format!("{x:?}")).collect()
    };
    for f in ["DispatchFunction", "RedriveFunction"] {
        for r in deletes(f) {
            assert!(
                r.contains("/pool/gang/*") || (f == "RedriveFunction" && r.contains("/pool/redrive/*")),
                "{f} may delete {r}"
            );
        }
    }
    let layout = std::fs::read_to_string(repo().join("core/src/layout.rs")).unwrap();
    assert!(layout.contains("\"pool/gang/\"") && layout.contains("\"pool/redrive/\""));
    // The re-driver runs on a schedule.
    let ev = &t["Resources"]["RedriveFunction"]["Properties"]["Events"]["EveryMinute"];
    assert_eq!(
        (ev["Type"].as_str(), ev["Properties"]["Schedule"].as_str()),
        (Some("Schedule"), Some("rate(1 minute)"))
    );
    assert_eq!(
        actions("GatewayFunction"),
        ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject", secrets]
    );
}

/// The `exec` driver runs a task in a chroot built from the client's `chroot_env`, whose
/// default has `/usr` but not `/opt`: the job files' commands live where it finds them.
#[test]
fn nomad_commands_live_where_the_exec_drivers_chroot_has_them() {
    for file in ["functions.nomad.hcl", "worker.nomad.hcl", "minio.nomad.hcl", "serving-gateway.nomad.hcl"] {
        let text = std::fs::read_to_string(repo().join("infra/nomad").join(file)).unwrap();
        assert!(!text.contains("\"/opt/"), "{file}: a path under /opt is outside exec's default chroot");
    }
}

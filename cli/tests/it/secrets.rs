//! Secrets (`aic secret set|ls|rm`, `--secret NAME`) on the embedded pool: the value reaches
//! the program's environment, is in no request and nowhere in the bucket in the clear, is
//! masked in the log, and is nobody else's: a second wallet naming the same secret gets its
//! own or is refused.

use std::io::Write;
use std::process::Stdio;

use crate::common::*;

const VALUE: &str = "hf_Zq81SecretTokenValue";

/// `aic secret set NAME` with the value on standard input.
fn set(h: &Home, key: Option<&str>, name: &str, value: &str) -> std::process::Output {
    let mut c = h.cmd(&["secret", "set", name]);
    if let Some(k) = key {
        c.env("AIC_PRIVATE_KEY", k);
    }
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{value}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

const PROGRAM: &str = "import os\n\
v = os.environ.get('HF_TOKEN', '')\n\
print('the token is', v, flush=True)\n\
print('token length', len(v))\n\
print('token starts', v[:3])\n";

#[test]
fn a_secret_reaches_the_program_masked_in_the_log_and_nowhere_in_the_clear() {
    let h = Home::new();
    let out = set(&h, None, "HF_TOKEN", VALUE);
    assert!(out.status.success(), "{:?}", text(&out));
    let (ls, _) = text(&h.aic(&["secret", "ls"]));
    assert!(ls.contains("HF_TOKEN"), "{ls}");
    assert!(!ls.contains(VALUE), "aic secret ls shows the value: {ls}");

    let prog = h.write("prog/train.py", PROGRAM);
    let out = h.aic(&["run", prog.to_str().unwrap(), "--secret", "HF_TOKEN"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("token length {}", VALUE.len())), "the program did not get it: {stdout}");
    assert!(stdout.contains("token starts hf_"), "{stdout}");
    assert!(stdout.contains("the token is ***"), "not masked: {stdout}");
    let job = h.last_job();
    let logs = text(&h.aic(&["logs", &job])).0;
    assert!(logs.contains("the token is ***") && !logs.contains(VALUE), "{logs}");
    // Only its name is in the request; the value is nowhere in the bucket in the clear.
    let root = h.path().join("aic/store");
    let request: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            root.join("users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs").join(&job).join("request.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(request["secrets"], serde_json::json!(["HF_TOKEN"]));
    for f in walk(&root) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "{} holds the secret in the clear",
            f.display()
        );
    }
    assert!(h.aic(&["secret", "rm", "HF_TOKEN"]).status.success());
    assert!(!text(&h.aic(&["secret", "ls"])).0.contains("HF_TOKEN"));
}

/// A second wallet's job naming the same secret: refused before paying while it has none of
/// its own, then given its own value, never the first wallet's.
#[test]
fn another_wallet_never_gets_a_secret_of_mine() {
    let h = Home::new();
    assert!(set(&h, None, "HF_TOKEN", VALUE).status.success());
    let stranger_key = aic_chain::devchain::DEV_KEYS[5];
    let prog = h.write("prog/train.py", PROGRAM);
    let stranger = |args: &[&str]| {
        let mut c = h.cmd(args);
        c.env("AIC_PRIVATE_KEY", stranger_key);
        shown(args, c)
    };
    let out = stranger(&["secret", "ls"]);
    assert!(!text(&out).0.contains("HF_TOKEN"), "{:?}", text(&out));
    let out = stranger(&["run", prog.to_str().unwrap(), "--secret", "HF_TOKEN"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("secret HF_TOKEN is not set") && stderr.contains("nothing was paid"), "{stderr}");
    assert!(set(&h, Some(stranger_key), "HF_TOKEN", "theirs-not-mine").status.success());
    let out = stranger(&["run", prog.to_str().unwrap(), "--secret", "HF_TOKEN"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("token length 15"), "the stranger's job got another value: {stdout}");
    assert!(!stdout.contains(VALUE), "{stdout}");
}

/// Names the pool sets, or that are not names, are refused with the reason.
#[test]
fn a_secret_needs_a_name_of_its_own() {
    let h = Home::new();
    for (name, why) in [("AIC_TOKEN", "set by the pool"), ("hf-token", "not a secret's name")] {
        let out = set(&h, None, name, "x1234");
        assert!(!out.status.success());
        assert!(text(&out).1.contains(why), "{name}: {:?}", text(&out));
    }
}

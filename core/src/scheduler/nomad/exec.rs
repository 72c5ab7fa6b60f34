//! `aic exec` on Nomad: Nomad's own allocation exec API, a WebSocket at
//! `/v1/client/allocation/:id/exec?task=worker&tty=…&command=<JSON array>` (api/allocations.go
//! `execFrames`; command/agent/alloc_endpoint.go `allocExec`). A Nomad server forwards it to
//! the allocation's client over the connection the client keeps to it, so nothing dials a
//! miner behind NAT. Frames, JSON text both ways (`[]byte` fields as base64):
//!
//! - to Nomad: `{"stdin":{"data":…}}`, `{"stdin":{"close":true}}`,
//!   `{"tty_size":{"height":R,"width":C}}`, and `{}` as a heartbeat every 10 s;
//! - from Nomad: `{"stdout":{"data":…}}`, `{"stderr":{"data":…}}` (a `close` in either says
//!   nothing), `{"exited":true,"result":{"exit_code":N}}`, with `exit_code` left out when it is
//!   0 (`plugins/drivers/proto/driver.pb.go` is protoc-gen-go's, every scalar field
//!   `json:"…,omitempty"`, and the stream is encoded with those tags; Nomad's own client reads
//!   the zero value, `api/allocations_exec.go`); a refusal (no such allocation, permission
//!   denied) is a close frame whose text says why.
//!
//! The command runs as `aic-worker in-job -- CMD…` in the task: the worker's wrapper gives it
//! the program's environment and folder, without the worker's store access.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::NomadScheduler;
use crate::layout::JobKey;
use crate::scheduler::{ExecInput, ExecIo, ExecOutput, ExecStart, ScheduleError};

/// How often an idle session tells Nomad it is still there (as Nomad's own client does).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// One input as Nomad's exec API takes it.
pub fn input_frame(i: &ExecInput) -> Value {
    match i {
        ExecInput::Stdin(d) => json!({ "stdin": { "data": b64(d) } }),
        ExecInput::Close => json!({ "stdin": { "close": true } }),
        ExecInput::Resize { rows, cols } => json!({ "tty_size": { "height": rows, "width": cols } }),
    }
}

/// One frame from Nomad, as output; `None` for what says nothing (a stream's close, a
/// heartbeat).
pub fn output_of(v: &Value) -> Option<ExecOutput> {
    let data = |k: &str| v[k]["data"].as_str().and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
    if v["exited"] == true {
        // Left out when 0 (see the header); a frame with no result at all says nothing of how
        // the command ended.
        let code = match &v["result"] {
            Value::Object(r) => r.get("exit_code").and_then(Value::as_i64).unwrap_or(0),
            _ => -1,
        };
        return Some(ExecOutput::Exited(code as i32));
    }
    if let Some(d) = data("stdout").filter(|d| !d.is_empty()) {
        return Some(ExecOutput::Stdout(d));
    }
    data("stderr").filter(|d| !d.is_empty()).map(ExecOutput::Stderr)
}

impl NomadScheduler {
    /// The id of allocation `index` of the job that runs now.
    async fn running_alloc(&self, job: &JobKey, index: u32) -> Result<String, ScheduleError> {
        let id = super::nomad_id(job);
        let allocs = self.call(reqwest::Method::GET, &format!("job/{id}/allocations"), &[], None).await?;
        let suffix = format!("[{index}]");
        allocs
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a["ClientStatus"] == "running" && a["DesiredStatus"] == "run")
            .filter(|a| a["Name"].as_str().is_some_and(|n| n.ends_with(&suffix)))
            .max_by_key(|a| a["CreateIndex"].as_u64().unwrap_or(0))
            .and_then(|a| a["ID"].as_str().map(String::from))
            .ok_or_else(|| {
                ScheduleError::Refused(format!("allocation {index} of job {} is not running on Nomad", job.job))
            })
    }

    /// Runs `start` in allocation `index` of the job through Nomad's exec API.
    pub async fn exec_in(&self, job: &JobKey, index: u32, start: ExecStart) -> Result<ExecIo, ScheduleError> {
        let alloc = self.running_alloc(job, index).await?;
        // The worker where this allocation's task has it: in a user's image (its task names
        // the image to the worker), bound in at `WORKER_AT`; else the worker image's.
        let full = self.call(reqwest::Method::GET, &format!("allocation/{alloc}"), &[], None).await?;
        let in_image =
            full.as_ref().is_some_and(|a| a["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["AIC_IMAGE"].is_string());
        let worker = if in_image { format!("{}/aic-worker", super::spec::WORKER_AT) } else { self.cfg.worker.clone() };
        let mut command = vec![worker, "in-job".into(), "--".into()];
        command.extend(start.argv);
        let command = serde_json::to_string(&command).expect("strings serialize");
        let q = [("task", "worker".to_string()), ("tty", start.tty.is_some().to_string()), ("command", command)];
        let url = self.url(&format!("client/allocation/{alloc}/exec"), &q);
        let url = url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let backend = |e: String| ScheduleError::Backend(format!("Nomad exec: {e}"));
        let mut req = url.as_str().into_client_request().map_err(|e| backend(e.to_string()))?;
        if let Some(t) = &self.cfg.token {
            req.headers_mut().insert("X-Nomad-Token", t.parse().map_err(|_| backend("a bad token".into()))?);
        }
        let ws = super::tls::websocket(&self.cfg, req).await.map_err(backend)?;
        let (mut tx, mut rx) = ws.split();
        let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(64);
        let (out_tx, out_rx) = mpsc::channel::<ExecOutput>(64);
        if let Some((rows, cols)) = start.tty {
            let _ = in_tx.send(ExecInput::Resize { rows, cols }).await;
        }
        // To Nomad: the input as it comes, a heartbeat while there is none.
        let sender = tokio::spawn(async move {
            loop {
                let frame = match tokio::time::timeout(HEARTBEAT, in_rx.recv()).await {
                    Ok(Some(i)) => input_frame(&i),
                    Ok(None) => return,
                    Err(_) => json!({}),
                };
                if tx.send(Message::text(frame.to_string())).await.is_err() {
                    return;
                }
            }
        });
        // From Nomad: output until the exit code, or why the session ended without one.
        tokio::spawn(async move {
            let end = loop {
                match rx.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                        let sent = match output_of(&v) {
                            Some(o @ ExecOutput::Exited(_)) => break o,
                            Some(o) => out_tx.send(o).await.is_ok(),
                            None => true,
                        };
                        if !sent {
                            break ExecOutput::Failed("the caller went away".into());
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let why = f.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                        break ExecOutput::Failed(why.unwrap_or_else(|| "Nomad closed the session".into()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break ExecOutput::Failed(e.to_string()),
                    None => break ExecOutput::Failed("disconnected without the exit code".into()),
                }
            };
            sender.abort();
            let _ = out_tx.send(end).await;
        });
        Ok(ExecIo { input: in_tx, output: out_rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_nomads_exec_streaming_messages() {
        assert_eq!(input_frame(&ExecInput::Stdin(b"hi".to_vec())), json!({"stdin": {"data": "aGk="}}));
        assert_eq!(input_frame(&ExecInput::Close), json!({"stdin": {"close": true}}));
        assert_eq!(
            input_frame(&ExecInput::Resize { rows: 40, cols: 120 }),
            json!({"tty_size": {"height": 40, "width": 120}})
        );
        assert_eq!(output_of(&json!({"stdout": {"data": "aGk="}})), Some(ExecOutput::Stdout(b"hi".to_vec())));
        assert_eq!(output_of(&json!({"stderr": {"data": "aGk="}})), Some(ExecOutput::Stderr(b"hi".to_vec())));
        assert_eq!(output_of(&json!({"stdout": {"close": true}})), None);
        assert_eq!(output_of(&json!({})), None);
        assert_eq!(output_of(&json!({"exited": true, "result": {"exit_code": 3}})), Some(ExecOutput::Exited(3)));
        // Nomad leaves a 0 exit code out (omitempty).
        assert_eq!(output_of(&json!({"exited": true, "result": {}})), Some(ExecOutput::Exited(0)));
    }
}

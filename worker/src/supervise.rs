//! Supervising the program: its output, line by line, to the log shipper (rank tags read),
//! and signals to its process group.

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::launcher;

pub(crate) fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Forwards a stream's lines. With `tagged` (mpirun's `--tag-output`), lines become
/// `[rank R] text`, and rank 0's `AIC_PROGRESS` lines pass untagged (other ranks' are dropped).
pub(crate) async fn pump(
    src: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    tx: mpsc::Sender<String>,
    tagged: bool,
) {
    let Some(src) = src else { return };
    // Lines, not strings: a program may print bytes that are not UTF-8.
    let mut reader = BufReader::new(src);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // Open MPI's tagged output can carry NUL bytes; they are not text.
                let raw = String::from_utf8_lossy(&buf).replace('\0', "");
                let raw = raw.trim_end_matches(['\n', '\r']);
                let line = match launcher::mpi::untag(raw) {
                    (Some(r), text) if tagged && text.starts_with("AIC_PROGRESS ") => {
                        if r != 0 {
                            continue;
                        }
                        text.to_string()
                    }
                    (Some(r), text) if tagged => format!("[rank {r}] {text}"),
                    _ => raw.to_string(),
                };
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        }
    }
}
